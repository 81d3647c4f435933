import pytest
import torch

from m3fm_model import TASKS, build_model
from m3fm_model.config import ScaleSpec, preset_config

from .model_inputs import tiny_batch


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("tiny")


@pytest.mark.parametrize("ct,text", [(True, True), (True, False), (False, True)])
def test_output_shapes_per_task(model, ct, text):
    # Prepare
    kw = tiny_batch(model, 3, ct=ct, text=text)
    # Execute
    with torch.no_grad():
        out = model.eval()(**kw)
    # Assert
    assert out.fused.shape == (3, model.config.fusion.dim)
    for name, spec in TASKS.items():
        expected = 6 if spec.answer_kind == "hazard6" else spec.num_outputs
        assert out.logits[name].shape == (3, expected)
        assert torch.isfinite(out.logits[name]).all()


def test_every_parameter_gets_a_gradient_for_its_scale(model):
    model.train()
    kw = tiny_batch(model, 2)
    out = model(**kw)
    sum(v.sum() for v in out.logits.values()).backward()
    lung_key = "x".join(map(str, model.config.crop_for_roi("lung")))
    for name, p in model.named_parameters():
        if ".tokenizers." in name and lung_key not in name:
            continue  # the other scale's tokenizer is not used by a lung crop
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if "word_embeddings" not in name:
            assert p.grad.abs().sum() > 0, name
    model.zero_grad()


def test_missing_ct_in_mixed_batch_equals_no_ct(model):
    # A hidden CT (ct_present False) must give the same answer as no CT at all.
    model.eval()
    kw = tiny_batch(model, 2)
    with torch.no_grad():
        mixed = model(**kw, ct_present=torch.tensor([True, False]))
        no_ct = {k: v for k, v in kw.items() if k not in ("ct", "spacing_mm")}
        alone = model(**no_ct)
        full = model(**kw)
    assert torch.allclose(mixed.fused[1], alone.fused[1], atol=1e-5)
    assert torch.allclose(mixed.fused[0], full.fused[0], atol=1e-5)
    assert not torch.allclose(full.fused[1], alone.fused[1], atol=1e-3)


def test_empty_text_row_equals_no_text(model):
    model.eval()
    kw = tiny_batch(model, 2)
    kw["text_mask"][1] = False
    kw["text_ids"][1] = model.config.text.pad_id
    with torch.no_grad():
        masked = model(**kw)
        alone = model(**{k: v for k, v in kw.items() if not k.startswith("text")})
    assert torch.allclose(masked.fused[1], alone.fused[1], atol=1e-5)


def test_forward_is_pure_and_deterministic(model):
    model.eval()
    kw = tiny_batch(model, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        a, b = model(**kw).fused, model(**kw).fused
    assert torch.equal(a, b)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_hazard_monotone_by_default_and_unclamped_option():
    torch.manual_seed(3)
    mono = build_model("tiny", tasks=("cancer_risk",))
    torch.manual_seed(3)
    raw = build_model("tiny", tasks=("cancer_risk",), hazard_activation="none")
    with torch.no_grad():
        for m in (mono, raw):
            m.heads["cancer_risk"].decoder.bias.copy_(
                torch.tensor([1.0, -2, 0.5, -1, 0.3, -0.7, 0])
            )
        kw = tiny_batch(mono, 4)
        risk_mono = mono.eval()(**kw).logits["cancer_risk"].sigmoid()
        risk_raw = raw.eval()(**kw).logits["cancer_risk"].sigmoid()
    assert (risk_mono.diff(dim=1) >= 0).all()
    assert (risk_raw.diff(dim=1) < 0).any()


def test_tasks_subset_and_unknown_task(model):
    kw = tiny_batch(model, 1)
    with torch.no_grad():
        out = model.eval()(**kw, tasks=["heart"])
    assert list(out.logits) == ["heart"]
    with pytest.raises(ValueError, match="no head"):
        model(**kw, tasks=["not_a_task"])


@pytest.mark.parametrize(
    "bad,match",
    [
        (
            {"ct": torch.zeros(1, 1, 16, 16, 16), "spacing_mm": torch.ones(1, 3)},
            "not supported",
        ),
        (
            {"ct": torch.zeros(1, 32, 64, 64), "spacing_mm": torch.ones(1, 3)},
            r"\(B, 1, S, H, W\)",
        ),
        ({"ct": torch.zeros(1, 1, 32, 64, 64)}, "together"),
        (
            {"ct": torch.zeros(1, 1, 32, 64, 64), "spacing_mm": torch.ones(1, 2)},
            "spacing_mm",
        ),
        ({"text_ids": torch.ones(1, 5, dtype=torch.long)}, "together"),
    ],
)
def test_bad_arguments_raise_value_error(model, bad, match):
    kw = {
        "question_ids": torch.zeros(1, 4, dtype=torch.long),
        "question_mask": torch.ones(1, 4, dtype=torch.bool),
    }
    with pytest.raises(ValueError, match=match):
        model(**kw, **bad)


def test_bad_builder_arguments():
    with pytest.raises(ValueError, match="unknown preset"):
        build_model("gigantic")
    with pytest.raises(ValueError, match="unknown tasks"):
        build_model("tiny", tasks=("cancer_risk", "dragon_scales"))
    with pytest.raises(ValueError, match="unknown overrides"):
        build_model("tiny", hazard_activaton="none")
    with pytest.raises(ValueError, match="hazard_activation"):
        build_model("tiny", hazard_activation="tanh")
    with pytest.raises(ValueError, match="divisible"):
        ScaleSpec((30, 64, 64), (8, 8, 8))


def test_crop_for_roi():
    cfg = preset_config("large")
    assert cfg.crop_for_roi("lung") == (128, 448, 320)
    assert cfg.crop_for_roi("heart") == (128, 192, 224)
    with pytest.raises(ValueError, match="no crop"):
        cfg.crop_for_roi("none")


def test_no_nan_under_extreme_inputs(model):
    kw = tiny_batch(model, 2)
    kw["ct"] = torch.ones_like(kw["ct"])
    kw["spacing_mm"] = torch.full((2, 3), 5.0)
    with torch.no_grad():
        out = model.eval()(**kw)
    assert all(torch.isfinite(v).all() for v in out.logits.values())
