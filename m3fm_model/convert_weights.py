"""Import of the authors' released M3FM checkpoint format through an explicit key map.

The authors' state dict (see m3fm-large-checkpoint-keys.tsv) names parts differently
and stores each scale's Conv3d twice (``img_tokenizer.convN`` and the scale's
``patch_embed.proj``); convs beyond the configured scales are allocated but unused. The
converter maps every key, checks duplicated convs are identical, drops exactly the
unused convs and the fixed hazard matrix, fails on anything else, then loads strictly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .builders import build_from_config
from .config import CTConfig, FusionConfig, ModelConfig, ScaleSpec, TextConfig
from .m3fm import M3FM
from .tasks import TASKS, AnswerKind

_SCALE_RE = re.compile(r"^img_tokenizer\.tokenizer_\((\d+), (\d+), (\d+)\)\.(.+)$")
_CONV_RE = re.compile(r"^img_tokenizer\.conv(\d+)\.(weight|bias)$")
_HEAD_RE = re.compile(r"^multi_task_head\.(\w+)\.(.+)$")
_HAZARD_MATRIX = "multi_task_head.hazard_layer.upper_triagular_mask"
# Buffers some exports of the text encoder carry; they hold no learnt values.
_IGNORED_BUFFERS = (
    "encoder_txt.embeddings.position_ids",
    "encoder_txt.embeddings.token_type_ids",
)
# Attention heads by width for the authors' presets (heads are not visible in shapes).
_KNOWN_HEADS = {768: 12, 1024: 16, 1280: 16}

_BLOCK_RE = re.compile(
    r"^(encoder_img|task_attention)\.blocks\.(\d+)\."
    r"((?:norm1|norm2|attn\.q|attn\.k|attn\.v|attn\.proj|mlp\.fc1|mlp\.fc2)\.(?:weight|bias))$"
)
_OWNER = {"encoder_img": "ct_encoder", "task_attention": "task_attention"}
_EXACT_MAP = {
    "task_registers": "task_attention.registers.weight",
    "encoder_img.norm.weight": "ct_encoder.norm.weight",
    "encoder_img.norm.bias": "ct_encoder.norm.bias",
    "task_attention.norm.weight": "task_attention.norm.weight",
    "task_attention.norm.bias": "task_attention.norm.bias",
    "encoder_txt.embeddings.word_embeddings.weight": "text_encoder.embeddings.word_embeddings.weight",
    "encoder_txt.embeddings.position_embeddings.weight": "text_encoder.embeddings.position_embeddings.weight",
    "encoder_txt.embeddings.token_type_embeddings.weight": "text_encoder.embeddings.token_type_embeddings.weight",
    "encoder_txt.embeddings.LayerNorm.weight": "text_encoder.embeddings.norm.weight",
    "encoder_txt.embeddings.LayerNorm.bias": "text_encoder.embeddings.norm.bias",
}
for _old, _new in (
    ("img", "image_proj"),
    ("txt", "text_proj"),
    ("task", "question_proj"),
):
    for _kind in ("weight", "bias"):
        _EXACT_MAP[f"cross_embedding_{_old}.{_kind}"] = f"task_attention.{_new}.{_kind}"
_TEXT_LAYER_MAP = (
    ("attention.self.query.", "attention.query."),
    ("attention.self.key.", "attention.key."),
    ("attention.self.value.", "attention.value."),
    ("attention.output.dense.", "attention.dense."),
    ("attention.output.LayerNorm.", "attention.norm."),
    ("intermediate.dense.", "intermediate."),
    ("output.dense.", "output."),
    ("output.LayerNorm.", "norm."),
)
_SCALE_MAP = {
    "cls_token": "cls_token.weight",
    "pos_embed_spatial": "pos_embed.spatial",
    "pos_embed_slice": "pos_embed.slice",
    "pos_embed_class": "pos_embed.cls",
    "patch_embed.proj.weight": "patch_embed.weight",
    "patch_embed.proj.bias": "patch_embed.bias",
}
_HEAD_MAP = {
    "transform.dense.weight": "dense.weight",
    "transform.dense.bias": "dense.bias",
    "transform.LayerNorm.weight": "norm.weight",
    "transform.LayerNorm.bias": "norm.bias",
    "decoder.weight": "decoder.weight",
    "bias": "decoder.bias",
}


class CheckpointFormatError(ValueError):
    """The checkpoint does not match the authors' format; the message lists the keys."""


def unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """Unwrap a checkpoint into a flat state dict.

    Accepts a state dict, a ``{"model": ...}`` or ``{"state_dict": ...}`` wrapper, and a
    ``module.`` prefix (DataParallel/DDP).
    """
    for wrapper in ("model", "state_dict"):
        if (
            isinstance(obj, Mapping)
            and wrapper in obj
            and isinstance(obj[wrapper], Mapping)
        ):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not all(
        torch.is_tensor(v) for v in obj.values()
    ):
        raise CheckpointFormatError("expected a mapping of parameter names to tensors")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def map_key(key: str) -> str | None:
    """Our parameter name for one of the authors' keys (None when not mappable)."""
    if key in _EXACT_MAP:
        return _EXACT_MAP[key]
    if m := _BLOCK_RE.match(key):
        return f"{_OWNER[m.group(1)]}.blocks.{m.group(2)}.{m.group(3)}"
    if m := _SCALE_RE.match(key):
        rest = _SCALE_MAP.get(m.group(4))
        crop = f"{m.group(1)}x{m.group(2)}x{m.group(3)}"
        return None if rest is None else f"ct_encoder.tokenizers.{crop}.{rest}"
    if m := _HEAD_RE.match(key):
        rest = _HEAD_MAP.get(m.group(2))
        return None if rest is None else f"heads.{m.group(1)}.{rest}"
    if m := re.match(r"^encoder_txt\.encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$", key):
        for old, new in _TEXT_LAYER_MAP:
            if m.group(2) + "." == old:
                return f"text_encoder.layers.{m.group(1)}.{new}{m.group(3)}"
    return None


def _scales(sd: Mapping[str, torch.Tensor]) -> list[ScaleSpec]:
    scales = []
    for key, w in sd.items():
        m = _SCALE_RE.match(key)
        if m and m.group(4) == "patch_embed.proj.weight":
            crop = tuple(int(m.group(i)) for i in (1, 2, 3))
            scales.append(ScaleSpec(crop, tuple(w.shape[2:])))  # type: ignore[arg-type]
    return scales


def _drop_convs(sd: dict[str, torch.Tensor], scales: list[ScaleSpec]) -> None:
    """Remove img_tokenizer.convN: the Nth scale's copy (must be identical) or unused."""
    for key in [k for k in sd if _CONV_RE.match(k)]:
        m = _CONV_RE.match(key)
        assert m is not None
        n, kind = int(m.group(1)), m.group(2)
        if n <= len(scales):
            s = scales[n - 1].crop
            twin = sd[
                f"img_tokenizer.tokenizer_({s[0]}, {s[1]}, {s[2]}).patch_embed.proj.{kind}"
            ]
            if twin.shape != sd[key].shape or not torch.equal(twin, sd[key]):
                raise CheckpointFormatError(
                    f"{key} should equal the patch embedding of scale {n} {s} but differs"
                )
        del sd[key]


def _count(sd: Mapping[str, torch.Tensor], pattern: str) -> int:
    found = {int(m.group(1)) for k in sd if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def _heads_for(dim: int, given: int | None, part: str) -> int:
    if given is not None:
        return int(given)
    if dim in _KNOWN_HEADS:
        return _KNOWN_HEADS[dim]
    raise CheckpointFormatError(
        f"cannot infer the number of attention heads of the {part} (width {dim}); "
        "pass sizes={...} with it"
    )


def infer_config(
    sd: Mapping[str, torch.Tensor], sizes: Mapping[str, Any] | None = None
) -> tuple[ModelConfig, dict[str, int]]:
    """Infer the architecture from tensor shapes (heads from ``sizes`` when needed).

    ``sizes`` may follow the authors' meta layout: ``{"text": {"num_attention_heads"}, "image":
    {"heads"}, "task_attention": {"heads"}}``.
    """
    sizes = sizes or {}
    word = sd["encoder_txt.embeddings.word_embeddings.weight"]
    text_dim = word.shape[1]
    text = TextConfig(
        vocab_size=word.shape[0],
        dim=text_dim,
        depth=_count(sd, r"^encoder_txt\.encoder\.layer\.(\d+)\."),
        heads=_heads_for(
            text_dim, sizes.get("text", {}).get("num_attention_heads"), "text encoder"
        ),
        ffn_dim=sd["encoder_txt.encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_positions=sd["encoder_txt.embeddings.position_embeddings.weight"].shape[0],
        clinical_len=min(
            160, sd["encoder_txt.embeddings.position_embeddings.weight"].shape[0] - 2
        ),
        question_len=min(
            50, sd["encoder_txt.embeddings.position_embeddings.weight"].shape[0] - 2
        ),
    )
    img_dim = sd["encoder_img.norm.weight"].shape[0]
    ct = CTConfig(
        dim=img_dim,
        depth=_count(sd, r"^encoder_img\.blocks\.(\d+)\."),
        heads=_heads_for(img_dim, sizes.get("image", {}).get("heads"), "CT encoder"),
        scales=tuple(_scales(sd)),
        mlp_ratio=sd["encoder_img.blocks.0.mlp.fc1.weight"].shape[0] // img_dim,
    )
    fdim = sd["task_attention.norm.weight"].shape[0]
    fusion = FusionConfig(
        dim=fdim,
        depth=_count(sd, r"^task_attention\.blocks\.(\d+)\."),
        heads=_heads_for(
            fdim, sizes.get("task_attention", {}).get("heads"), "task attention"
        ),
        num_registers=sd["task_registers"].shape[1],
        mlp_ratio=sd["task_attention.blocks.0.mlp.fc1.weight"].shape[0] // fdim,
    )
    outputs = {
        m.group(1): w.shape[0]
        for k, w in sd.items()
        if (m := _HEAD_RE.match(k)) and m.group(2) == "decoder.weight"
    }
    hidden = {
        sd[f"multi_task_head.{t}.transform.dense.weight"].shape[0] for t in outputs
    }
    if len(hidden) != 1:
        raise CheckpointFormatError(
            f"heads have different hidden widths {sorted(hidden)}"
        )
    crops = {s.crop for s in ct.scales}
    from .config import AUTHORS_ROI_CROPS

    roi_crops = tuple((r, c) for r, c in AUTHORS_ROI_CROPS if c in crops)
    config = ModelConfig(
        preset="authors",
        ct=ct,
        text=text,
        fusion=fusion,
        head_hidden=hidden.pop(),
        tasks=tuple(outputs),
        hazard_activation="none",
        roi_crops=roi_crops,
    )
    return config, outputs


def _hazard_tasks(outputs: Mapping[str, int]) -> list[str]:
    return [
        t
        for t, n in outputs.items()
        if n == 7 and t in TASKS and TASKS[t].answer_kind == AnswerKind.HAZARD6
    ]


def convert_state_dict(
    sd: Mapping[str, torch.Tensor], scales: list[ScaleSpec]
) -> dict[str, torch.Tensor]:
    """Map the authors' keys to ours; raises CheckpointFormatError listing unmapped keys."""
    sd = dict(sd)
    _drop_convs(sd, scales)
    if _HAZARD_MATRIX in sd:
        if not torch.equal(sd[_HAZARD_MATRIX].float(), torch.ones(6, 6).triu()):
            raise CheckpointFormatError(
                f"{_HAZARD_MATRIX} is not the 6x6 upper-triangular ones matrix"
            )
        del sd[_HAZARD_MATRIX]
    for key in _IGNORED_BUFFERS:
        sd.pop(key, None)
    out, unmapped = {}, []
    for key, value in sd.items():
        new = map_key(key)
        if new is None:
            unmapped.append(key)
        else:
            out[new] = value
    if unmapped:
        raise CheckpointFormatError(
            f"unmapped keys in the checkpoint: {sorted(unmapped)}"
        )
    return out


def load_authors_checkpoint(
    path_or_state_dict: str | Path | Mapping[str, Any],
    sizes: Mapping[str, Any] | None = None,
) -> M3FM:
    """Build an M3FM matching an authors'-format checkpoint and load it strictly.

    Args:
        path_or_state_dict: a ``.pt``/``.pth`` path or an already loaded object (state dict,
            optionally wrapped in ``{"model": ...}`` and/or prefixed with ``module.``).
        sizes: optional sizes not visible in tensor shapes (attention heads), in the
            authors' meta layout.

    Returns:
        The model in eval mode with the authors' (unclamped) hazard behaviour.
    """
    obj = path_or_state_dict
    if isinstance(obj, str | Path):
        obj = torch.load(obj, map_location="cpu", weights_only=True)
    sd = unwrap_state_dict(obj)
    config, outputs = infer_config(sd, sizes)
    model = build_from_config(
        config, num_outputs=outputs, hazard_tasks=_hazard_tasks(outputs)
    )
    converted = convert_state_dict(sd, list(config.ct.scales))
    try:
        model.load_state_dict(converted, strict=True)
    except RuntimeError as err:
        raise CheckpointFormatError(
            f"checkpoint does not fit the inferred model: {err}"
        ) from err
    return model.eval()
