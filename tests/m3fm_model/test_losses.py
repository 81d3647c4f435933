"""Tests for the per-task losses and the multitask total."""

import math

import pytest
import torch
import torch.nn.functional as F

from m3fm_model.losses import (
    cancer_risk_targets,
    classification_loss,
    hazard_bce,
    hazard_from_outputs,
    multitask_loss,
    number3_loss,
)
from m3fm_model.tasks import AnswerKind, encode_number3


def _bce(logit: float, target: float) -> float:
    p = 1.0 / (1.0 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def test_hazard_from_outputs_hand_computation():
    raw = torch.tensor([[1.0, -2.0, 0.5, 0.0, 3.0, -1.0, 0.25]])
    cum = hazard_from_outputs(raw, "none")
    expected = 0.25 + torch.tensor([1.0, -1.0, -0.5, -0.5, 2.5, 1.5])
    torch.testing.assert_close(cum, expected[None])
    relu = hazard_from_outputs(raw, "relu")
    torch.testing.assert_close(
        relu, 0.25 + torch.tensor([[1.0, 1, 1.5, 1.5, 4.5, 4.5]])
    )
    assert (cum.diff(dim=1) < 0).any()  # the authors' unclamped curve can decrease


@pytest.mark.parametrize("activation", ["relu", "softplus"])
def test_hazard_monotone_with_nonnegative_activation(activation):
    raw = torch.randn(64, 7, generator=torch.Generator().manual_seed(0)) * 5
    cum = hazard_from_outputs(raw, activation)
    assert cum.shape == (64, 6)
    assert (cum.diff(dim=1) >= 0).all()
    if activation == "softplus":
        assert (cum.diff(dim=1) > 0).all()


def test_hazard_from_outputs_validates():
    with pytest.raises(ValueError, match="activation 'tanh'"):
        hazard_from_outputs(torch.zeros(2, 7), "tanh")
    with pytest.raises(ValueError, match=r"\(B, 7\)"):
        hazard_from_outputs(torch.zeros(2, 6), "none")


def test_hazard_bce_matches_hand_computation():
    logits = torch.tensor([[0.5, -1.0, 2.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1, 1, 1]])
    targets = torch.tensor([[0.0, 0, 1, 1, 1, 1], [0.0, 0, 0, 0, 0, 0]])
    observed = torch.zeros(2, 6, dtype=torch.bool)
    observed[0, :3] = True
    observed[1, 0] = True
    expected = (_bce(0.5, 0) + _bce(-1.0, 0) + _bce(2.0, 1) + _bce(1.0, 0)) / 4
    assert hazard_bce(logits, targets, observed).item() == pytest.approx(expected)


def test_censored_years_get_exactly_zero_gradient():
    logits = torch.tensor([[0.3, -0.2, 1e4, -1e4, 5.0, 7.0]], requires_grad=True)
    targets = torch.tensor([[0.0, 1, 0, 1, 0, 1]])
    observed = torch.tensor([[True, True, False, False, False, False]])
    hazard_bce(logits, targets, observed).backward()
    assert torch.isfinite(logits.grad).all()
    assert (logits.grad[0, 2:] == 0).all()
    assert (logits.grad[0, :2] != 0).all()


def test_hazard_bce_nothing_observed_is_attached_zero():
    logits = torch.randn(3, 6, requires_grad=True)
    loss = hazard_bce(logits, torch.ones(3, 6), torch.zeros(3, 6, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert (logits.grad == 0).all()
    with pytest.raises(ValueError, match="bool"):
        hazard_bce(logits, torch.ones(3, 6), torch.ones(3, 6))
    with pytest.raises(ValueError, match="shaped like"):
        hazard_bce(logits, torch.ones(3, 5), torch.ones(3, 6, dtype=torch.bool))


@pytest.mark.parametrize(
    ("event", "followup", "targets", "observed"),
    [
        (2.3, 2.3, [0, 0, 1, 1, 1, 1], [True] * 6),
        (None, 3.5, [0] * 6, [True, True, True, False, False, False]),
        (2.0, 10.0, [0, 1, 1, 1, 1, 1], [True] * 6),
        (0.0, 0.0, [1] * 6, [True] * 6),
        (7.5, 8.0, [0] * 6, [True] * 6),
        (None, 0.5, [0] * 6, [False] * 6),
        (None, 6, [0] * 6, [True] * 6),
    ],
)
def test_cancer_risk_targets(event, followup, targets, observed):
    assert cancer_risk_targets(event, followup) == (
        [float(t) for t in targets], observed,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("event", "followup", "message"),
    [
        (-1.0, 3.0, "event_year"),
        (None, -0.1, "followup_years"),
        (4.0, 2.0, "shorter than event_year"),
        (float("nan"), 3.0, "finite"),
        (None, "3", "number of years"),
    ],
)
def test_cancer_risk_targets_rejects_bad_input(event, followup, message):
    with pytest.raises(ValueError, match=message):
        cancer_risk_targets(event, followup)


def test_classification_loss_ignores_and_weights():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [5.0, 5.0, 5.0]])
    target = torch.tensor([0, 2, -100])
    expected = F.cross_entropy(logits[:2], target[:2])
    torch.testing.assert_close(classification_loss(logits, target), expected)
    weight = torch.tensor([1.0, 1.0, 3.0])
    l0 = -F.log_softmax(logits[0], 0)[0]
    l1 = -F.log_softmax(logits[1], 0)[2]
    torch.testing.assert_close(
        classification_loss(logits, target, class_weight=weight), (l0 + 3 * l1) / 4
    )


def test_classification_loss_all_ignored_and_errors():
    logits = torch.randn(2, 2, requires_grad=True)
    loss = classification_loss(logits, torch.tensor([-100, -100]))
    assert loss.item() == 0.0
    loss.backward()
    assert (logits.grad == 0).all()
    with pytest.raises(ValueError, match="outside 0..1"):
        classification_loss(logits, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="class_weight"):
        classification_loss(logits, torch.tensor([0, 1]), class_weight=torch.ones(3))
    with pytest.raises(ValueError, match="long"):
        classification_loss(logits, torch.tensor([0.0, 1.0]))


def test_number3_loss_is_mean_digit_cross_entropy():
    logits = torch.randn(2, 30, generator=torch.Generator().manual_seed(1))
    digits = torch.tensor([encode_number3(37.5), (-100, -100, -100)])
    per_digit = [F.cross_entropy(logits[0, 10 * k : 10 * k + 10][None],
                                 digits[0, k : k + 1]) for k in range(3)]  # fmt: skip
    torch.testing.assert_close(number3_loss(logits, digits), sum(per_digit) / 3)
    zero = number3_loss(logits, torch.full((2, 3), -100))
    assert zero.item() == 0.0
    with pytest.raises(ValueError, match="outside 0..9"):
        number3_loss(logits, torch.tensor([[0, 0, 10], [1, 1, 1]]))
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        number3_loss(logits, torch.zeros(2, 2, dtype=torch.long))


def _batch():
    torch.manual_seed(0)
    logits = {
        "cancer_risk": torch.randn(2, 6, requires_grad=True),
        "heart": torch.randn(2, 2, requires_grad=True),
        "nodule_size": torch.randn(2, 4, requires_grad=True),
        "clinical_number": torch.randn(2, 30, requires_grad=True),
    }
    t, o = cancer_risk_targets(1.5, 4.0)
    targets = {
        "cancer_risk": {"targets": torch.tensor([t, t]),
                        "observed": torch.tensor([o, [False] * 6])},
        "heart": {"target": torch.tensor([1, -100])},
        "nodule_size": {"target": torch.tensor([-100, -100])},  # unlabelled here
        "clinical_number": {"digits": torch.tensor([[0, 6, 8], [-100] * 3])},
    }  # fmt: skip
    kinds = {
        "cancer_risk": AnswerKind.HAZARD6,
        "heart": AnswerKind.BINARY,
        "nodule_size": "multiclass",
        "clinical_number": AnswerKind.NUMBER3,
    }
    return logits, targets, kinds


def test_multitask_mean_excludes_tasks_without_labels():
    logits, targets, kinds = _batch()
    total, per_task = multitask_loss(logits, targets, kinds)
    assert set(per_task) == {"cancer_risk", "heart", "clinical_number"}
    parts = [
        hazard_bce(logits["cancer_risk"], **targets["cancer_risk"]),
        classification_loss(logits["heart"], targets["heart"]["target"]),
        number3_loss(logits["clinical_number"], targets["clinical_number"]["digits"]),
    ]
    torch.testing.assert_close(total, sum(parts) / 3)
    assert per_task["heart"] == pytest.approx(parts[1].item())
    total.backward()
    assert (logits["nodule_size"].grad is None) or (
        logits["nodule_size"].grad == 0
    ).all()
    assert (logits["heart"].grad[1] == 0).all() and (logits["heart"].grad[0] != 0).all()


def test_multitask_nothing_labelled_and_class_weight():
    logits, targets, kinds = _batch()
    total, per_task = multitask_loss(logits, {"nodule_size": targets["nodule_size"]},
                                     kinds)  # fmt: skip
    assert per_task == {} and total.item() == 0.0 and total.requires_grad
    weighted = {"heart": {"target": torch.tensor([1, 0]),
                          "class_weight": torch.tensor([1.0, 0.0])}}  # fmt: skip
    total, _ = multitask_loss(logits, weighted, kinds)
    expected = -F.log_softmax(logits["heart"][1], 0)[0]
    torch.testing.assert_close(total, expected)


def test_multitask_rejects_inconsistent_inputs():
    logits, targets, kinds = _batch()
    with pytest.raises(ValueError, match="'heart' has targets but no logits"):
        multitask_loss({}, {"heart": targets["heart"]}, kinds)
    with pytest.raises(ValueError, match="answer kind"):
        multitask_loss(logits, {"heart": targets["heart"]}, {})
    with pytest.raises(ValueError, match=r"lacks \['observed'\]"):
        multitask_loss(logits, {"cancer_risk": {"targets": torch.ones(2, 6)}}, kinds)
    raw = {"cancer_risk": torch.zeros(2, 7)}
    with pytest.raises(ValueError, match="hazard_from_outputs"):
        multitask_loss(raw, {"cancer_risk": targets["cancer_risk"]}, kinds)
