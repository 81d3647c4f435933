"""Benchmark what travels: reply (de)serialisation throughput and bytes per round.

Rows:

- ``reply_serialise_gb_per_s``: a site's reply, ``wire_record`` (bfloat16 bits as
  int16, as sent under half-precision transfer, ``.npy`` bytes written straight into
  one buffer), in GB/s of model bytes; ``ms.serialise_np_save`` is the same record
  through Flower's ``Array(ndarray)`` (``np.save``); ``vs_memcpy`` is its time over a
  ``Tensor.copy_`` of the same bytes, interleaved in the same process. Target >= 1.5 GB/s (performance-notes §7).
- ``reply_deserialise_gb_per_s``: the server's side, ``record_arrays`` + ``decode_state``
  (zero-copy views of the received ``.npy`` bytes). Target >= 1.5 GB/s.
- ``reply_flower_wire_gb_per_s``: ours followed by Flower's own step, every nested
  object (the 5 MiB array chunks) deflated and content-addressed by SHA-256 (bound:
  SHA-256, ~2 GB/s). Informational (target ``info``, ``meets`` null): Flower hashes and
  copies every chunk in its own code, which we do not patch; what we control is how many
  bytes go in (trainable scope, half precision: the ``bytes_*`` rows).
- ``bytes_large_<scope>``: full-model float32 bytes over the bytes one site receives and
  returns per round in ``<scope>`` for the large preset (counted on the meta device, one
  cancer-risk head); ``mb_per_round`` gives down + up in float32 and half precision.
- ``half_precision_bytes_cut``: float32 reply bytes over bfloat16 reply bytes, measured
  by encoding the tiny preset's state. Target >= 1.95.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from any folder
    sys.path.insert(0, str(ROOT))

from bench.timing import interleaved  # noqa: E402
from bench.timing import row as result_row  # noqa: E402
from client.scope import scope_names  # noqa: E402
from m3fm_model import build_model  # noqa: E402
from server.transfer import (  # noqa: E402
    decode_state,
    dtype_tag,
    encode_state,
    record_arrays,
    wire_record,
)

logger = logging.getLogger("bench_transfer")
# Targets: the cut (full / scope bytes) each scope must reach on the large preset;
# performance-notes §5 gives 9x for task encoder + heads and 54x for LoRA r=8.
SCOPE_TARGETS = {"fusion-and-heads": 5.0, "heads": 100.0, "lora": 20.0}


def _state(num_layers: int) -> dict[str, torch.Tensor]:
    """``num_layers`` 1024 x 1024 weights with biases, as a reply of a 1024-wide model."""
    gen = torch.Generator().manual_seed(0)
    state = {}
    for i in range(num_layers):
        state[f"blocks.{i}.weight"] = torch.randn(1024, 1024, generator=gen)
        state[f"blocks.{i}.bias"] = torch.randn(1024, generator=gen)
    return state


def _record(state: dict[str, torch.Tensor]) -> ArrayRecord:
    """A reply as sent under half-precision transfer: bfloat16 bits, one Array each."""
    return wire_record(state, "bfloat16")


def _record_np_save(state: dict[str, torch.Tensor]) -> ArrayRecord:
    """The same record through Flower's ``Array(ndarray)`` (``np.save``): the anchor."""
    return ArrayRecord(
        {n: Array(a) for n, a in encode_state(state, "bfloat16").items()}
    )


def _wire(state: dict[str, torch.Tensor]) -> int:
    """Ours plus Flower's: every object (array chunks included) deflated and hashed."""
    record = _record(state)
    objects = get_all_nested_objects(record)
    return sum(len(obj.deflate()) for obj in objects.values())


def bench_serialise(num_layers: int, repeats: int) -> list[dict]:
    """Rows 4: reply encode and decode (and Flower's deflate) against memcpy."""
    state = _state(num_layers)
    nbytes = sum(t.numel() * 2 for t in state.values())  # bf16 payload
    flat = torch.cat([t.reshape(-1) for t in state.values()]).to(torch.bfloat16)
    dst = torch.empty_like(flat)
    tags = {n: dtype_tag(t.dtype, "bfloat16") for n, t in state.items()}
    record = _record(state)
    t = interleaved(
        {
            "memcpy": lambda: dst.copy_(flat),
            "serialise": lambda: _record(state),
            "serialise_np_save": lambda: _record_np_save(state),
            "deserialise": lambda: decode_state(record_arrays(record), tags),
            "flower_wire": lambda: _wire(state),
        },
        repeats,
    )
    ms = {k: round(v * 1e3, 2) for k, v in t.items()}
    rows = []
    for name in ("serialise", "deserialise", "flower_wire"):
        gbps = nbytes / t[name] / 1e9
        ours = name != "flower_wire"  # Flower's part is measured, not targeted
        rows.append(
            result_row(
                f"reply_{name}_gb_per_s",
                gbps,
                ">= 1.5" if ours else "info",
                gbps >= 1.5 if ours else None,
                unit="GB/s",
                anchor="memcpy",
                vs_memcpy=round(t[name] / t["memcpy"], 1),
                memcpy_gb_per_s=round(nbytes / t["memcpy"] / 1e9, 1),
                ms=ms,
                mb=round(nbytes / 1e6, 1),
            )  # fmt: skip
        )
    return rows


def scope_bytes(model: torch.nn.Module, scope: str) -> int:
    """Float32 bytes of the parameters that travel in ``scope``."""
    params = dict(model.named_parameters())
    return sum(params[n].numel() * 4 for n in scope_names(model, scope))


def bench_bytes(scopes: dict[str, object]) -> list[dict]:
    """Rows 6: per-site bytes per round of the large preset per trainable scope."""
    rows = []
    for scope, build in scopes.items():
        with torch.device("meta"):
            model = build()  # type: ignore[operator]
        full = sum(p.numel() * 4 for p in model.parameters())
        sent = scope_bytes(model, scope)
        cut = full / sent
        target = SCOPE_TARGETS[scope]
        rows.append(
            result_row(
                f"bytes_large_{scope}",
                cut,
                f">= {target:g}",
                cut >= target,
                anchor="full model float32",
                unit="x fewer bytes",
                mb_per_round={
                    "float32": round(2 * sent / 1e6, 1),
                    "half": round(sent / 1e6, 1),
                },
                full_model_mb=round(full / 1e6, 1),
            )  # fmt: skip
        )
    return rows


def bench_half() -> dict:
    """Row 6 (half precision): encoded reply bytes, float32 over bfloat16."""
    torch.manual_seed(0)
    state = build_model("tiny").state_dict()
    full = sum(a.nbytes for a in encode_state(state, None).values())
    half = sum(a.nbytes for a in encode_state(state, "bfloat16").values())
    ratio = full / half
    return result_row(
        "half_precision_bytes_cut", ratio, ">= 1.95", ratio >= 1.95,
        anchor="float32 reply", bytes={"float32": full, "bfloat16": half},
    )  # fmt: skip


def large_scopes() -> dict[str, object]:
    """Scope -> builder of the large preset with one cancer-risk head."""
    from client.scope import build_for_scope

    return {
        s: (lambda s=s: build_for_scope("large", s, tasks=("cancer_risk",)))
        for s in SCOPE_TARGETS
    }


def run(quick: bool = False) -> list[dict]:
    """Rows 4 and 6."""
    torch.set_num_threads(1)
    layers, repeats = (12, 5) if quick else (24, 9)
    rows = bench_serialise(layers, repeats)
    rows += bench_bytes(large_scopes())
    rows.append(bench_half())
    return rows


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for r in run(quick="--quick" in sys.argv):
        logger.info("%s", r)
    _ = np  # numpy is the wire format of every array above
