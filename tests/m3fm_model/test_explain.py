import pytest
import torch

from m3fm_model import build_model
from m3fm_model.clinical import serialize_with_spans
from m3fm_model.explain import attention_rollout, explain, field_relevance
from m3fm_model.tokenizer import load_tokenizer

from .model_inputs import tiny_batch


def test_rollout_identity_without_attention_mass():
    a = torch.zeros(1, 2, 3, 3)
    rel = attention_rollout([a, a])
    assert torch.equal(rel[0], torch.eye(3))


def test_rollout_hand_computed():
    a = torch.tensor([[[0.5, 0.5], [0.0, 1.0]]])[None].expand(1, 2, 2, 2)
    rel = attention_rollout([a])
    assert torch.allclose(rel[0], torch.tensor([[1.5, 0.5], [0.0, 2.0]]))


def test_explain_shapes_and_padding():
    torch.manual_seed(0)
    model = build_model("tiny", tasks=("cancer_risk",))
    kw = tiny_batch(model, 2)
    exps, logits = explain(model, "cancer_risk", **kw)
    grid = model.config.ct.scales[0].grid
    assert exps[0].ct_grid.shape == grid
    assert (exps[0].ct_grid > 0).all()
    assert exps[1].text_tokens[~kw["text_mask"][1]].abs().sum() == 0
    assert exps[0].ct_volume(
        model.config.crop_for_roi("lung")
    ).shape == model.config.crop_for_roi("lung")
    # explanations do not change the answer
    with torch.no_grad():
        plain = model.eval()(**kw, tasks=["cancer_risk"]).logits["cancer_risk"]
    torch.testing.assert_close(plain, logits["cancer_risk"], atol=1e-5, rtol=1e-5)


def test_field_relevance_sums_tokens_per_field():
    tok = load_tokenizer()
    text, spans = serialize_with_spans({"age": 61, "gender": "Male", "pack_years": 30})
    ids, offsets = tok.encode_with_offsets(text, 160)
    rel = torch.ones(len(ids))
    fields = field_relevance(rel, offsets, spans)
    assert set(fields) == {"age", "gender", "pack_years"}
    assert all(v > 0 for v in fields.values())
    assert sum(fields.values()) <= len(ids) - 2  # specials carry no field


def test_explain_without_ct_has_no_grid():
    torch.manual_seed(0)
    model = build_model("tiny", tasks=("heart",))
    exps, _ = explain(model, "heart", **tiny_batch(model, 1, ct=False))
    assert exps[0].ct_grid is None
    with pytest.raises(ValueError, match="no CT"):
        exps[0].ct_volume((32, 48, 48))
