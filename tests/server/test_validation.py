"""Tests for server.validation: every rejection reason, refusals, grouping, no echo."""

import math

import numpy as np
import pytest
import torch

from server import validation as v
from server.transfer import encode_state
from server.validation import (
    Rejection,
    ValidatedReply,
    expected_from_state,
    train_metric_patterns,
    validate_reply,
)

from .agg_fixtures import TASKS, reply_arrays, reply_metrics, tiny_global

SECRET = "SECRET_site_text"


@pytest.fixture(scope="module")
def glob():
    torch.set_num_threads(1)
    return tiny_global()


def _validate(glob, arrays, metrics, **kw):
    kw.setdefault("max_update_norm", 1e3)
    return validate_reply(arrays, metrics, expected_from_state(glob), glob, **kw)


def test_valid_reply_is_grouped_with_counts(glob):
    # Prepare
    arrays = reply_arrays(glob, ("cancer_risk",))
    metrics = reply_metrics(("cancer_risk",), trunk=20, head=7)
    # Execute
    out = _validate(glob, arrays, metrics, site="A")
    # Assert
    assert isinstance(out, ValidatedReply)
    assert set(out.groups) == {"trunk", "heads.cancer_risk"}
    assert out.counts == {"trunk": 20, "heads.cancer_risk": 7}
    assert out.site == "A"
    assert set(out.arrays()) == set(arrays)
    ref = math.sqrt(
        sum(
            float(((arrays[n] - glob[n].numpy()).astype(np.float64) ** 2).sum())
            for n in arrays
        )
    )
    assert out.update_norm == pytest.approx(ref, rel=1e-5)
    name = next(iter(arrays))
    assert np.shares_memory(out.arrays()[name].numpy(), arrays[name])


def _first(arrays, group="trunk"):
    from client.scope import param_group

    return next(n for n in arrays if param_group(n) == group)


def _mutations(glob):
    """code -> function(arrays, metrics) that breaks one thing."""

    def unknown(a, m):
        a[SECRET] = np.zeros(3, np.float32)

    def shape(a, m):
        n = _first(a)
        a[n] = (
            a[n].reshape(-1)[:-1].copy() if a[n].size > 1 else np.zeros(2, np.float32)
        )

    def dtype(a, m):
        n = _first(a)
        a[n] = a[n].astype(np.float64)

    def big_endian(a, m):
        n = _first(a)
        a[n] = a[n].astype(">f4")

    def nan(a, m):
        n = _first(a, "heads.cancer_risk")
        a[n] = a[n].copy()
        a[n].reshape(-1)[0] = np.nan

    def inf(a, m):
        n = _first(a)
        a[n] = a[n].copy()
        a[n].reshape(-1)[-1] = -np.inf

    def norm(a, m):
        n = _first(a)
        a[n] = a[n] + 100.0

    return {
        v.UNKNOWN_ARRAY: unknown,
        v.SHAPE: shape,
        v.DTYPE: dtype,
        v.DTYPE + ":byteorder": big_endian,
        v.NON_FINITE: nan,
        v.NON_FINITE + ":inf": inf,
        v.UPDATE_NORM: norm,
        v.METRIC_KEY: lambda a, m: m.update({SECRET: 1}),
        v.METRIC_VALUE: lambda a, m: m.update({"train-loss": SECRET}),
        v.METRIC_VALUE + ":nan": lambda a, m: m.update({"seconds": float("nan")}),
        v.METRIC_VALUE + ":bool": lambda a, m: m.update({"steps": True}),
        v.METRIC_VALUE + ":list": lambda a, m: m.update({"steps": [1, SECRET]}),
        v.METRIC_VALUE + ":status": lambda a, m: m.update({"status": 9}),
        v.MISSING_STATUS: lambda a, m: m.pop("status"),
        v.MISSING_COUNT: lambda a, m: m.pop("count.trunk"),
        v.HEAD_WITHOUT_COUNT: lambda a, m: m.pop("count.heads.cancer_risk"),
        v.BAD_COUNT: lambda a, m: m.update({"count.trunk": 0}),
        v.BAD_COUNT + ":neg": lambda a, m: m.update({"count.heads.cancer_risk": -4}),
        v.BAD_COUNT + ":frac": lambda a, m: m.update({"count.trunk": 2.5}),
        v.INCOMPLETE_GROUP: lambda a, m: a.pop(_first(a)),
        v.NO_ARRAYS: lambda a, m: a.clear(),
    }


@pytest.mark.parametrize("case", sorted(_mutations({})))
def test_each_rejection_reason(glob, case):
    # Prepare
    arrays = reply_arrays(glob, ("cancer_risk",))
    metrics = reply_metrics(("cancer_risk",))
    _mutations(glob)[case](arrays, metrics)
    # Execute
    out = _validate(glob, arrays, metrics, max_update_norm=5.0)
    # Assert
    assert isinstance(out, Rejection)
    assert out.code == case.split(":")[0]
    assert not out.refusal
    assert SECRET not in out.message


def test_refusal_is_counted_not_an_error(glob):
    metrics = {"status": 1, "num-examples": 0}
    out = _validate(glob, None, metrics)
    assert isinstance(out, Rejection)
    assert out.refusal and out.code == v.REFUSED and out.status == 1


def test_refusal_with_foreign_keys_is_still_rejected_for_keys(glob):
    out = _validate(glob, None, {"status": 2, SECRET: 1})
    assert isinstance(out, Rejection) and out.code == v.METRIC_KEY


def test_counts_for_groups_not_returned_are_ignored(glob):
    arrays = reply_arrays(glob, ("heart",))
    metrics = reply_metrics(("heart", "covid19"))
    out = _validate(glob, arrays, metrics)
    assert isinstance(out, ValidatedReply)
    assert set(out.counts) == {"trunk", "heads.heart"}


def test_heads_only_reply_without_trunk_is_valid(glob):
    arrays = {
        k: a
        for k, a in reply_arrays(glob, ("covid19",)).items()
        if k.startswith("heads.")
    }
    metrics = {"status": 0, "count.heads.covid19": 5}
    out = _validate(glob, arrays, metrics)
    assert isinstance(out, ValidatedReply) and set(out.groups) == {"heads.covid19"}


def test_restricted_task_patterns_reject_unknown_task(glob):
    arrays = reply_arrays(glob, ("heart",))
    metrics = reply_metrics(("heart",))
    metrics["loss.not_a_task"] = 0.1
    pats = train_metric_patterns(TASKS)
    out = _validate(glob, arrays, metrics, allowed_metric_patterns=pats)
    assert isinstance(out, Rejection) and out.code == v.METRIC_KEY
    del metrics["loss.not_a_task"]
    assert isinstance(
        _validate(glob, arrays, metrics, allowed_metric_patterns=pats), ValidatedReply
    )


def test_no_bound_accepts_large_update(glob):
    arrays = {k: a + 50.0 for k, a in reply_arrays(glob, ("heart",)).items()}
    out = _validate(glob, arrays, reply_metrics(("heart",)), max_update_norm=None)
    assert isinstance(out, ValidatedReply) and out.update_norm > 50.0


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_half_precision_replies(glob, half):
    # Prepare: a reply encoded for half-precision transfer
    arrays = reply_arrays(glob, ("heart",))
    wire = encode_state({k: torch.from_numpy(a) for k, a in arrays.items()}, half)
    metrics = reply_metrics(("heart",))
    # Execute
    ok = _validate(glob, wire, metrics, half=half)
    wrong = _validate(glob, arrays, metrics, half=half)
    # Assert
    assert isinstance(ok, ValidatedReply)
    assert all(t.dtype == getattr(torch, half) for t in ok.arrays().values())
    assert isinstance(wrong, Rejection) and wrong.code == v.DTYPE


def test_non_finite_half_reply_is_rejected(glob):
    arrays = reply_arrays(glob, ("heart",))
    wire = encode_state({k: torch.from_numpy(a) for k, a in arrays.items()}, "float16")
    n = _first(wire)
    wire[n] = wire[n].copy()
    wire[n].reshape(-1)[0] = np.inf
    out = _validate(glob, wire, reply_metrics(("heart",)), half="float16")
    assert isinstance(out, Rejection) and out.code == v.NON_FINITE


@pytest.mark.parametrize(
    ("records", "site_keys", "ok"),
    [
        ({"arrays": "array", "metrics": "metric", "site": "config"}, ["name"], True),
        ({"metrics": "metric", "site": "config"}, ["name"], True),
        ({"metrics": "metric", "site": "config", SECRET: "config"}, ["name"], False),
        (
            {"metrics": "metric", "arrays": "config"},
            [],
            False,
        ),  # right name, wrong kind
        ({"metrics": "metric", "site": "config"}, ["name", SECRET], False),
    ],
)
def test_reply_records_outside_the_layout_are_rejected(records, site_keys, ok):
    out = v.check_reply_records(records, site_keys)
    assert (out is None) == ok
    if not ok:
        assert out.code == v.RECORD_LAYOUT and SECRET not in out.message


def test_evaluate_reply_may_not_carry_arrays():
    records = {"metrics": "metric", "site": "config", "arrays": "array"}
    out = v.check_reply_records(records, ["name"], v.EVALUATE_REPLY_RECORDS)
    assert out is not None and out.code == v.RECORD_LAYOUT


def test_update_norm_blas_slices_match_a_float64_reference(monkeypatch):
    monkeypatch.setattr(v, "_NORM_SLICE", 1000)  # several slices per array
    rng = np.random.default_rng(3)
    glob = {"a": torch.from_numpy(rng.standard_normal(2500, dtype=np.float32))}
    glob["b"] = torch.from_numpy(rng.standard_normal((40, 30)))  # float64
    glob["c"] = torch.randn(7, dtype=torch.float32)
    reply = {n: t + 0.01 * torch.randn_like(t) for n, t in glob.items()}
    reply["c"] = reply["c"].to(torch.bfloat16)  # mixed dtypes take the torch path
    ref = math.sqrt(
        sum(float(((reply[n].double() - glob[n].double()) ** 2).sum()) for n in glob)
    )
    assert v.update_norm(reply, glob) == pytest.approx(ref, rel=1e-5)
    reply["a"][1234] = float("nan")
    assert math.isnan(v.update_norm(reply, glob))
