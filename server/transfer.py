"""Array encodings on the wire: full precision, float16, or bfloat16 bits in int16.

Flower's ``ArrayRecord`` rejects ``torch.bfloat16`` (numpy has no bf16), so bfloat16
travels as its raw 16 bits viewed as ``int16``; decoding views them back without a copy,
so the round trip is bit-exact. Both sides use these helpers: the server encodes the
global model and decodes replies, a site does the reverse.

``npy_view`` reads an ``Array``'s ``.npy`` bytes as a read-only numpy view instead of
``Array.numpy()`` (``np.load``), which copies every array once more before aggregation.
"""

from __future__ import annotations

import functools
import io
import math
import re
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import numpy as np
import torch

HALF_TAGS: tuple[str, ...] = ("float16", "bfloat16")

_WIRE = {
    "float64": np.dtype(np.float64),
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(np.int16),
}
_TORCH = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


class NpyArray(Protocol):
    """What ``npy_view`` needs of a Flower ``Array`` (duck-typed: no flwr import)."""

    stype: str
    data: bytes


def dtype_name(dtype: torch.dtype | np.dtype | type | str) -> str:
    """Canonical name of a torch or numpy dtype, e.g. ``"float32"``, ``"bfloat16"``."""
    if isinstance(dtype, torch.dtype):
        return str(dtype).removeprefix("torch.")
    if isinstance(dtype, str) and dtype == "bfloat16":
        return dtype
    return np.dtype(dtype).name


def dtype_tag(dtype: torch.dtype | np.dtype | str, half: str | None) -> str:
    """Tag an array of logical ``dtype`` travels with under the transfer mode ``half``.

    Args:
        dtype: the model's dtype for the array.
        half: ``None`` (send as is), ``"float16"`` or ``"bfloat16"``.

    Returns:
        ``half`` for floating dtypes when set, else the dtype's own name.
    """
    check_half(half)
    name = dtype_name(dtype)
    if half is not None and name in _TORCH:
        return half
    return name


def wire_dtype(tag: str) -> np.dtype:
    """The numpy dtype an array with this tag has on the wire (bfloat16 -> int16)."""
    if tag in _WIRE:
        return _WIRE[tag]
    return np.dtype(tag)


def check_half(half: str | None) -> str | None:
    """Return ``half`` or raise a ValueError naming the valid modes."""
    if half is not None and half not in HALF_TAGS:
        raise ValueError(
            f"half-precision mode {half!r} is not None or one of {HALF_TAGS}"
        )
    return half


def encode_tensor(tensor: torch.Tensor, half: str | None) -> np.ndarray:
    """One tensor as the numpy array that travels (see ``encode_state``)."""
    t = tensor.detach().to("cpu")
    tag = dtype_tag(t.dtype, half)
    if tag == "bfloat16":
        return t.to(torch.bfloat16).contiguous().view(torch.int16).numpy()
    if tag in _TORCH:
        return t.to(_TORCH[tag]).numpy()
    return t.numpy()


def encode_state(
    state: Mapping[str, torch.Tensor], half: str | None
) -> dict[str, np.ndarray]:
    """Encode a state dict for an ``ArrayRecord``.

    Args:
        state: name -> tensor (any device).
        half: ``None`` keeps each dtype; ``"float16"`` or ``"bfloat16"`` converts the
            floating tensors (bfloat16 as its bits in ``int16``); other dtypes are kept.

    Returns:
        name -> numpy array, sharing memory with ``state`` where no conversion was needed.
    """
    check_half(half)
    return {name: encode_tensor(t, half) for name, t in state.items()}


def half_mode(precision: str) -> str | None:
    """The ``half`` argument for a run-config ``transfer-precision``."""
    return None if precision == "float32" else check_half(precision)


@functools.lru_cache(maxsize=256)
def _npy_header(descr: str, shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return buf.getvalue()


def npy_bytes(tensor: torch.Tensor, half: str | None) -> tuple[np.dtype, bytes]:
    """The ``.npy`` bytes of one tensor as it travels (``np.load`` reads them back).

    Written straight into one buffer: the dtype conversion (float32 -> bfloat16 bits,
    float16) happens in the copy into it. ``Array(ndarray)`` goes through ``np.save``
    into a growing ``BytesIO`` instead, about 10x slower for a 4 M-element tensor
    (bench/bench_transfer.py).

    Returns:
        (the numpy dtype on the wire, the bytes).
    """
    t = tensor.detach().to("cpu")
    tag = dtype_tag(t.dtype, half)
    wire = wire_dtype(tag)
    header = _npy_header(np.lib.format.dtype_to_descr(wire), tuple(t.shape))
    out = bytearray(len(header) + t.numel() * wire.itemsize)
    out[: len(header)] = header
    if t.numel():
        dst = torch.frombuffer(
            out, dtype=_TORCH.get(tag, t.dtype), offset=len(header), count=t.numel()
        )
        dst.copy_(t.reshape(-1))
    return wire, bytes(out)


def wire_record(state: Mapping[str, torch.Tensor], half: str | None) -> Any:
    """An ``ArrayRecord`` of ``state`` as it travels under ``half`` (see encode_state)."""
    from flwr.app import Array, ArrayRecord

    check_half(half)
    arrays = {}
    for name, tensor in state.items():
        wire, data = npy_bytes(tensor, half)
        shape = tuple(int(d) for d in tensor.shape)
        arrays[name] = Array(str(wire), shape, "numpy.ndarray", data)
    return ArrayRecord(array_dict=arrays)


def received_tensors(record: Any, half: str | None) -> dict[str, torch.Tensor]:
    """A received ``ArrayRecord`` as tensors; bfloat16 bits come back as bfloat16."""
    arrays = record.to_torch_state_dict()
    if half != "bfloat16":
        return arrays
    return {n: t.view(torch.bfloat16) if t.dtype == torch.int16 else t for n, t in arrays.items()}  # fmt: skip


_READ_ONLY_SEEN = False


def _as_tensor(array: np.ndarray | torch.Tensor) -> torch.Tensor:
    global _READ_ONLY_SEEN
    if isinstance(array, torch.Tensor):
        return array
    if array.flags.writeable or _READ_ONLY_SEEN:
        return torch.from_numpy(array)
    # Received arrays are read-only views of the message bytes; the server only reads
    # them, so sharing memory is safe and avoids a copy per array. torch warns about
    # this once per process; silence that one warning (catch_warnings costs ~10 us,
    # so only on the first read-only array).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*")
        tensor = torch.from_numpy(array)
    _READ_ONLY_SEEN = True
    return tensor


def decode_array(name: str, array: np.ndarray | torch.Tensor, tag: str) -> torch.Tensor:
    """View a received array as the tensor it encodes, without copying.

    Args:
        name: the parameter name, used only in error messages (callers pass names they
            have already checked against their own list).
        array: the received array.
        tag: its dtype tag (``dtype_tag``): ``"bfloat16"`` expects ``int16`` bits.

    Returns:
        A tensor sharing memory with ``array`` (read-only when ``array`` is).

    Raises:
        ValueError: the array's dtype is not the wire dtype of ``tag``.
    """
    want = wire_dtype(tag)
    if isinstance(array, np.ndarray):
        ok = array.dtype == want  # numpy's equality includes the byte order
    else:
        ok = dtype_name(array.dtype) == want.name
    if not ok:
        raise ValueError(
            f"{name}: wire dtype for {tag} is {want.name}, not {array.dtype}"
        )
    t = _as_tensor(array)
    if tag == "bfloat16":
        return t.view(torch.bfloat16)
    return t


def decode_state(
    arrays: Mapping[str, np.ndarray | torch.Tensor], tags: Mapping[str, str]
) -> dict[str, torch.Tensor]:
    """``decode_array`` for every entry of ``arrays`` (tags by name)."""
    return {name: decode_array(name, a, tags[name]) for name, a in arrays.items()}


# The header numpy writes for a plain array; parsed directly because
# ``np.lib.format``'s parser (``ast.literal_eval``) costs ~30 us per array, as much as
# reading 800 kB. Anything else goes through numpy's own parser.
_HEADER = re.compile(
    rb"\{'descr': '([<>|=]?[a-zA-Z]\d*)', 'fortran_order': (True|False), "
    rb"'shape': \(((?:\d+, ?)*\d*)\), \} *\n"
)
_MAGIC = b"\x93NUMPY"


@functools.lru_cache(maxsize=4096)
def _parse_header(header: bytes) -> tuple[tuple[int, ...], bool, np.dtype] | None:
    match = _HEADER.fullmatch(header)
    if match is None:
        return None
    shape = tuple(int(d) for d in match[3].split(b",") if d.strip())
    return shape, match[2] == b"True", np.dtype(match[1].decode())


def _fast_header(
    data: memoryview,
) -> tuple[tuple[int, ...], bool, np.dtype, int] | None:
    head = bytes(data[:12])
    if len(head) < 12 or not head.startswith(_MAGIC) or head[6] not in (1, 2):
        return None
    start = 10 if head[6] == 1 else 12
    hlen = int.from_bytes(head[8:start], "little")
    parsed = _parse_header(bytes(data[start : start + hlen]))
    return None if parsed is None else (*parsed, start + hlen)


def _numpy_header(data: bytes | bytearray | memoryview) -> tuple:
    fp = io.BytesIO(data)  # CPython shares a bytes object's buffer until written to
    try:
        major, _ = np.lib.format.read_magic(fp)
        read_header = {
            1: np.lib.format.read_array_header_1_0,
            2: np.lib.format.read_array_header_2_0,
        }[major]
        shape, fortran, dtype = read_header(fp)
    except (KeyError, ValueError) as exc:
        raise ValueError("not a .npy buffer") from exc
    return shape, fortran, dtype, fp.tell()


def npy_view(data: bytes | bytearray | memoryview) -> np.ndarray:
    """Read-only numpy view of ``.npy`` bytes (as written by ``np.save``), no copy.

    Raises:
        ValueError: not a ``.npy`` buffer, an object dtype, or a size mismatch.
    """
    view = memoryview(data).cast("B")
    header = _fast_header(view) or _numpy_header(data)
    shape, fortran, dtype, offset = header
    if dtype.hasobject:
        raise ValueError(".npy buffer holds Python objects")
    count = math.prod(shape)
    if view.nbytes - offset != count * dtype.itemsize:
        raise ValueError(".npy buffer size does not match its header")
    flat = np.frombuffer(view, dtype=dtype, count=count, offset=offset)
    if fortran:
        return flat.reshape(shape[::-1]).T
    return flat.reshape(shape)


def record_arrays(
    record: Mapping[str, NpyArray] | Iterable[tuple[str, NpyArray]],
) -> dict[str, np.ndarray]:
    """Zero-copy numpy views of every ``Array`` in an ``ArrayRecord`` (or its items).

    Raises:
        ValueError: an array is not numpy-serialised or its bytes are malformed.
    """
    items = record.items() if isinstance(record, Mapping) else record
    out: dict[str, np.ndarray] = {}
    for name, arr in items:
        if arr.stype != "numpy.ndarray":
            raise ValueError("array is not numpy-serialised")
        out[name] = npy_view(arr.data)
    return out
