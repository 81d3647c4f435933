"""The site's append-only audit log: every instruction received and every reply sent.

One JSON object per line in ``<state-dir>/audit.jsonl``. A reply record holds the array
names with their byte sizes and the SHA-256 of the payload (the same digest the server
records on receipt, see :func:`payload_digest`), the status code and the epsilon spent —
never data, identifiers or exception text. Lines are appended with ``O_APPEND`` and
fsynced, so a crash loses at most the line being written and never rewrites history.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

AUDIT_FILE = "audit.jsonl"


class _SerialisedArray(Protocol):
    data: bytes


def payload_digest(
    arrays: Mapping[str, _SerialisedArray],
) -> tuple[str, dict[str, int]]:
    """SHA-256 over the serialised arrays of a record, in name order, and their sizes.

    Works on a Flower ``ArrayRecord`` (or any mapping of objects with ``.data`` bytes), so
    the site (what it sent) and the server (what it received) compute the same value.
    """
    h = hashlib.sha256()
    sizes: dict[str, int] = {}
    for name in sorted(arrays):
        data = bytes(arrays[name].data)
        h.update(name.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
        sizes[name] = len(data)
    return h.hexdigest(), sizes


class AuditLog:
    """Append-only JSON-lines audit log of one site."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @classmethod
    def for_state_dir(cls, state_dir: Path) -> AuditLog:
        """The audit log inside a site's state folder."""
        return cls(Path(state_dir) / AUDIT_FILE)

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append one record (``time`` and ``event`` first) and return it."""
        record = {
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            "event": event,
            **fields,
        }
        line = (json.dumps(record, sort_keys=False, allow_nan=False) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line  # end a torn last line so this record stays whole
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        return record

    def records(self) -> list[dict[str, Any]]:
        """All records; a torn last line (crash while writing) is skipped."""
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out


def format_table(records: Iterable[Mapping[str, Any]]) -> str:
    """The audit records as a fixed-width table for the terminal."""
    head = ("time", "event", "run", "round", "type", "status", "arrays", "bytes", "epsilon", "sha256")  # fmt: skip
    rows = [head]
    for r in records:
        arrays = r.get("arrays") or {}
        eps = r.get("epsilon")
        rows.append(
            (
                str(r.get("time", ""))[:19],
                str(r.get("event", "")),
                str(r.get("run_id", "")),
                str(r.get("round", "")),
                str(r.get("type", "")),
                str(r.get("status", r.get("reason", ""))),
                str(len(arrays)) if arrays else "",
                str(sum(arrays.values())) if arrays else "",
                f"{eps:.3f}" if isinstance(eps, int | float) else "",
                str(r.get("sha256", ""))[:12],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
