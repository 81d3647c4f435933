import warnings

import pytest
import torch
from opacus import GradSampleModule, PrivacyEngine
from opacus.validators import ModuleValidator

from m3fm_model import build_model

from .model_inputs import tiny_batch


@pytest.mark.parametrize("preset", ["tiny", "base", "large", "huge"])
def test_opacus_validator_accepts_every_preset(preset):
    with torch.device("meta"):
        model = build_model(preset, tasks=("cancer_risk", "heart"))
    assert ModuleValidator.validate(model, strict=False) == []
    assert not any(isinstance(m, torch.nn.MultiheadAttention) for m in model.modules())


def _freeze_unused_scale(model):
    lung = "x".join(map(str, model.config.crop_for_roi("lung")))
    for name, p in model.named_parameters():
        if ".tokenizers." in name and lung not in name:
            p.requires_grad_(False)


def _per_sample_grads(checkpointing: bool) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(
        "tiny", tasks=("cancer_risk", "heart"), activation_checkpointing=checkpointing
    )
    _freeze_unused_scale(model)
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    out = gsm(**tiny_batch(model, 3), tasks=("cancer_risk", "heart"))
    (out.logits["cancer_risk"].sum() + out.logits["heart"][:, 1].sum()).backward()
    return {n: p.grad_sample for n, p in model.named_parameters() if p.requires_grad}


def test_every_trainable_parameter_gets_a_per_sample_gradient():
    grads = _per_sample_grads(checkpointing=False)
    missing = [n for n, g in grads.items() if g is None]
    assert missing == []
    assert all(g.shape[0] == 3 for g in grads.values())


def test_per_sample_gradients_equal_individual_backward():
    # The per-sample gradient of sample i equals the gradient of sample i alone.
    grads = _per_sample_grads(checkpointing=False)
    torch.manual_seed(0)
    model = build_model("tiny", tasks=("cancer_risk", "heart"))
    kw = tiny_batch(model, 3)
    one = {k: v[1:2] for k, v in kw.items()}
    out = model(**one, tasks=("cancer_risk", "heart"))
    (out.logits["cancer_risk"].sum() + out.logits["heart"][:, 1].sum()).backward()
    for name, p in model.named_parameters():
        if name in grads and grads[name] is not None:
            torch.testing.assert_close(grads[name][1], p.grad, atol=1e-5, rtol=1e-4)


def test_activation_checkpointing_keeps_per_sample_gradients():
    plain = _per_sample_grads(checkpointing=False)
    ckpt = _per_sample_grads(checkpointing=True)
    assert all(ckpt[n] is not None for n in plain)
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], atol=1e-6, rtol=1e-5)


def test_one_dp_sgd_step_changes_trainable_parameters():
    torch.manual_seed(0)
    model = build_model("tiny", tasks=("cancer_risk",))
    _freeze_unused_scale(model)
    kw = tiny_batch(model, 4)
    data = torch.utils.data.TensorDataset(torch.arange(4))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    optim = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = PrivacyEngine(accountant="rdp")
        private, optim, loader = engine.make_private(
            module=model,
            optimizer=optim,
            data_loader=loader,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
        )
    before = {
        n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad
    }
    out = private(**kw, tasks=("cancer_risk",))
    target = torch.tensor([[0.0] * 6, [1.0] * 6, [0.0] * 6, [1.0] * 6])
    torch.nn.functional.binary_cross_entropy_with_logits(
        out.logits["cancer_risk"], target
    ).backward()
    optim.step()
    changed = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and not torch.equal(p, before[n])
    ]
    assert len(changed) == len(before)
    assert engine.get_epsilon(delta=1e-5) > 0
