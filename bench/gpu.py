"""GPU benchmark: steps/s, peak memory and model-FLOPs utilisation per preset and DP mode.

Per preset (base, large) at the lung crop (128x448x320, 16^3 cubes), scope
fusion-and-heads, batch 1 by default, bf16 autocast, fused SDPA attention, reentrant
activation checkpointing (exact per-sample gradients under Opacus hooks), with and
without DP-SGD (Opacus hooks, clipping and noise). MFU = model FLOPs per step (counted
once with ``FlopCounterMode``) / step time / the card's bf16 dense peak. ``--compile``
adds the non-private step under ``torch.compile`` (compile time shown), which tells
whether compiling helps on that card; it is off by default to stay in the time limit.

``python bench/gpu.py --preset tiny --device cpu --steps 2`` exercises the same code on
a CPU (no MFU without a known peak).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from opacus import GradSampleModule
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from client.scope import scope_names, set_trainable  # noqa: E402
from m3fm_model import build_model  # noqa: E402

# bf16 dense peak (TFLOP/s) by device-name fragment; SXM parts.
PEAKS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def _inputs(model: torch.nn.Module, batch: int, device: torch.device) -> dict:
    crop = model.config.crop_for_roi("lung")
    vocab = model.config.text.vocab_size
    return {
        "ct": torch.rand(batch, 1, *crop, device=device) * 2 - 1,
        "spacing_mm": torch.ones(batch, 3, device=device),
        "text_ids": torch.randint(5, vocab, (batch, 160), device=device),
        "text_mask": torch.ones(batch, 160, dtype=torch.bool, device=device),
        "question_ids": torch.randint(5, vocab, (batch, 50), device=device),
        "question_mask": torch.ones(batch, 50, dtype=torch.bool, device=device),
    }


def _step_fn(  # noqa: ANN202
    preset: str, dp: bool, batch: int, device: torch.device, compiled: bool = False
):
    torch.manual_seed(0)
    model = build_model(
        preset, tasks=("cancer_risk",), activation_checkpointing=device.type == "cuda"
    ).to(device)
    set_trainable(model, scope_names(model, "fusion-and-heads"))
    if dp and compiled:
        raise ValueError("Opacus' per-sample hooks are not compiled; pick one")
    module = GradSampleModule(model, loss_reduction="sum") if dp else model
    if compiled:
        module = torch.compile(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    inputs = _inputs(model, batch, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast:
            out = module(**inputs, tasks=("cancer_risk",))
        out.logits["cancer_risk"].float().sum().backward()
        if dp:  # clip each sample to norm 1, sum, add noise (what DPOptimizer does)
            flat = torch.cat([p.grad_sample.flatten(1) for p in params], dim=1)
            scale = (1.0 / (flat.norm(dim=1) + 1e-6)).clamp(max=1.0)
            for p in params:
                g = torch.einsum("i,i...->...", scale, p.grad_sample)
                p.grad = g + torch.randn_like(g)
                p.grad_sample = None
        opt.step()

    return step


def measure(
    preset: str,
    dp: bool,
    steps: int,
    batch: int,
    device: torch.device,
    compiled: bool = False,
    flops: float | None = None,
) -> dict:
    """Steps/s, peak memory (GB) and MFU of one configuration.

    ``compiled`` runs the non-private step through ``torch.compile`` (its compile time
    is spent in the warm-up and reported as ``compile_s``); pass the eager step's
    ``flops`` then, since compiled kernels bypass the FLOP counter.
    """
    step = _step_fn(preset, dp, batch, device, compiled)
    start = time.perf_counter()
    step()  # warm-up (and compilation)
    warmup_s = time.perf_counter() - start
    if flops is None:
        with FlopCounterMode(display=False) as counter:
            step()
        flops = counter.get_total_flops()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    peak_gb = torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None
    name = torch.cuda.get_device_name() if device.type == "cuda" else ""
    peak = next((v for k, v in PEAKS.items() if k in name), None)
    mfu = flops / seconds / (peak * 1e12) if peak else None
    return {"preset": preset, "dp": dp, "compiled": compiled, "steps_per_s": 1 / seconds,
            "peak_gb": peak_gb, "tflop_per_step": flops / 1e12, "mfu": mfu,
            "compile_s": warmup_s if compiled else None}  # fmt: skip


def main() -> None:
    """Print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", nargs="*", default=["base", "large"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time the non-private step under torch.compile (adds compile time)",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    print(
        f"{'preset':8} {'variant':9} {'steps/s':>8} {'peak GB':>8} {'TFLOP/step':>10} "
        f"{'MFU':>6} {'compile s':>9}"
    )
    variants = [("eager", False, False), ("dp", True, False)]
    variants += [("compiled", False, True)] if args.compile else []
    for preset in args.preset:
        eager_flops = None
        for label, dp, compiled in variants:
            try:
                r = measure(
                    preset, dp, args.steps, args.batch, device, compiled,
                    flops=eager_flops if compiled else None,
                )  # fmt: skip
            except torch.OutOfMemoryError:
                print(f"{preset:8} {label:9} out of memory")
                torch.cuda.empty_cache()
                continue
            if label == "eager":
                eager_flops = r["tflop_per_step"] * 1e12
            peak = "-" if r["peak_gb"] is None else f"{r['peak_gb']:.1f}"
            mfu = "-" if r["mfu"] is None else f"{r['mfu']:.1%}"
            comp = "-" if r["compile_s"] is None else f"{r['compile_s']:.0f}"
            print(f"{preset:8} {label:9} {r['steps_per_s']:8.2f} {peak:>8} "
                  f"{r['tflop_per_step']:10.2f} {mfu:>6} {comp:>9}")  # fmt: skip


if __name__ == "__main__":
    main()
