"""Checks on every train reply before it may reach aggregation (docs/records.md).

A reply is either a ``ValidatedReply`` (arrays grouped by parameter group, per-group
example counts, the L2 norm of its update) or a ``Rejection`` with a reason code and a
short message. Messages never contain text the site sent (array names, metric keys or
values from the reply): only codes, counts and the server's own names.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.linalg import blas

from client.records import (
    EVALUATE_METRIC_KEYS,
    TASK_PATTERN,
    TRAIN_METRIC_KEYS,
    Status,
)
from client.scope import param_group
from server.combine import blas_ok, flat_numpy
from server.transfer import decode_array, dtype_tag, wire_dtype

_TASK = TASK_PATTERN
# The allow-lists of docs/records.md, shared with the sites (client/records.py).
TRAIN_METRIC_PATTERNS: tuple[str, ...] = TRAIN_METRIC_KEYS
EVALUATE_METRIC_PATTERNS: tuple[str, ...] = EVALUATE_METRIC_KEYS
STATUS_OK = int(Status.OK)
STATUS_CODES = tuple(int(s) for s in Status)
_CHUNK = 1 << 20  # elements per slice of the update-norm computation
_NORM_SLICE = 1 << 18  # elements per slice of its BLAS path (1 MiB of float32: in L2)
_DOT = {torch.float32: blas.sdot, torch.float64: blas.ddot}

# Rejection codes.
REFUSED = "refused"
METRIC_KEY = "metric-key"
METRIC_VALUE = "metric-value"
MISSING_STATUS = "missing-status"
NO_ARRAYS = "no-arrays"
UNKNOWN_ARRAY = "unknown-array"
INCOMPLETE_GROUP = "incomplete-group"
MISSING_COUNT = "missing-count"
HEAD_WITHOUT_COUNT = "head-without-count"
BAD_COUNT = "bad-count"
SHAPE = "shape"
DTYPE = "dtype"
NON_FINITE = "non-finite"
UPDATE_NORM = "update-norm"
RECORD_LAYOUT = "record-layout"

# The records a reply may hold, by kind (docs/records.md), and the site record's keys.
TRAIN_REPLY_RECORDS: Mapping[str, str] = {
    "arrays": "array",
    "metrics": "metric",
    "site": "config",
}
EVALUATE_REPLY_RECORDS: Mapping[str, str] = {"metrics": "metric", "site": "config"}
SITE_RECORD_KEYS = frozenset({"name"})


@dataclass(frozen=True)
class Rejection:
    """A reply that must not be aggregated.

    Attributes:
        code: one of the rejection codes of this module.
        message: short reason, free of any text the site sent.
        status: the site's status code for a refusal (``code == "refused"``).
    """

    code: str
    message: str
    status: int | None = None

    @property
    def refusal(self) -> bool:
        """A site refusing (budget spent, no data, ...): counted, not an error."""
        return self.code == REFUSED


@dataclass(frozen=True)
class ValidatedReply:
    """A checked train reply.

    Attributes:
        site: the site's configured name (for reports of who updated what).
        groups: parameter group -> name -> tensor, decoded without copies (read-only).
        counts: parameter group -> number of examples it was trained on (> 0).
        metrics: the reply's numeric metrics.
        update_norm: L2 norm of (reply - global) over all returned arrays.
    """

    site: str
    groups: Mapping[str, Mapping[str, torch.Tensor]]
    counts: Mapping[str, int]
    metrics: Mapping[str, int | float | list[int] | list[float]] = field(
        default_factory=dict
    )
    update_norm: float = 0.0

    def arrays(self) -> dict[str, torch.Tensor]:
        """All returned arrays, name -> tensor."""
        return {n: t for g in self.groups.values() for n, t in g.items()}


def train_metric_patterns(tasks: Iterable[str] | None = None) -> tuple[str, ...]:
    """Train-reply metric key patterns, optionally restricted to known task names."""
    if tasks is None:
        return TRAIN_METRIC_PATTERNS
    alt = "|".join(re.escape(t) for t in sorted(tasks)) or "(?!)"
    return tuple(p.replace(_TASK, f"(?:{alt})") for p in TRAIN_METRIC_PATTERNS)


def expected_from_state(
    state: Mapping[str, torch.Tensor], names: Iterable[str] | None = None
) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """``expected`` for ``validate_reply``: (shape, dtype) of the travelling names."""
    keys = state.keys() if names is None else names
    return {n: (tuple(state[n].shape), state[n].dtype) for n in keys}


def update_norm(
    arrays: Mapping[str, torch.Tensor], global_values: Mapping[str, torch.Tensor]
) -> float:
    """L2 norm of ``arrays - global_values`` over all names of ``arrays``.

    Works in slices of the flattened arrays so that no full-size temporary is made.
    Same-dtype float32/float64 CPU pairs take a BLAS path: the difference of each
    slice goes into one cache-sized scratch buffer and BLAS ``dot`` squares it (no
    allocation per slice: 1.4x the time of reading both arrays once, against 2.2x
    for ``torch.sub`` + ``torch.dot``, ``make bench`` ``validate`` row); other
    dtypes (half-precision replies) go through torch.
    """
    total = 0.0
    scratch: dict[torch.dtype, np.ndarray] = {}
    for name, x in arrays.items():
        g = global_values[name]
        if x.numel() == g.numel() and blas_ok(g, [x], None):
            total += _squared_distance_blas(x, g, scratch)
            continue
        xf, gf = x.reshape(-1), g.reshape(-1)
        for s in range(0, xf.numel(), _CHUNK):
            d = torch.sub(xf[s : s + _CHUNK], gf[s : s + _CHUNK]).float()
            total += float(torch.dot(d, d))
    return math.sqrt(total)


def _squared_distance_blas(
    x: torch.Tensor, g: torch.Tensor, scratch: dict[torch.dtype, np.ndarray]
) -> float:
    """``sum((x - g) ** 2)`` slice by slice through one scratch buffer per dtype."""
    dot = _DOT[x.dtype]
    xf, gf = flat_numpy(x), flat_numpy(g)
    if x.dtype not in scratch:
        scratch[x.dtype] = np.empty(_NORM_SLICE, xf.dtype)
    buf = scratch[x.dtype]
    total = 0.0
    for s in range(0, xf.shape[0], _NORM_SLICE):
        e = min(s + _NORM_SLICE, xf.shape[0])
        d = buf[: e - s]
        np.subtract(xf[s:e], gf[s:e], out=d)
        total += float(dot(d, d))
    return total


def check_reply_records(
    records: Mapping[str, str],
    site_keys: Iterable[str],
    allowed: Mapping[str, str] = TRAIN_REPLY_RECORDS,
) -> Rejection | None:
    """Reject a reply holding records or site keys that docs/records.md does not list.

    Args:
        records: the reply's record name -> kind (``"array"``, ``"metric"``,
            ``"config"``).
        site_keys: the keys of its ``site`` config record (empty when absent).
        allowed: record name -> kind this reply type may carry.

    Returns:
        A ``Rejection`` (code ``record-layout``) or ``None``.
    """
    extra = [k for k, kind in records.items() if allowed.get(k) != kind]
    if extra:
        return Rejection(RECORD_LAYOUT, f"{len(extra)} record(s) not allowed")
    extra_site = set(site_keys) - SITE_RECORD_KEYS
    if extra_site:
        return Rejection(RECORD_LAYOUT, f"{len(extra_site)} site key(s) not allowed")
    return None


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(
        v, bool
    )


def _check_metrics(
    metrics: Mapping[str, object], patterns: Sequence[re.Pattern[str]]
) -> Rejection | None:
    bad_keys = [k for k in metrics if not any(p.fullmatch(str(k)) for p in patterns)]
    if bad_keys:
        return Rejection(METRIC_KEY, f"{len(bad_keys)} metric key(s) not allowed")
    for value in metrics.values():
        items = value if isinstance(value, list) else [value]
        if not all(_is_number(v) and math.isfinite(v) for v in items):
            return Rejection(METRIC_VALUE, "a metric value is not a finite number")
    if "status" not in metrics:
        return Rejection(MISSING_STATUS, "the reply has no status")
    status = metrics["status"]
    if isinstance(status, list) or status not in STATUS_CODES:
        return Rejection(METRIC_VALUE, "status is not a known status code")
    if int(status) != STATUS_OK:
        return Rejection(
            REFUSED, f"site refused with status {int(status)}", int(status)
        )
    return None


def _check_names(
    names: Iterable[str], expected: Mapping[str, object]
) -> tuple[Rejection | None, dict[str, list[str]]]:
    names = list(names)
    unknown = [n for n in names if n not in expected]
    if unknown:
        return Rejection(
            UNKNOWN_ARRAY, f"{len(unknown)} array name(s) not expected"
        ), {}
    by_group: dict[str, list[str]] = {}
    for n in expected:
        by_group.setdefault(param_group(n), []).append(n)
    got = set(names)
    returned = {param_group(n) for n in names}
    for group in sorted(returned):
        missing = [n for n in by_group[group] if n not in got]
        if missing:
            msg = f"group {group} lacks {len(missing)} of its {len(by_group[group])} arrays"
            return Rejection(INCOMPLETE_GROUP, msg), {}
    return None, {g: by_group[g] for g in sorted(returned)}


def _check_counts(
    groups: Iterable[str], metrics: Mapping[str, object]
) -> tuple[Rejection | None, dict[str, int]]:
    counts: dict[str, int] = {}
    for group in groups:
        value = metrics.get(f"count.{group}")
        if value is None:
            code = MISSING_COUNT if group == "trunk" else HEAD_WITHOUT_COUNT
            return Rejection(code, f"no count.{group} for a returned group"), {}
        if isinstance(value, list) or value <= 0 or float(value) != int(value):
            return Rejection(BAD_COUNT, f"count.{group} is not a positive integer"), {}
        counts[group] = int(value)
    return None, counts


def _check_array(
    name: str,
    array: np.ndarray | torch.Tensor,
    shape: tuple[int, ...],
    tag: str,
) -> Rejection | torch.Tensor:
    if tuple(array.shape) != tuple(shape):
        return Rejection(SHAPE, f"{name}: shape differs from the expected {shape}")
    try:
        return decode_array(name, array, tag)
    except ValueError:
        want = wire_dtype(tag).name
        return Rejection(DTYPE, f"{name}: dtype differs from the expected {want}")


def _non_finite(tensors: Mapping[str, torch.Tensor]) -> str | None:
    for name, t in tensors.items():
        if not bool(torch.isfinite(t).all()):
            return name
    return None


def validate_reply(
    arrays: Mapping[str, np.ndarray | torch.Tensor] | None,
    metrics: Mapping[str, int | float | list[int] | list[float]],
    expected: Mapping[str, tuple[tuple[int, ...], torch.dtype | np.dtype | str]],
    global_values: Mapping[str, torch.Tensor],
    *,
    max_update_norm: float | None,
    allowed_metric_patterns: Iterable[str] = TRAIN_METRIC_PATTERNS,
    half: str | None = None,
    site: str = "",
) -> ValidatedReply | Rejection:
    """Check one train reply.

    Args:
        arrays: the reply's arrays (numpy views or tensors), ``None`` when absent.
        metrics: the reply's metrics.
        expected: travelling name -> (shape, model dtype) for this round.
        global_values: the global model's values the site started from (by name).
        max_update_norm: largest allowed L2 norm of (reply - global); ``None`` = no bound.
        allowed_metric_patterns: regexes a metric key must fully match.
        half: the round's transfer mode (``None``, ``"float16"``, ``"bfloat16"``):
            floating arrays must arrive in its wire dtype.
        site: the site's name, kept for reports (never put into messages).

    Returns:
        A ``ValidatedReply`` or a ``Rejection`` (``refusal`` for a status != 0).
    """
    patterns = [re.compile(p) for p in allowed_metric_patterns]
    rejection = _check_metrics(metrics, patterns)
    if rejection is not None:
        return rejection
    if not arrays:
        return Rejection(NO_ARRAYS, "status 0 but no arrays")
    rejection, by_group = _check_names(arrays.keys(), expected)
    if rejection is None:
        rejection, counts = _check_counts(by_group, metrics)
    if rejection is not None:
        return rejection
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for group, names in by_group.items():
        groups[group] = {}
        for name in names:
            shape, dtype = expected[name]
            checked = _check_array(name, arrays[name], shape, dtype_tag(dtype, half))
            if isinstance(checked, Rejection):
                return checked
            groups[group][name] = checked
    flat = {n: t for g in groups.values() for n, t in g.items()}
    norm = update_norm(flat, global_values)
    if not math.isfinite(norm):
        bad = _non_finite(flat)
        if bad is not None:
            return Rejection(NON_FINITE, f"{bad}: NaN or infinite values")
    if max_update_norm is not None and not norm <= max_update_norm:
        return Rejection(
            UPDATE_NORM, f"update norm exceeds the bound {max_update_norm}"
        )
    return ValidatedReply(site, groups, counts, dict(metrics), norm)
