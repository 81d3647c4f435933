"""Run configuration: the flat kebab-case keys of ``[tool.flwr.app.config]``, parsed once.

Override any key with ``flwr run . --run-config "key=value ..."``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from client.scope import SCOPES, check_scope, lora_scope_rank
from m3fm_model.config import PRESETS
from m3fm_model.pretrained import check_init

AGGREGATIONS = ("fedavg", "fedprox", "fedadam", "median", "trimmed-mean")


@dataclass(frozen=True)
class RunConfig:
    """Everything the consortium admin chooses for one federated run."""

    num_server_rounds: int = 3
    preset: str = "tiny"
    trainable_scope: str = "fusion-and-heads"
    lora_rank: int = 8
    lr: float = 1e-3
    local_steps: int = 20
    batch_size: int = 8
    aggregation: str = "fedavg"
    proximal_mu: float = 0.0
    min_sites: int = 2
    round_timeout: float = 600.0
    node_wait_timeout: float = 120.0
    max_update_norm: float = 1e4
    central_dp: bool = False
    central_dp_clip: float = 1.0
    central_dp_noise: float = 1.0
    central_dp_max_epsilon: float = 10.0
    secagg: bool = False
    secagg_threshold: float = 0.67
    secagg_clip_range: float = 1.0
    transfer_precision: str = "float32"
    modality_dropout: float = 0.2
    seed: int = 0
    init_weights: str = "none"
    output_dir: str = "runs"
    run_name: str = "demo"
    resume: bool = False
    sim_site_configs: str = ""
    evaluate_split: str = "val"

    def __post_init__(self) -> None:
        self._set_lora_rank()
        checks = [
            (self.preset in PRESETS, "preset", f"one of {PRESETS}"),
            (
                _valid_scope(self.trainable_scope),
                "trainable-scope",
                f"one of {[*sorted(SCOPES), 'lora']}",
            ),
            (self.lora_rank >= 1, "lora-rank", "at least 1"),
            (self.aggregation in AGGREGATIONS, "aggregation", f"one of {AGGREGATIONS}"),
            (self.num_server_rounds >= 1, "num-server-rounds", "at least 1"),
            (self.local_steps >= 1, "local-steps", "at least 1"),
            (self.batch_size >= 1, "batch-size", "at least 1"),
            (self.min_sites >= 1, "min-sites", "at least 1"),
            (self.lr > 0, "lr", "positive"),
            (0 <= self.modality_dropout < 0.5, "modality-dropout", "in [0, 0.5)"),
            (self.evaluate_split in ("val", "test"), "evaluate-split", "val or test"),
            (0 < self.secagg_threshold <= 1, "secagg-threshold", "in (0, 1]"),
            (self.secagg_clip_range > 0, "secagg-clip-range", "positive"),
            (
                self.transfer_precision in ("float32", "float16", "bfloat16"),
                "transfer-precision",
                "float32, float16 or bfloat16",
            ),
            (
                not (self.secagg and self.aggregation not in ("fedavg", "fedprox")),
                "aggregation",
                "fedavg or fedprox with secagg (the server sees only sums)",
            ),
        ]
        for ok, key, want in checks:
            if not ok:
                raise ValueError(
                    f"run config {key}={getattr(self, key.replace('-', '_'))!r}: must be {want}"
                )
        check_init(self.init_weights, self.preset)

    def _set_lora_rank(self) -> None:
        """``trainable-scope = "lora"`` + ``lora-rank = r`` becomes the scope ``lora-r``.

        The rank travels inside the scope name of every round instruction, so sites
        build the adapters the server has; a ``lora-<r>`` scope must agree with the key.
        """
        rank = lora_scope_rank(self.trainable_scope)
        if rank is None:
            return
        if self.trainable_scope != "lora" and rank != self.lora_rank:
            raise ValueError(
                f"run config trainable-scope={self.trainable_scope!r} disagrees with "
                f"lora-rank={self.lora_rank}"
            )
        object.__setattr__(self, "trainable_scope", f"lora-{self.lora_rank}")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> RunConfig:
        """Parse the run config (kebab-case keys); unknown keys are refused."""
        known = {f.name.replace("_", "-"): f for f in fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ValueError(
                f"unknown run-config keys {unknown}; known: {sorted(known)}"
            )
        values = {}
        for key, value in raw.items():
            f = known[key]
            kind = type(getattr(cls, f.name)) if hasattr(cls, f.name) else str
            values[f.name] = _coerce(key, value, kind)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The config as kebab-case keys (for checkpoints and the model card)."""
        return {k.replace("_", "-"): v for k, v in asdict(self).items()}

    @property
    def run_dir(self) -> Path:
        """Absolute folder of this run's outputs."""
        return (Path(self.output_dir).expanduser() / self.run_name).resolve()

    def site_config_paths(self) -> list[Path]:
        """Site configs for simulation, indexed by partition id."""
        return [
            Path(p.strip()).expanduser().resolve()
            for p in self.sim_site_configs.split(",")
            if p.strip()
        ]


def _valid_scope(scope: str) -> bool:
    try:
        check_scope(scope)
    except ValueError:
        return False
    return True


def _coerce(key: str, value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "1", "yes"):
            return True
        if str(value).lower() in ("false", "0", "no"):
            return False
    elif kind is int and not isinstance(value, bool):
        try:
            return int(value)
        except (TypeError, ValueError):
            pass
    elif kind is float and not isinstance(value, bool):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    elif kind is str:
        return str(value)
    raise ValueError(f"run config {key}={value!r}: expected a {kind.__name__}")
