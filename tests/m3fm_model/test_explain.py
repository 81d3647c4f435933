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


@pytest.mark.parametrize("task", ["cancer_risk", "emphysema"])
def test_gradient_relevance_lives_where_the_ct_has_signal(task):
    torch.manual_seed(0)
    model = build_model("tiny", tasks=("cancer_risk", "emphysema"))
    kw = tiny_batch(model, 2)
    ct = torch.zeros_like(kw["ct"])
    ct[0, :, 8:16, 16:24, 24:32] = kw["ct"][0, :, 8:16, 16:24, 24:32]  # one patch
    kw["ct"] = ct
    rollout, _ = explain(model, task, **kw)
    found, logits = explain(model, task, ct_method="gradient", **kw)
    grid = found[0].ct_grid
    assert grid.shape == model.config.ct.scales[0].grid
    assert (grid >= 0).all()
    # gradient x input: only the patch holding signal can be relevant
    assert tuple(int(i) for i in (grid == grid.max()).nonzero()[0]) == (1, 2, 3)
    assert grid.sum() == grid[1, 2, 3] > 0
    assert found[1].ct_grid.sum() == 0  # an all-zero crop has no relevance
    # the text side and the CT share come from the rollout either way
    assert found[0].ct_share == pytest.approx(rollout[0].ct_share)
    torch.testing.assert_close(found[0].text_tokens, rollout[0].text_tokens)
    with torch.no_grad():
        plain = model.eval()(**kw, tasks=[task]).logits[task]
    torch.testing.assert_close(plain, logits[task], atol=1e-5, rtol=1e-5)


def test_unknown_ct_method_is_refused():
    model = build_model("tiny", tasks=("cancer_risk",))
    with pytest.raises(ValueError, match="ct_method"):
        explain(model, "cancer_risk", ct_method="saliency", **tiny_batch(model, 1))
