"""``m3fm-site explain``: which data elements drove an answer, for one exam.

Attention rollout from the task token (``m3fm_model.explain``) gives relevance per CT
patch and per clinical-text token. Outputs: the clinical data types ranked by the
summed relevance of their sentence's tokens (table and JSON), the CT relevance
upsampled to the crop (``ct_relevance.npy``) and drawn as axial, coronal and sagittal
slices through its peak with a heat map over the crop (``ct_relevance.png``), and an
HTML page that colours each sentence of the clinical text by its relevance.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from m3fm_model.explain import explain
from m3fm_model.prompting import QuestionRouter

from ..site_dataset import default_tokenizer
from .exam_input import ExamInputs
from .model_io import LoadedModel
from .predict import exam_for_task, predict_exam


@dataclass
class ExplainResult:
    """One exam's explanation.

    Attributes:
        record: The prediction record (``predict.predict_exam``).
        fields: (clinical data type, relevance), most relevant first.
        ct_map: (S, H, W) relevance over the crop, or None without CT.
        ct_crop: The (S, H, W) crop shown, or None.
        spacing_mm: The crop's spacing, or None.
        ct_share: CT's share of the relevance given to CT and text together.
        peak: (s, r, c) crop voxel of the CT relevance maximum, or None.
    """

    record: dict[str, Any]
    fields: list[tuple[str, float]] = field(default_factory=list)
    ct_map: np.ndarray | None = None
    ct_crop: np.ndarray | None = None
    spacing_mm: tuple[float, float, float] | None = None
    ct_share: float | None = None
    peak: tuple[int, int, int] | None = None


@torch.no_grad()
def explain_exam(
    loaded: LoadedModel, inputs: ExamInputs, question: str, ct_method: str = "gradient"
) -> ExplainResult:
    """Answer the question and explain the answer (see the module docstring)."""
    _, record = predict_exam(loaded, inputs, question)
    model, tok = loaded.model, default_tokenizer()
    spec = loaded.registry[record["task"]]
    exam = exam_for_task(spec, inputs)
    cfg = model.config.text
    q_ids, q_mask = tok.encode([question], cfg.question_len)
    kw: dict[str, torch.Tensor] = {"question_ids": q_ids, "question_mask": q_mask}
    offsets, spans = None, None
    if exam.clinical_text is not None:
        ids, token_offsets = tok.encode_with_offsets(
            exam.clinical_text, cfg.clinical_len
        )
        text_ids = torch.full((1, cfg.clinical_len), tok.pad_id, dtype=torch.long)
        text_ids[0, : len(ids)] = torch.tensor(ids)
        kw |= {"text_ids": text_ids, "text_mask": text_ids != tok.pad_id}
        offsets, spans = [token_offsets], [inputs.spans]
    if exam.ct is not None:
        kw |= {"ct": exam.ct[None], "spacing_mm": torch.tensor([exam.spacing_mm])}
    found, _ = explain(
        model, spec.name, token_offsets=offsets, field_spans=spans,
        ct_method=ct_method, **kw,
    )  # fmt: skip
    expl = found[0]
    result = ExplainResult(record)
    result.fields = sorted(expl.fields.items(), key=lambda kv: kv[1], reverse=True)
    if expl.ct_grid is not None and exam.ct is not None:
        crop = tuple(exam.ct.shape[1:])
        result.ct_map = expl.ct_volume(crop).numpy()
        result.ct_crop = exam.ct[0].numpy()
        result.spacing_mm = exam.spacing_mm
        result.ct_share = expl.ct_share
        result.record["ct_method"] = ct_method
        grid_peak = np.unravel_index(int(expl.ct_grid.argmax()), expl.ct_grid.shape)
        patch = [c // g for c, g in zip(crop, expl.ct_grid.shape, strict=True)]
        result.peak = tuple(
            int(p * s + s // 2) for p, s in zip(grid_peak, patch, strict=True)
        )
        result.record["ct_peak_patch"] = [int(v) for v in grid_peak]
    return result


def _slices_png(result: ExplainResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    assert result.ct_map is not None and result.ct_crop is not None
    s, r, c = result.peak or (0, 0, 0)
    sz, sy, sx = result.spacing_mm or (1.0, 1.0, 1.0)
    low, high = float(result.ct_map.min()), float(result.ct_map.max())
    heat = (result.ct_map - low) / max(high - low, 1e-12)  # min-max: relative relevance
    views = (
        ("axial", result.ct_crop[s], heat[s], sy / sx, "upper"),
        ("coronal", result.ct_crop[:, r, :], heat[:, r, :], sz / sx, "lower"),
        ("sagittal", result.ct_crop[:, :, c], heat[:, :, c], sz / sy, "lower"),
    )
    fig, axes = plt.subplots(1, 3, figsize=(11, 4))
    for ax, (name, image, overlay, aspect, origin) in zip(axes, views, strict=True):
        ax.imshow(image, cmap="gray", vmin=-1, vmax=1, aspect=aspect, origin=origin)
        ax.imshow(
            overlay,
            cmap="jet",
            alpha=0.35,
            vmin=0,
            vmax=1,
            aspect=aspect,
            origin=origin,
        )
        ax.set_title(f"{name} through the peak", fontsize=9)
        ax.axis("off")
    fig.suptitle(
        f"{result.record['task']}: CT relevance (red = most relevant; image right = "
        "patient left on axial/coronal)",
        fontsize=9,
    )
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def _html(result: ExplainResult, inputs: ExamInputs, png: Path | None) -> str:
    rel = dict(result.fields)
    top = max(rel.values(), default=0.0) or 1.0
    sentences = []
    for name, start, end in inputs.spans:
        alpha = 0.85 * rel.get(name, 0.0) / top
        text = html.escape((inputs.text or "")[start:end])
        sentences.append(
            f"<span title='{name}: {rel.get(name, 0.0):.4f}' "
            f"style='background:rgba(230,60,20,{alpha:.2f})'>{text}</span>"
        )
    table = "".join(
        f"<tr><td>{i + 1}</td><td>{html.escape(n)}</td><td>{v:.4f}</td></tr>"
        for i, (n, v) in enumerate(result.fields)
    )
    share = f"{100 * result.ct_share:.1f}%" if result.ct_share is not None else "no CT"
    image = f"<img src='{png.name}' style='max-width:100%'>" if png else ""
    answer = html.escape(result.record["answer"]["text"])
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>M3FM explanation</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1000px}"
        "p.text{line-height:1.9}td{padding:2px 10px}</style></head><body>"
        f"<h1>{html.escape(result.record['task'])}</h1>"
        f"<p><b>Q:</b> {html.escape(result.record['question'])}<br><b>A:</b> {answer}</p>"
        f"<p>CT share of the relevance: {share}</p>{image}"
        "<h2>Clinical text (sentence colour = relevance)</h2>"
        f"<p class='text'>{' '.join(sentences) or '(no clinical data)'}</p>"
        "<h2>Clinical data types, most relevant first</h2>"
        f"<table><tr><th>#</th><th>data type</th><th>relevance</th></tr>{table}</table>"
        "</body></html>"
    )


def write_explanation(
    result: ExplainResult, inputs: ExamInputs, out_dir: Path
) -> list[Path]:
    """Write explanation.json, explanation.html and, with CT, the PNG and the map."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written, png = [], None
    if result.ct_map is not None:
        png = _slices_png(result, out_dir / "ct_relevance.png")
        npy = out_dir / "ct_relevance.npy"
        np.save(npy, result.ct_map.astype(np.float32), allow_pickle=False)
        written += [png, npy]
    page = out_dir / "explanation.html"
    page.write_text(_html(result, inputs, png), encoding="utf-8")
    payload = {
        **result.record,
        "clinical_relevance": [{"field": n, "relevance": v} for n, v in result.fields],
        "ct_share": result.ct_share,
        "ct_peak_voxel": list(result.peak) if result.peak else None,
    }
    data = out_dir / "explanation.json"
    data.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    return [data, page, *written]


def format_fields(result: ExplainResult, limit: int = 15) -> str:
    """The ranked clinical data types as a terminal table."""
    lines = [f"{'#':>3}  {'clinical data type':<26}relevance"]
    lines += [
        f"{i + 1:>3}  {name:<26}{value:.4f}"
        for i, (name, value) in enumerate(result.fields[:limit])
    ]
    return "\n".join(lines)


def router_for(loaded: LoadedModel) -> QuestionRouter:
    """A question router over the model's tasks (built-in and added)."""
    return QuestionRouter(loaded.model, default_tokenizer(), registry=loaded.registry)
