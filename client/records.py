"""The record format between server and sites (see docs/records.md), shared by both ends.

Only arrays and allow-listed numeric metrics leave a site; both the site (before sending)
and the server (on receipt) apply the same allow-list.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, fields
from enum import IntEnum
from typing import Any

TASK_PATTERN = r"[A-Za-z_][A-Za-z0-9_]*"
_TASK = TASK_PATTERN
# Metric keys (regexes, matched in full) a train reply may carry.
TRAIN_METRIC_KEYS: tuple[str, ...] = (
    r"status",
    r"num-examples",
    r"count\.trunk",
    rf"count\.heads\.{_TASK}",
    r"train-loss",
    rf"loss\.{_TASK}",
    r"steps",
    r"epsilon",
    r"delta",
    r"noise-multiplier",
    r"sample-rate",
    r"seconds",
)
# Metric keys an evaluate reply may carry.
EVALUATE_METRIC_KEYS: tuple[str, ...] = (
    r"status",
    r"num-examples",
    r"loss",
    r"seconds",
    rf"{_TASK}\.(n|loss|auc|accuracy|balanced-accuracy|cindex|mae|digit-accuracy)",
    rf"{_TASK}\.auc-y[1-6]",
)
TRAIN_METRIC_PATTERNS = tuple(re.compile(p) for p in TRAIN_METRIC_KEYS)
EVALUATE_METRIC_PATTERNS = tuple(re.compile(p) for p in EVALUATE_METRIC_KEYS)


class Status(IntEnum):
    """Reply status codes (never free text)."""

    OK = 0
    BUDGET_EXHAUSTED = 1
    NO_DATA = 2
    TRAINING_ERROR = 3
    CONFIG_MISMATCH = 4


def allowed(key: str, patterns: tuple[re.Pattern[str], ...]) -> bool:
    """Whether a metric key is on an allow-list."""
    return any(p.fullmatch(key) for p in patterns)


def filter_metrics(
    metrics: Mapping[str, Any], patterns: tuple[re.Pattern[str], ...]
) -> dict[str, int | float]:
    """Keep only allow-listed keys with finite int/float values."""
    out: dict[str, int | float] = {}
    for key, value in metrics.items():
        if not allowed(key, patterns) or isinstance(value, bool):
            continue
        if isinstance(value, int | float) and math.isfinite(value):
            out[key] = value
    return out


@dataclass(frozen=True)
class Instruction:
    """What the server asks of a site in one round (the ``config`` record)."""

    server_round: int
    num_rounds: int
    preset: str
    trainable_scope: str
    lr: float
    local_steps: int
    batch_size: int
    seed: int
    proximal_mu: float
    modality_dropout: float
    full_model: bool
    split: str = "val"
    transfer: str = "float32"  # arrays travel as float32, float16 or bfloat16 bits
    init_weights: str = "none"  # m3fm_model.pretrained: the run's initial encoders

    def to_record(self) -> dict[str, Any]:
        """Kebab-case keys for a ConfigRecord."""
        return {k.replace("_", "-"): v for k, v in asdict(self).items()}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Instruction:
        """Parse a ConfigRecord; missing or mistyped keys raise ValueError."""
        values = {}
        for f in fields(cls):
            key = f.name.replace("_", "-")
            if key not in record:
                if f.default is not MISSING:
                    continue
                raise ValueError(f"instruction lacks {key!r}")
            values[f.name] = record[key]
        return cls(**values)
