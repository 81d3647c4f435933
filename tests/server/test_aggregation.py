"""Tests for server.aggregation and server.central_dp: task-aware combining, DP, state."""

import logging

import numpy as np
import pytest
import torch
from scipy import stats

from client.scope import param_group
from server import combine
from server.aggregation import TaskAwareAggregator
from server.central_dp import (
    RDP_ORDERS,
    OpacusRdpAccountant,
    central_dp_noise,
    make_central_dp,
)
from server.checkpoint import RunCheckpointer
from server.combine import robust_combine, weighted_mean
from server.transfer import decode_array, npy_view
from server.validation import ValidatedReply, expected_from_state, validate_reply

from .agg_fixtures import reply_arrays, reply_metrics, tiny_global


@pytest.fixture(scope="module")
def glob():
    torch.set_num_threads(1)
    return tiny_global()


def _reply(glob, site, tasks, *, trunk=20, head=10, seed=1, scale=1e-3):
    arrays = reply_arrays(glob, tasks, seed=seed, scale=scale)
    metrics = reply_metrics(tasks, trunk=trunk, head=head)
    out = validate_reply(
        arrays,
        metrics,
        expected_from_state(glob),
        glob,
        max_update_norm=None,
        site=site,
    )
    assert isinstance(out, ValidatedReply)
    return out


def _names(glob, group):
    return [n for n in glob if param_group(n) == group]


def test_masked_heads_are_averaged_only_over_their_sites(glob):
    # Prepare: A trains cancer_risk, B trains heart; nobody trains covid19
    a = _reply(glob, "A", ("cancer_risk",), trunk=30, head=12, seed=1)
    b = _reply(glob, "B", ("heart",), trunk=10, head=5, seed=2)
    # Execute
    res = TaskAwareAggregator("fedavg").aggregate(glob, [a, b])
    # Assert
    assert res.applied and res.reason == ""
    assert res.updated_by == {
        "heads.cancer_risk": ("A",),
        "heads.heart": ("B",),
        "trunk": ("A", "B"),
    }
    assert res.total_weight == {
        "heads.cancer_risk": 12.0,
        "heads.heart": 5.0,
        "trunk": 40.0,
    }
    for n in _names(glob, "heads.cancer_risk"):
        assert torch.equal(res.state[n], a.groups["heads.cancer_risk"][n])
    for n in _names(glob, "heads.heart"):
        assert torch.equal(res.state[n], b.groups["heads.heart"][n])
    for n in _names(glob, "heads.covid19"):
        assert res.state[n] is glob[n]
    for n in _names(glob, "trunk"):
        ref = (
            0.75 * a.groups["trunk"][n].double() + 0.25 * b.groups["trunk"][n].double()
        )
        torch.testing.assert_close(res.state[n].double(), ref, rtol=1e-6, atol=1e-7)
    assert set(res.state) == set(glob)


def test_weighted_mean_equals_float64_reference():
    # Prepare: K=4 read-only inputs straight from .npy bytes, one of them float16
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(100_003).astype(np.float32) * (i + 1) for i in range(4)]
    xs[3] = xs[3].astype(np.float16)
    counts = np.array([5.0, 17.0, 3.0, 11.0])
    views = [npy_view(_npy_bytes(x)) for x in xs]
    tensors = [decode_array("x", v, v.dtype.name) for v in views]
    # Execute
    out = weighted_mean(tensors, list(counts / counts.sum()))
    # Assert
    ref = sum(
        w * x.astype(np.float64) for w, x in zip(counts / counts.sum(), xs, strict=True)
    )
    err = np.linalg.norm(out.numpy() - ref) / np.linalg.norm(ref)
    assert out.dtype == torch.float32 and err < 1e-6
    np.testing.assert_allclose(
        out.numpy(), ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max()
    )


@pytest.mark.parametrize("with_base", [False, True])
def test_sliced_accumulation_into_out(monkeypatch, with_base):
    # Prepare: slices smaller than the arrays; the base term may be the output itself
    monkeypatch.setattr(combine, "_SLICE", 1000)
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((33, 97)).astype(np.float32) for _ in range(3)]
    g = rng.standard_normal((33, 97)).astype(np.float32)
    alphas = [0.2, 0.3, 0.1]
    out = torch.from_numpy(g.copy())
    base = out if with_base else None
    # Execute
    res = weighted_mean(
        [torch.from_numpy(x) for x in xs], alphas, base=base, base_coef=0.4, out=out
    )
    # Assert
    ref = sum(a * x.astype(np.float64) for a, x in zip(alphas, xs, strict=True))
    ref = ref + (0.4 * g if with_base else 0.0)
    assert res is out
    np.testing.assert_allclose(res.numpy(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["fedavg", "fedadam", "median", "trimmed-mean"])
def test_in_place_equals_fresh_memory(glob, method):
    # Prepare
    replies = [
        _reply(glob, s, ("heart",), seed=i, scale=1e-2) for i, s in enumerate("ABC")
    ]
    mine = {k: v.clone() for k, v in glob.items()}
    # Execute
    fresh = TaskAwareAggregator(method).aggregate(glob, replies)
    inplace = TaskAwareAggregator(method, in_place=True).aggregate(mine, replies)
    # Assert
    for k in glob:
        assert torch.equal(fresh.state[k], inplace.state[k]), k
        assert inplace.state[k] is mine[k]
    updated = _names(glob, "trunk")[0]
    assert not torch.equal(mine[updated], glob[updated])


def test_in_place_skips_a_global_that_a_reply_shares(glob):
    # A reply whose array is the global tensor itself must not be overwritten mid-read.
    mine = {k: v.clone() for k, v in glob.items()}
    a = _reply(mine, "A", ("heart",), seed=1)
    n = _names(glob, "trunk")[0]
    b = ValidatedReply("B", {"trunk": {**a.groups["trunk"], n: mine[n]}}, {"trunk": 20})
    res = TaskAwareAggregator("fedavg", in_place=True).aggregate(mine, [a, b])
    ref = (a.groups["trunk"][n] + glob[n]) / 2
    torch.testing.assert_close(res.state[n], ref)
    assert res.state[n] is not mine[n]


def _npy_bytes(x):
    import io

    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


@pytest.mark.parametrize("k", [4, 5])
def test_robust_methods_match_numpy(monkeypatch, k):
    # Prepare: small slices so the chunked loop crosses boundaries
    monkeypatch.setattr(combine, "_CHUNK", 1000)
    rng = np.random.default_rng(k)
    xs = [rng.standard_normal((37, 101)).astype(np.float32) for _ in range(k)]
    tensors = [torch.from_numpy(x) for x in xs]
    # Execute
    med = robust_combine(tensors, "median")
    trim = robust_combine(tensors, "trimmed-mean", 0.25)
    # Assert
    np.testing.assert_allclose(med.numpy(), np.median(np.stack(xs), axis=0), rtol=1e-6)
    ref = stats.trim_mean(np.stack(xs), 0.25, axis=0)
    np.testing.assert_allclose(trim.numpy(), ref, rtol=1e-5, atol=1e-6)


def test_median_aggregator_per_group(glob):
    replies = [_reply(glob, s, ("heart",), seed=i) for i, s in enumerate("ABC")]
    replies.append(_reply(glob, "D", ("cancer_risk",), seed=9))
    res = TaskAwareAggregator("median").aggregate(glob, replies)
    n = _names(glob, "heads.heart")[0]
    ref = np.median(
        np.stack([r.groups["heads.heart"][n].numpy() for r in replies[:3]]), axis=0
    )
    np.testing.assert_allclose(res.state[n].numpy(), ref, rtol=1e-6)
    n = _names(glob, "trunk")[0]
    ref = np.median(np.stack([r.groups["trunk"][n].numpy() for r in replies]), axis=0)
    np.testing.assert_allclose(res.state[n].numpy(), ref, rtol=1e-6)


@pytest.mark.parametrize("min_sites", [1, 3])
def test_empty_or_too_few_replies_leave_the_model_unchanged(glob, min_sites, caplog):
    agg = TaskAwareAggregator("fedavg", min_sites=min_sites)
    replies = (
        []
        if min_sites == 1
        else [_reply(glob, "A", ("heart",)), _reply(glob, "B", ("heart",))]
    )
    with caplog.at_level(logging.WARNING):
        res = agg.aggregate(glob, replies)
    assert not res.applied
    assert (
        "no valid replies" if not replies else "fewer than min_sites=3"
    ) in res.reason
    assert all(res.state[n] is glob[n] for n in glob)
    assert res.updated_by == {}
    assert "not applied" in caplog.text


def test_fedadam_moves_toward_the_average_and_state_round_trips(glob, tmp_path):
    # Prepare
    a = _reply(glob, "A", ("heart",), seed=3, scale=1e-2)
    b = _reply(glob, "B", ("heart",), seed=4, scale=1e-2)
    agg = TaskAwareAggregator("fedadam", server_lr=1e-3, tau=1e-4)
    # Execute: round 1
    res = agg.aggregate(glob, [a, b])
    # Assert: the first Adam step is lr * d / (|d| + tau) toward the average
    n = _names(glob, "trunk")[0]
    avg = (a.groups["trunk"][n] + b.groups["trunk"][n]) / 2
    d = avg - glob[n]
    moved = res.state[n] - glob[n]
    torch.testing.assert_close(moved, 1e-3 * d / (d.abs() + 1e-4), rtol=1e-3, atol=1e-7)
    assert bool(((moved * d) >= 0).all())
    # Execute: checkpoint the strategy state, restore into a fresh aggregator
    ckpt = RunCheckpointer(tmp_path)
    ckpt.save(1, res.state, agg.state_dict(), [], {"aggregation": "fedadam"})
    restored = TaskAwareAggregator("fedadam", server_lr=1e-3, tau=1e-4)
    restored.load_state_dict(ckpt.load_latest().strategy_state)
    state1 = res.state
    a2 = _reply(state1, "A", ("heart",), seed=5, scale=1e-2)
    r1, r2 = agg.aggregate(state1, [a2]), restored.aggregate(state1, [a2])
    # Assert: identical second rounds
    assert all(torch.equal(r1.state[k], r2.state[k]) for k in state1)
    assert agg.state_dict()["optimizer"]["step.trunk"] == 2
    assert "step.heads.covid19" not in agg.state_dict()["optimizer"]


def test_fedadam_state_refuses_another_method():
    agg = TaskAwareAggregator("fedadam")
    with pytest.raises(ValueError, match="fedadam"):
        TaskAwareAggregator("fedavg").load_state_dict(agg.state_dict())


def test_bad_settings_are_refused():
    dp = make_central_dp(
        1.0, 1.0, population_size=3, target_delta=1e-5, max_epsilon=None
    )
    with pytest.raises(ValueError, match="not one of"):
        TaskAwareAggregator("krum")
    with pytest.raises(ValueError, match="central DP"):
        TaskAwareAggregator("median", central_dp=dp)
    with pytest.raises(ValueError, match="trim_fraction"):
        TaskAwareAggregator("trimmed-mean", trim_fraction=0.5)
    assert TaskAwareAggregator("fedprox").method == "fedavg"


def _dp(z=1.0, clip=1.0, max_eps=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return make_central_dp(
        clip,
        z,
        population_size=4,
        target_delta=1e-5,
        max_epsilon=max_eps,
        generator=gen,
    )


@pytest.mark.filterwarnings("ignore:Optimal order is the smallest alpha")
def test_central_dp_clips_each_site_update(glob):
    # Prepare: site A's update is large (clipped), B's small (kept); almost no noise
    a = _reply(glob, "A", ("heart",), seed=1, scale=1.0)
    b = _reply(glob, "B", ("heart",), seed=2, scale=1e-4)
    clip = 1.0
    assert a.update_norm > 10 * clip and b.update_norm < clip
    agg = TaskAwareAggregator("fedavg", central_dp=_dp(z=1e-9, clip=clip))
    # Execute
    res = agg.aggregate(glob, [a, b])
    # Assert: mean of g + s_i u_i, uniform over the 2 sites (counts ignored under DP)
    s_a = clip / a.update_norm
    for n in _names(glob, "trunk")[:5] + _names(glob, "heads.heart"):
        g = glob[n].double()
        ref = (
            g + (s_a * (a.arrays()[n].double() - g) + (b.arrays()[n].double() - g)) / 2
        )
        torch.testing.assert_close(res.state[n].double(), ref, rtol=1e-5, atol=1e-6)
    assert res.noise_std["trunk"] == pytest.approx(1e-9 / 2)
    assert res.epsilon is not None and res.epsilon > 0


def test_central_dp_noise_scale_matches_sigma(glob):
    # Prepare: three sites return the global trunk unchanged; one trains heart
    replies = [_reply(glob, s, (), scale=0.0) for s in "ABC"]
    replies.append(_reply(glob, "D", ("heart",), scale=0.0))
    agg = TaskAwareAggregator("fedavg", central_dp=_dp(z=1.3, clip=2.0))
    # Execute
    res = agg.aggregate(glob, replies)
    # Assert: empirical std over many coordinates close to z C / n_g
    trunk = torch.cat(
        [(res.state[n] - glob[n]).reshape(-1) for n in _names(glob, "trunk")]
    )
    assert trunk.numel() > 100_000
    assert float(trunk.std()) == pytest.approx(1.3 * 2.0 / 4, rel=0.02)
    assert res.noise_std == {
        "trunk": pytest.approx(0.65),
        "heads.heart": pytest.approx(2.6),
    }
    x = torch.zeros(200_000)
    stds = central_dp_noise(
        {"heads.heart.w": x}, 2.0, 1.3, 1, torch.Generator().manual_seed(1)
    )
    assert float(x.std()) == pytest.approx(2.6, rel=0.02) and stds == {
        "heads.heart": pytest.approx(2.6)
    }


def test_central_dp_budget_refuses_a_round_and_persists(glob, tmp_path):
    # Prepare: eps after 1 release at z=1, delta=1e-5 is 4.73; after 2: 7.08; 3: 9.01
    agg = TaskAwareAggregator("fedavg", central_dp=_dp(z=1.0, max_eps=8.0))
    replies = [_reply(glob, s, ("heart",), scale=1e-4) for s in "AB"]
    eps = [agg.aggregate(glob, replies).epsilon for _ in range(2)]
    # Execute
    refused = agg.aggregate(glob, replies)
    # Assert
    assert eps == [pytest.approx(4.7285, abs=1e-3), pytest.approx(7.0774, abs=1e-3)]
    assert not refused.applied and "would exceed max epsilon 8.0" in refused.reason
    assert all(refused.state[n] is glob[n] for n in glob)
    ckpt = RunCheckpointer(tmp_path)
    ckpt.save(2, glob, agg.state_dict(), [], {"central-dp": True})
    again = TaskAwareAggregator("fedavg", central_dp=_dp(z=1.0, max_eps=8.0))
    again.load_state_dict(ckpt.load_latest().strategy_state)
    assert again.central_dp.epsilon() == pytest.approx(eps[-1])
    assert not again.aggregate(glob, replies).applied


def test_accountant_fallback_is_opacus_without_dp_accounting():
    import importlib.util

    dp = _dp()
    if importlib.util.find_spec("dp_accounting") is None:
        assert isinstance(dp.accountant, OpacusRdpAccountant)
    acc = OpacusRdpAccountant(dp.accountant.config)
    event_eps = []
    from flwr.serverapp import GaussianPrivacyEvent

    for _ in range(3):
        acc.compose(GaussianPrivacyEvent(1.0, 3, 4))
        event_eps.append(acc.get_epsilon(1e-5))
    assert event_eps == pytest.approx([4.7285, 7.0774, 9.0100], abs=1e-3)
    assert acc.get_delta(event_eps[-1]) == pytest.approx(1e-5, rel=1e-6)
    assert acc.get_privacy_spent().num_releases == 3
    from opacus.accountants import RDPAccountant

    assert list(RDP_ORDERS) == [float(a) for a in RDPAccountant.DEFAULT_ALPHAS]


def test_flower_accountant_reads_our_state():
    pytest.importorskip("dp_accounting")
    from flwr.serverapp import GaussianPrivacyEvent, RdpAccountant

    ours = OpacusRdpAccountant(_dp().accountant.config)
    ours.compose(GaussianPrivacyEvent(1.0, 3, 4), count=2)
    flower = RdpAccountant(ours.config)
    flower.load_state_dict(ours.state_dict())
    assert flower.get_epsilon(1e-5) == pytest.approx(ours.get_epsilon(1e-5), rel=1e-6)


def test_more_sites_than_population_is_accounted_not_refused(glob, caplog):
    gen = torch.Generator().manual_seed(0)
    dp = make_central_dp(
        1.0, 1.0, population_size=2, target_delta=1e-5, max_epsilon=None, generator=gen
    )
    replies = [_reply(glob, s, ("heart",), scale=1e-4) for s in "ABC"]
    with caplog.at_level(logging.WARNING):
        res = TaskAwareAggregator("fedavg", central_dp=dp).aggregate(glob, replies)
    assert res.applied and res.epsilon == pytest.approx(4.7285, abs=1e-3)
    assert "population_size is 2" in caplog.text
