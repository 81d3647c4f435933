"""LoRA adapters: exact start, merge equals the unmerged forward, scope, Opacus."""

import pytest
import torch
from opacus import GradSampleModule
from opacus.validators import ModuleValidator

from client.scope import build_for_scope, lora_scope_rank, scope_names
from m3fm_model import build_model
from m3fm_model.lora import LoRALinear, add_lora, has_lora, merge_lora_state
from tests.m3fm_model.model_inputs import tiny_batch

torch.set_num_threads(1)


def _randomize_adapters(model, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_up.weight.copy_(
                    torch.randn(m.lora_up.weight.shape, generator=gen)
                )


def _out(model, inputs):
    model.eval()
    with torch.no_grad():
        return model(**inputs, tasks=("cancer_risk",)).logits["cancer_risk"]


def test_fresh_adapters_leave_the_output_unchanged():
    torch.manual_seed(0)
    plain = build_model("tiny")
    inputs = tiny_batch(plain)
    before = _out(plain, inputs)
    n = add_lora(plain, 4)
    assert n == 12 + 12 + 15  # every Linear of the ViT, text encoder and fusion
    torch.testing.assert_close(_out(plain, inputs), before, rtol=0, atol=0)


def test_merged_state_reproduces_the_adapted_forward():
    torch.manual_seed(0)
    adapted = build_for_scope("tiny", "lora-4")
    _randomize_adapters(adapted)
    inputs = tiny_batch(adapted)
    merged = build_model("tiny")
    merged.load_state_dict(merge_lora_state(adapted.state_dict()), strict=True)
    lora_out, merged_out = _out(adapted, inputs), _out(merged, inputs)
    assert not torch.allclose(lora_out, _out(build_model("tiny"), inputs))
    torch.testing.assert_close(merged_out, lora_out, rtol=1e-4, atol=1e-5)


def test_lora_scope_travels_only_adapters_and_heads():
    model = build_model("tiny")
    names = scope_names(model, "lora", tasks=("cancer_risk",))
    assert has_lora(model) and lora_scope_rank("lora") == 8
    assert names and all(
        ".lora_" in n or n.startswith("heads.cancer_risk.") for n in names
    )
    params = dict(model.named_parameters())
    assert params[names[0]].shape[0] == 8  # lora_down is (r, in)
    assert len([n for n in names if ".lora_" in n]) == 2 * 39


@pytest.mark.parametrize("bad", ["lora-0", "lora-x", "loraa"])
def test_bad_lora_scopes_are_refused(bad):
    with pytest.raises(ValueError, match="trainable scope"):
        scope_names(build_model("tiny"), bad)


def test_opacus_per_sample_gradients_of_adapters_are_exact():
    torch.manual_seed(0)
    model = build_for_scope("tiny", "lora-2")
    _randomize_adapters(model)
    names = set(scope_names(model, "lora-2", tasks=("cancer_risk",)))
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)
    assert ModuleValidator.validate(model, strict=False) == []
    inputs = tiny_batch(model, batch=3)
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    out = gsm(**inputs, tasks=("cancer_risk",)).logits["cancer_risk"]
    out.sum().backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    gsm.disable_hooks()
    one = {k: v[1:2] for k, v in inputs.items()}
    single = model(**one, tasks=("cancer_risk",)).logits["cancer_risk"].sum()
    grads = torch.autograd.grad(single, [p for _, p in params])
    for (name, p), g in zip(params, grads, strict=True):
        assert p.grad_sample is not None, name
        torch.testing.assert_close(p.grad_sample[1], g, atol=1e-5, rtol=1e-4)
