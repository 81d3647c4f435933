"""Shared tiny inputs for model tests."""

from __future__ import annotations

import torch

from m3fm_model import M3FM


def tiny_batch(
    model: M3FM, batch: int = 2, *, ct: bool = True, text: bool = True, seed: int = 0
) -> dict:
    """Random inputs for the tiny preset (lung crop)."""
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.text.vocab_size
    kw: dict = {
        "question_ids": torch.randint(5, vocab, (batch, 8), generator=g),
        "question_mask": torch.ones(batch, 8, dtype=torch.bool),
    }
    kw["question_ids"][:, 0] = 0
    if ct:
        crop = model.config.crop_for_roi("lung")
        kw["ct"] = torch.rand(batch, 1, *crop, generator=g) * 2 - 1
        kw["spacing_mm"] = torch.rand(batch, 3, generator=g) + 0.5
    if text:
        kw["text_ids"] = torch.randint(5, vocab, (batch, 24), generator=g)
        kw["text_mask"] = torch.ones(batch, 24, dtype=torch.bool)
        kw["text_mask"][-1, 12:] = False
        kw["text_ids"][~kw["text_mask"]] = model.config.text.pad_id
    return kw
