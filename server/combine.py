"""Combining kernels: weighted mean, coordinate-wise median and trimmed mean.

The weighted mean reads each site's array once, straight from the received buffer
(float32, float16 or bfloat16 views), and accumulates into one float32 tensor per array:
no per-site temporaries. It can write into an existing tensor (``out``): new memory costs
a page fault per 4 kB page on first touch, as much as the arithmetic on this machine.

Same-dtype float32/float64 inputs go through BLAS ``axpy`` (scipy's bindings) instead of
``Tensor.add_(x, alpha=a)``: torch's scalar-alpha add measured 1.7-1.8x the streaming-read
bound for K = 4 replies on one core, BLAS axpy 1.2-1.35x (``make bench``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.linalg import blas

_CHUNK = 1 << 20  # elements per slice for the robust (sorting) methods
_SLICE = 1 << 18  # elements per accumulator slice (1 MiB of float32: stays in L2)
_AXPY = {torch.float32: blas.saxpy, torch.float64: blas.daxpy}


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulator dtype for parameters of ``dtype``."""
    # float32 accumulation is within 1e-6 relative of a float64 reference for a
    # handful of sites (tested); float64 models keep float64.
    return torch.float64 if dtype == torch.float64 else torch.float32


def _accumulator(
    shape: torch.Size, dtype: torch.dtype, out: torch.Tensor | None
) -> torch.Tensor:
    if out is None:
        return torch.empty(shape, dtype=dtype)
    if out.shape != shape or out.dtype != dtype or not out.is_contiguous():
        raise ValueError(
            "out must be a contiguous tensor of the result's shape and dtype"
        )
    return out


def weighted_mean(
    tensors: Sequence[torch.Tensor],
    alphas: Sequence[float],
    *,
    base: torch.Tensor | None = None,
    base_coef: float = 0.0,
    dtype: torch.dtype = torch.float32,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``base_coef * base + sum(alpha_i * x_i)`` in one accumulator, no temporaries.

    Works slice by slice (``_SLICE`` elements) so the accumulator's slice stays in
    cache while the K inputs stream past it: K reads and one write per element.

    Args:
        tensors: the sites' arrays (any floating dtype; read only).
        alphas: their coefficients.
        base: optional extra term (the global value, for clipped updates); may be
            ``out`` itself.
        base_coef: its coefficient.
        dtype: accumulator dtype.
        out: write the result here (contiguous, ``dtype``) instead of new memory; it
            must not share memory with ``tensors``.
    """
    acc = _accumulator(tensors[0].shape, dtype, out)
    in_place_base = base is not None and base.data_ptr() == acc.data_ptr()
    if blas_ok(acc, tensors, base):
        _weighted_mean_blas(acc, tensors, alphas, base, base_coef, in_place_base)
        return acc
    flat_out = acc.view(-1)
    flat_in = [t.reshape(-1) for t in tensors]
    flat_base = None if base is None else base.reshape(-1)
    for s in range(0, flat_out.numel(), _SLICE):
        e = s + _SLICE
        b = None if flat_base is None else flat_base[s:e]
        xs = [x[s:e] for x in flat_in]
        _accumulate(flat_out[s:e], xs, alphas, b, base_coef, in_place_base)
    return acc


def _accumulate(
    o: torch.Tensor,
    xs: list[torch.Tensor],
    alphas: Sequence[float],
    base: torch.Tensor | None,
    base_coef: float,
    in_place_base: bool,
) -> None:
    """Mixed-dtype slice: ``o = base_coef * base + sum(alpha_i * x_i)`` with torch ops."""
    start = 0
    if base is not None:
        if not in_place_base:
            o.copy_(base)
        o.mul_(base_coef)
    elif xs[0].dtype == o.dtype:
        torch.mul(xs[0], alphas[0], out=o)
        start = 1
    else:
        o.copy_(xs[0]).mul_(alphas[0])
        start = 1
    for x, a in zip(xs[start:], alphas[start:], strict=True):
        o.add_(x, alpha=a)


def blas_ok(
    o: torch.Tensor, xs: Sequence[torch.Tensor], base: torch.Tensor | None
) -> bool:
    """Whether every operand is a contiguous CPU tensor of the accumulator's dtype."""
    dtype = o.dtype
    if dtype not in _AXPY or o.device.type != "cpu" or not o.is_contiguous():
        return False
    operands = xs if base is None else [*xs, base]
    return all(
        t.dtype == dtype and t.device.type == "cpu" and t.is_contiguous()
        for t in operands
    )


def flat_numpy(t: torch.Tensor) -> np.ndarray:
    """1-D numpy view of a contiguous CPU tensor (no copy)."""
    arr = t.detach().numpy() if t.requires_grad else t.numpy()
    return arr.reshape(-1)


def _weighted_mean_blas(
    acc: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    alphas: Sequence[float],
    base: torch.Tensor | None,
    base_coef: float,
    in_place_base: bool,
) -> None:
    """``weighted_mean`` with one BLAS axpy per input (``o += a * x`` in one pass).

    The operands become numpy views once per array and are sliced as numpy views:
    the per-array Python cost is what separates this from the bandwidth bound for
    arrays of a few hundred thousand values (``make bench``).
    """
    axpy = _AXPY[acc.dtype]
    out = flat_numpy(acc)
    xs = [flat_numpy(t) for t in tensors]
    flat_base = None if base is None else flat_numpy(base)
    for s in range(0, out.shape[0], _SLICE):
        e = s + _SLICE
        o = out[s:e]
        start = 0
        if flat_base is not None:
            if not in_place_base:
                np.copyto(o, flat_base[s:e])
            o *= base_coef
        else:
            np.multiply(xs[0][s:e], alphas[0], out=o)
            start = 1
        for x, a in zip(xs[start:], alphas[start:], strict=True):
            axpy(x[s:e], o, a=a)  # in place: returns ``o`` itself


def robust_combine(
    tensors: Sequence[torch.Tensor],
    method: str,
    trim_fraction: float = 0.1,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Coordinate-wise median or trimmed mean (unweighted), in bounded-memory slices.

    The median of an even number of values is the mean of the two middle ones (as
    ``numpy.median``); the trimmed mean drops ``int(trim_fraction * k)`` values at each
    end (as ``scipy.stats.trim_mean``). ``out`` as in ``weighted_mean``.
    """
    k = len(tensors)
    flat = [t.reshape(-1) for t in tensors]
    acc = _accumulator(tensors[0].shape, acc_dtype(tensors[0].dtype), out)
    flat_out = acc.view(-1)
    cut = int(trim_fraction * k)
    for s in range(0, flat_out.numel(), _CHUNK):
        stack = torch.stack([f[s : s + _CHUNK].to(acc.dtype) for f in flat])
        srt = stack.sort(dim=0).values
        if method == "median":
            mid = srt[(k - 1) // 2 : k // 2 + 1]
        else:
            mid = srt[cut : k - cut]
        torch.mean(mid, dim=0, out=flat_out[s : s + _CHUNK])
    return acc
