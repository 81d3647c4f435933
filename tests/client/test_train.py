"""Tests of the local trainer: learning, DP-SGD mechanics, scopes, ledger, refusals."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from client.cache import ExamCache
from client.local_step import PlainStepper, PrivateStepper, per_example_loss
from client.privacy_ledger import PrivacyLedger, plan_noise_multiplier
from client.scope import scope_names, set_trainable
from client.site_dataset import SiteDataset, build_site_dataset, collate_parts
from client.train import (
    TrainConfig,
    TrainStatus,
    predict_split,
    sample_rate,
    train_one_round,
    trainable_names,
)
from m3fm_model import build_model
from m3fm_model.config import preset_config
from m3fm_model.losses import multitask_loss
from m3fm_model.tasks import TASKS
from tests.client.site_fixtures import prepared_site

torch.set_num_threads(1)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return prepared_site(tmp_path_factory)


@pytest.fixture(scope="module")
def data(site):
    return build_site_dataset(site, "tiny", "train")


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("tiny")


def _cfg(**overrides) -> TrainConfig:
    base = dict(lr=1e-3, local_steps=2, batch_size=8, rounds_left=5, device="cpu")
    return TrainConfig(**(base | overrides))


def _ledger(tmp_path, epsilon: float = 8.0) -> PrivacyLedger:
    return PrivacyLedger(
        tmp_path / "privacy_ledger.json", epsilon_budget=epsilon, delta=1e-5
    )


def _params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _changed(model, before) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}


def _eval_loss(model, data) -> float:
    view = data.with_options(augment=False)
    parts = collate_parts([view[i] for i in range(len(view))])
    with torch.no_grad():
        losses = [
            per_example_loss(model(**p.model_inputs(), tasks=p.tasks).logits, p)
            for p in parts
        ]
    return float(torch.cat(losses).mean())


def _stepper(model, data, **cfg) -> PrivateStepper:
    set_trainable(model, trainable_names(model, "all", data))
    model.train()
    return PrivateStepper(
        model,
        data,
        _cfg(**cfg),
        CPU,
        noise_multiplier=1.0,
        sample_rate=0.2,
        generator=torch.Generator().manual_seed(0),
    )


def test_loss_decreases_over_30_plain_steps(data):
    model = _model()
    before = _eval_loss(model, data)
    result = train_one_round(
        model, data, _cfg(dp=False, local_steps=30), None, run_id="r", server_round=1
    )
    after = _eval_loss(model, data)
    assert result.status is TrainStatus.OK
    assert after < 0.8 * before
    assert "epsilon" not in result.metrics and result.metrics["steps"] == 30
    assert result.metrics["train-loss"] > 0


def test_dp_per_sample_gradients_are_exact_clipped_and_noised(data):
    # Prepare: examples of both crop sizes and without CT, one private stepper.
    model = _model()
    view = data.with_options(modality_dropout=0.0)
    tasks = [t for _, t in view.entries]
    picks = [tasks.index(t) for t in ("heart", "cancer_risk", "clinical_number")]
    examples = [view[i] for i in picks + [picks[1] + 1]]
    stepper = _stepper(model, view, max_grad_norm=0.5)
    parts = collate_parts(examples)
    assert len(parts) == 3
    # Execute
    stepper.gather_grad_samples(parts)
    samples = [p.grad_sample.clone() for p in stepper.params]
    # Assert: row i is the gradient of example i's own loss (zero where unreached).
    stepper.module.disable_hooks()
    by_index = {e.index: e for e in examples}  # the same draws (question wording)
    rows = [int(i) for part in parts for i in part.indices]
    for row, index in enumerate(rows):
        one = collate_parts([by_index[index]])[0]
        out = model(**one.model_inputs(), tasks=one.tasks)
        grads = torch.autograd.grad(
            per_example_loss(out.logits, one).sum(), stepper.params, allow_unused=True
        )
        for g, sample in zip(grads, samples, strict=True):
            expected = torch.zeros_like(sample[row]) if g is None else g
            torch.testing.assert_close(sample[row], expected, atol=1e-6, rtol=1e-4)
    stepper.module.enable_hooks()
    # Clipping: Opacus' sum equals sum_i min(1, C / |g_i|) g_i, computed by hand.
    flat = torch.cat([s.reshape(len(rows), -1) for s in samples], dim=1)
    norms = flat.norm(dim=1)
    assert (norms > 0.5).any()
    stepper.optimizer.clip_and_accumulate()
    factor = (0.5 / (norms + 1e-6)).clamp(max=1.0)
    for p, sample in zip(stepper.params, samples, strict=True):
        expected = torch.einsum("i,i...->...", factor, sample)
        torch.testing.assert_close(p.summed_grad, expected, atol=1e-6, rtol=1e-5)
    # Noise: Gaussian with std sigma * C on every coordinate.
    stepper.optimizer.add_noise()
    noise = torch.cat([(p.grad - p.summed_grad).flatten() for p in stepper.params])
    assert noise.std().item() == pytest.approx(1.0 * 0.5, rel=0.02)
    stepper.close()
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())
    assert not any(hasattr(m, "activations") for m in model.modules())


def test_empty_poisson_batch_is_a_noise_only_step(data):
    model = _model()
    stepper = _stepper(model, data)
    before = _params(model)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    stepper.step([])  # zero loss: nothing sampled
    stepper.close()
    assert _changed(model, before) == trained


def test_only_the_scope_trains_and_travels(data, tmp_path):
    model = _model()
    before = _params(model)
    cfg = _cfg(scope="fusion-and-heads", local_steps=2)
    result = train_one_round(
        model, data, cfg, _ledger(tmp_path), run_id="r", server_round=1
    )
    expected = scope_names(model, "fusion-and-heads", tasks=data.tasks)
    assert result.status is TrainStatus.OK
    assert sorted(result.arrays) == sorted(expected)
    assert _changed(model, before) == set(expected)  # DP noise moves every one
    for name, value in result.arrays.items():
        assert value.device.type == "cpu"
        assert torch.equal(value, dict(model.named_parameters())[name].detach())
    groups = {"trunk": len(data)} | {
        f"heads.{t}": n for t, n in data.task_counts.items()
    }
    assert result.counts == groups and result.num_examples == len(data)
    assert {"train-loss", "steps", "sample-rate", "seconds"} <= set(result.metrics)
    task_losses = {k for k in result.metrics if k.startswith("loss.")}
    assert task_losses and task_losses <= {f"loss.{t}" for t in data.tasks}


def test_unlabelled_heads_and_unused_tokenizer_stay_fixed(site, data):
    # Prepare: a site that labels only cancer risk (lung crop), no auxiliary task.
    only_risk = SiteDataset(
        data.exams,
        cache=ExamCache(site.cache_dir / "crops"),
        model_config=preset_config("tiny"),
        tasks=("cancer_risk",),
        tokenizer=data.tokenizer,
        auxiliary=False,
    )
    model = _model()
    before = _params(model)
    # Execute
    result = train_one_round(
        model,
        only_risk,
        _cfg(dp=False, local_steps=3),
        None,
        run_id="r",
        server_round=1,
    )
    # Assert
    changed = _changed(model, before)
    heart_tokenizer = {
        n for n in before if n.startswith("ct_encoder.tokenizers.32x48x48")
    }
    other_heads = {
        n for n in before if n.startswith("heads.") and ".cancer_risk." not in n
    }
    assert heart_tokenizer and not changed & (heart_tokenizer | other_heads)
    assert heart_tokenizer <= set(result.arrays)  # frozen but travels: trunk complete
    assert not other_heads & set(result.arrays)
    assert any(n.startswith("ct_encoder.blocks.") for n in changed)
    risk_exams = sum("cancer_risk" in (e.get("labels") or {}) for e in data.exams)
    assert result.counts == {"trunk": risk_exams, "heads.cancer_risk": risk_exams}


def test_refused_round_returns_no_arrays_and_writes_nothing(data, tmp_path):
    ledger = _ledger(tmp_path, epsilon=0.05)  # below the RDP floor: nothing fits
    file = tmp_path / "privacy_ledger.json"
    before_file, before = file.read_bytes(), _params(_model())
    model = _model()
    result = train_one_round(
        model, data, _cfg(epsilon_budget=0.05), ledger, run_id="r", server_round=3
    )
    assert result.status is TrainStatus.BUDGET_EXHAUSTED == 1
    assert result.arrays == {} and result.counts == {}
    assert result.metrics["epsilon"] == 0.0
    assert file.read_bytes() == before_file and ledger.releases == ()
    assert _changed(model, before) == set()


def test_reported_epsilon_is_the_ledgers(data, tmp_path):
    model = _model()
    cfg = _cfg(local_steps=2, rounds_left=3)
    rate = sample_rate(len(data), cfg.batch_size)
    planned = plan_noise_multiplier(_ledger(tmp_path / "dry"), rate, 2, 3, 8.0, 1e-5)
    first = train_one_round(
        model, data, cfg, _ledger(tmp_path), run_id="r", server_round=1
    )
    reopened = _ledger(tmp_path)
    (release,) = reopened.releases
    assert first.metrics["epsilon"] == reopened.spent()[0] > 0
    assert first.metrics["delta"] == 1e-5
    assert release.noise_multiplier == first.metrics["noise-multiplier"] == planned
    assert release.sample_rate == first.metrics["sample-rate"] == rate
    assert release.steps == 2 and release.server_round == 1
    second = train_one_round(
        model,
        data,
        dataclasses.replace(cfg, rounds_left=2),
        reopened,
        run_id="r",
        server_round=2,
    )
    assert second.metrics["epsilon"] == _ledger(tmp_path).spent()[0]
    assert first.metrics["epsilon"] < second.metrics["epsilon"] <= 8.0


def test_no_usable_data_returns_status_2(data, tmp_path):
    empty = SiteDataset(
        [],
        cache=ExamCache(tmp_path / "crops"),
        model_config=preset_config("tiny"),
        tasks=("heart",),
        tokenizer=data.tokenizer,
    )
    ledger = _ledger(tmp_path)
    result = train_one_round(
        _model(), empty, _cfg(), ledger, run_id="r", server_round=1
    )
    assert result.status is TrainStatus.NO_DATA and result.arrays == {}
    assert ledger.releases == ()


def test_fedprox_pulls_towards_the_global_weights(data):
    distances = []
    for mu in (0.0, 100.0):
        model = _model()
        start = _params(model)
        cfg = _cfg(dp=False, scope="heads", lr=1e-2, local_steps=8, proximal_mu=mu)
        train_one_round(model, data, cfg, None, run_id="r", server_round=1)
        distances.append(
            sum((p - start[n]).norm() ** 2 for n, p in model.named_parameters()) ** 0.5
        )
    assert distances[1] < 0.5 * distances[0]


def test_routing_loss_only_when_the_text_encoder_trains(data):
    model = _model()
    for scope, expected in (("heads", False), ("all", True)):
        set_trainable(model, scope_names(model, scope, tasks=data.tasks))
        stepper = PlainStepper(model, data, _cfg(scope=scope), CPU, torch.Generator())
        assert (stepper.router is not None) is expected
    off = PlainStepper(model, data, _cfg(routing_weight=0.0), CPU, torch.Generator())
    assert off.router is None


def test_privacy_settings_come_from_the_site(site):
    cfg = TrainConfig.for_site(site, scope="heads", lr=1e-3)
    assert cfg.dp is site.privacy.enabled is True
    assert (cfg.epsilon_budget, cfg.delta) == (site.privacy.epsilon, site.privacy.delta)
    with pytest.raises(ValueError, match="site config"):
        TrainConfig.for_site(site, dp=False)
    with pytest.raises(ValueError, match="grad_sample_mode"):
        _cfg(grad_sample_mode="ghost")


def test_per_example_loss_matches_multitask_loss_per_task(data):
    model = _model()
    view = data.with_options(augment=False)
    for task in ("nodule_size", "emphysema", "clinical_number"):
        rows = [i for i, (_, t) in enumerate(view.entries) if t == task]
        (part,) = collate_parts([view[i] for i in rows])
        with torch.no_grad():
            logits = model(**part.model_inputs(), tasks=part.tasks).logits
        kinds = {task: TASKS[task].answer_kind}
        total, _ = multitask_loss(logits, part.targets, kinds)
        torch.testing.assert_close(per_example_loss(logits, part).mean(), total)


def test_predict_split_gives_outputs_and_targets_per_task(data):
    model = _model()
    model.train()
    predictions = predict_split(model, data, "cpu", batch_size=5)
    assert model.training
    assert set(predictions) == set(data.tasks)
    for task, (outputs, targets) in predictions.items():
        n = data.task_counts[task]
        assert outputs.shape == (n, TASKS[task].num_outputs - (task == "cancer_risk"))
        if task == "cancer_risk":
            assert targets["targets"].shape == targets["observed"].shape == (n, 6)
            assert targets["observed"].any(axis=1).all()
        elif task == "clinical_number":
            assert targets["digits"].shape == (n, 3)
        else:
            assert targets["target"].shape == (n,) and (targets["target"] >= 0).all()
