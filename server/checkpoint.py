"""Crash-safe round checkpoints, resume checks, and the final model export.

Each round's model, strategy state (FedAdam moments, DP accountant), metrics history and
run config go into one ``checkpoints/round-<NNNN>.pt``, written to a temporary file in the
same folder, fsynced, renamed over the target and followed by an fsync of the folder, so a
crash leaves either the old or the new file, never a torn one under the final name. Its
SHA-256 is then recorded in ``checkpoints/latest.json`` (written the same way), and the
newest checkpoint whose hash verifies is the one resumed from. Files must hold only
tensors and plain Python values: they are read back with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from m3fm_model.lora import MARK, lora_rank, merge_lora_state

logger = logging.getLogger(__name__)

FORMAT = 1
INDEX = "latest.json"
# Run-config keys that may change between a run and its resume: the resume flag itself,
# where outputs go, and timeouts, none of which changes what is computed.
IGNORED_KEYS: frozenset[str] = frozenset(
    {"resume", "output-dir", "round-timeout", "node-wait-timeout"}
)
# Keys that may grow on resume (train for more rounds), never shrink.
INCREASING_KEYS: frozenset[str] = frozenset({"num-server-rounds", "num-rounds"})
_ABSENT = "<absent>"


@dataclass(frozen=True)
class Checkpoint:
    """One loaded, verified checkpoint."""

    round: int
    global_state: dict[str, torch.Tensor]
    strategy_state: dict[str, Any]
    metrics_history: list[Any] | dict[str, Any]
    run_config: dict[str, Any]
    path: Path


class ResumeMismatch(ValueError):
    """The run config differs from the checkpointed one in keys that must not change.

    Attributes:
        differences: key -> (checkpointed value, new value).
    """

    def __init__(self, differences: Mapping[str, tuple[Any, Any]]) -> None:
        self.differences = dict(differences)
        listed = "; ".join(
            f"{k}: {o!r} -> {n!r}" for k, (o, n) in sorted(differences.items())
        )
        super().__init__(
            f"cannot resume: run config differs from the checkpoint in {listed}"
        )


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: equal configs give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def config_hash(run_config: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a run config."""
    return hashlib.sha256(canonical_json(dict(run_config)).encode()).hexdigest()


def config_differences(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    *,
    ignored: Iterable[str] = IGNORED_KEYS,
    increasing: Iterable[str] = INCREASING_KEYS,
) -> dict[str, tuple[Any, Any]]:
    """Keys whose values differ (absent on one side counts), with (old, new) values."""
    skip, grow = set(ignored), set(increasing)
    diffs: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if key in skip or a == b:
            continue
        if key in grow and _ABSENT not in (a, b) and b > a:
            continue
        diffs[key] = (a, b)
    return diffs


class _HashingWriter:
    """File wrapper that hashes what is written (saves re-reading the file)."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(
    path: Path, write: Callable[[_HashingWriter], object], mode: int = 0o600
) -> tuple[str, int]:
    """Write a file atomically and durably; returns its SHA-256 and size in bytes.

    ``mode`` is set before any byte is written (private keys stay 0600 throughout).
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            writer = _HashingWriter(f)
            write(writer)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return writer.sha.hexdigest(), writer.size


def file_sha256(path: Path) -> str:
    """SHA-256 of a file (read in blocks by ``hashlib.file_digest``)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _compact(t: torch.Tensor) -> torch.Tensor:
    # torch.save writes a view's whole storage: clone views so only their data is kept.
    t = t.detach().to("cpu")
    if (
        not t.is_contiguous()
        or t.untyped_storage().nbytes() != t.numel() * t.element_size()
    ):
        t = t.contiguous().clone()
    return t


class RunCheckpointer:
    """Round checkpoints of one run under ``run_dir/checkpoints``.

    Args:
        run_dir: the run's output folder.
        keep: how many of the newest checkpoints to keep.
        ignored_keys: run-config keys ``check_resume`` ignores.
        increasing_keys: run-config keys that may only grow on resume.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        keep: int = 3,
        ignored_keys: Iterable[str] = IGNORED_KEYS,
        increasing_keys: Iterable[str] = INCREASING_KEYS,
    ) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.dir = Path(run_dir) / "checkpoints"
        self.keep = keep
        self.ignored_keys, self.increasing_keys = (
            set(ignored_keys),
            set(increasing_keys),
        )

    def save(
        self,
        round: int,
        global_state: Mapping[str, torch.Tensor],
        strategy_state: Mapping[str, Any],
        metrics_history: list[Any] | dict[str, Any],
        run_config: Mapping[str, Any],
    ) -> Path:
        """Write ``round-<NNNN>.pt`` and record it in ``latest.json``; keep the last K.

        Returns:
            The checkpoint's path.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": FORMAT,
            "round": int(round),
            "global_state": {k: _compact(v) for k, v in global_state.items()},
            "strategy_state": dict(strategy_state),
            "metrics_history": metrics_history,
            "run_config": dict(run_config),
            "run_config_sha256": config_hash(run_config),
        }
        path = self.dir / f"round-{int(round):04d}.pt"
        sha, size = atomic_write(path, lambda w: torch.save(payload, w))
        entry = {"round": int(round), "file": path.name, "sha256": sha, "bytes": size}
        # A resumed run rewrites rounds after its restart point: drop their old entries.
        kept = [e for e in self._entries() if e["round"] < round]
        entries = [entry, *sorted(kept, key=lambda e: -e["round"])][: self.keep]
        index = {
            "format": FORMAT,
            "latest": entry,
            "checkpoints": entries,
            "run_config": dict(run_config),
            "run_config_sha256": config_hash(run_config),
        }
        text = json.dumps(index, indent=2, sort_keys=True).encode()
        atomic_write(self.dir / INDEX, lambda w: w.write(text))
        self._prune({e["file"] for e in entries})
        logger.info("checkpoint round %d written (%d bytes)", round, size)
        return path

    def _index(self) -> dict[str, Any] | None:
        try:
            index = json.loads((self.dir / INDEX).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            logger.error("checkpoint index %s is unreadable", self.dir / INDEX)
            return None
        entries = index.get("checkpoints") if isinstance(index, dict) else None
        valid = isinstance(entries, list) and all(
            isinstance(e, dict) and {"round", "file", "sha256"} <= set(e)
            for e in entries
        )
        if not valid or "run_config" not in index:
            logger.error("checkpoint index %s is malformed", self.dir / INDEX)
            return None
        return index

    def _entries(self) -> list[dict[str, Any]]:
        index = self._index()
        return list(index.get("checkpoints", [])) if index else []

    def _prune(self, keep_files: set[str]) -> None:
        for p in self.dir.glob("round-*.pt"):
            if p.name not in keep_files:
                p.unlink(missing_ok=True)

    def load_latest(self) -> Checkpoint | None:
        """The newest checkpoint whose SHA-256 verifies, or ``None`` when there is none.

        A torn or corrupt newest file is logged and the previous one is used. Without a
        readable ``latest.json`` the files are tried newest first, unverified (logged).
        """
        index = self._index()
        if index is not None:
            candidates = [
                (self.dir / e["file"], e["sha256"]) for e in index["checkpoints"]
            ]
        else:
            files = sorted(self.dir.glob("round-*.pt"), reverse=True)
            if files:
                logger.warning("no checkpoint index: loading without hash verification")
            candidates = [(p, None) for p in files]
        for path, sha in candidates:
            checkpoint = self._try_load(path, sha)
            if checkpoint is not None:
                return checkpoint
        return None

    def _try_load(self, path: Path, sha: str | None) -> Checkpoint | None:
        if not path.is_file():
            logger.error("checkpoint %s is missing; trying the previous one", path.name)
            return None
        if sha is not None and file_sha256(path) != sha:
            logger.error(
                "checkpoint %s fails its SHA-256 check (torn or corrupt); trying the previous one",
                path.name,
            )
            return None
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - any unreadable file falls back alike
            logger.exception(
                "checkpoint %s is unreadable; trying the previous one", path.name
            )
            return None
        return Checkpoint(
            raw["round"],
            raw["global_state"],
            raw["strategy_state"],
            raw["metrics_history"],
            raw["run_config"],
            path,
        )

    def check_resume(self, run_config: Mapping[str, Any]) -> dict[str, Any]:
        """Refuse to resume under a different run config.

        Returns:
            The checkpointed run config.

        Without a readable ``latest.json`` (damaged index) the run config stored in
        the newest readable checkpoint file is compared instead.

        Raises:
            FileNotFoundError: there is no checkpoint to resume from.
            ValueError: the recorded config fails its hash check.
            ResumeMismatch: keys differ; the message names every key with both values.
        """
        index = self._index()
        if index is None:
            latest = self.load_latest()
            if latest is None:
                raise FileNotFoundError(f"no checkpoint to resume from in {self.dir}")
            logger.warning(
                "checkpoint index unreadable: checking the run config of %s",
                latest.path.name,
            )
            old = latest.run_config
        else:
            old = index["run_config"]
            if config_hash(old) != index["run_config_sha256"]:
                raise ValueError("the checkpointed run config fails its hash check")
        diffs = config_differences(
            old, run_config, ignored=self.ignored_keys, increasing=self.increasing_keys
        )
        if diffs:
            raise ResumeMismatch(diffs)
        return dict(old)


def export_final(
    run_dir: Path, state: Mapping[str, torch.Tensor], model_card: Mapping[str, Any]
) -> tuple[Path, Path]:
    """Write ``final_model.pt`` (a plain state dict of CPU tensors) and ``model_card.json``.

    The state dict loads with ``build_model(...).load_state_dict(strict=True)``. The card
    is the given one plus ``weights`` (file name, SHA-256, parameter count). A LoRA run's
    adapters are merged into the base weights of ``final_model.pt`` and also kept
    separate in ``lora_adapters.pt`` (adapters and heads; card entry ``lora``).

    Returns:
        (model path, card path).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    card = dict(model_card)
    rank = lora_rank(state)
    if rank is not None:
        adapters = {
            k: _compact(v)
            for k, v in state.items()
            if MARK in k or k.startswith("heads.")
        }
        lora_path = run_dir / "lora_adapters.pt"
        lora_sha, _ = atomic_write(lora_path, lambda w: torch.save(adapters, w))
        card["lora"] = {"rank": rank, "scale": 1.0, "merged": True}
        card["lora"] |= {"adapters_file": lora_path.name, "adapters_sha256": lora_sha}
        state = merge_lora_state(state)
    plain = {k: _compact(v) for k, v in state.items()}
    model_path, card_path = run_dir / "final_model.pt", run_dir / "model_card.json"
    sha, _ = atomic_write(model_path, lambda w: torch.save(plain, w))
    card["weights"] = {
        "file": model_path.name,
        "sha256": sha,
        "num_parameters": sum(t.numel() for t in plain.values()),
    }
    text = json.dumps(card, indent=2, sort_keys=True, default=str).encode()
    atomic_write(card_path, lambda w: w.write(text))
    return model_path, card_path
