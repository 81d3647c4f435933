import numpy as np
import pytest
from scipy.stats import rankdata

from client.synth import sample_cohort
from client.synth.anatomy import LOBES
from client.synth.cohort import cohort_features
from client.synth.labels import TASKS

_CLASSES = {
    "nodule_size": {"none", "<6 mm", "6-15 mm", ">15 mm"},
    "nodule_consistency": {"none", "solid", "part-solid", "ground-glass"},
    "nodule_location": {"none", *LOBES},
    "nodule_margin": {"none", "smooth", "spiculated"},
    "lung_rads": {"1", "2", "3", "4A", "4B", "4X"},
}


def _fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2) -> np.ndarray:
    """Ridge-penalised logistic regression by Newton's method."""
    x = np.column_stack([np.ones(len(x)), x])
    w = np.zeros(x.shape[1])
    penalty = l2 * np.eye(len(w))
    penalty[0, 0] = 0.0
    for _ in range(30):
        p = 1.0 / (1.0 + np.exp(-x @ w))
        grad = x.T @ (p - y) + penalty @ w
        hess = (x * (p * (1 - p))[:, None]).T @ x + penalty
        w -= np.linalg.solve(hess, grad)
    return w


def _auc(score: np.ndarray, y: np.ndarray) -> float:
    ranks = rankdata(score)
    pos = y == 1
    n1, n0 = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _cv_auc(x: np.ndarray, y: np.ndarray, folds: int = 5) -> float:
    """Out-of-fold AUC of a logistic regression (5-fold cross-validation)."""
    order = np.random.default_rng(0).permutation(len(y))
    score = np.empty(len(y))
    for fold in np.array_split(order, folds):
        train = np.setdiff1d(order, fold)
        mu, sd = x[train].mean(0), x[train].std(0) + 1e-9
        w = _fit_logistic((x[train] - mu) / sd, y[train])
        score[fold] = np.column_stack([np.ones(len(fold)), (x[fold] - mu) / sd]) @ w
    return _auc(score, y)


@pytest.fixture(scope="module")
def screening_cohort():
    return sample_cohort("hospital_a", 1200, 0)


def _three_aucs(img, clin, y) -> dict[str, float]:
    return {
        "image": _cv_auc(img, y),
        "clinical": _cv_auc(clin, y),
        "both": _cv_auc(np.column_stack([img, clin]), y),
    }


def test_cancer_risk_needs_image_and_clinical_features(screening_cohort):
    # Prepare: 3-year lung-cancer event among patients observed for 3 years
    img, clin, _, _ = cohort_features(screening_cohort)
    event = np.array(
        [np.inf if (e := p.exams[0].labels["cancer_risk"][0]) is None else e
         for p in screening_cohort]
    )  # fmt: skip
    followup = np.array([p.exams[0].labels["cancer_risk"][1] for p in screening_cohort])
    known = (event <= 3) | (followup >= 3)
    y = (event[known] <= 3).astype(float)
    # Execute
    auc = _three_aucs(img[known], clin[known], y)
    # Assert: both feature sets carry signal; together they beat either alone
    assert 0.03 < y.mean() < 0.4
    assert auc["image"] > 0.65 and auc["clinical"] > 0.65
    assert auc["both"] > max(auc["image"], auc["clinical"]) + 0.015, auc


def test_cvd_diagnosis_needs_image_and_clinical_features(screening_cohort):
    img, clin, _, _ = cohort_features(screening_cohort)
    y = np.array([p.exams[0].labels["heart"] for p in screening_cohort], dtype=float)
    auc = _three_aucs(img, clin, y)
    assert 0.1 < y.mean() < 0.6
    assert auc["image"] > 0.65 and auc["clinical"] > 0.65
    assert auc["both"] > max(auc["image"], auc["clinical"]) + 0.015, auc


def test_abnormality_labels_follow_the_findings(screening_cohort):
    exams = [p.exams[0] for p in screening_cohort]
    emph = np.array([e.findings.emphysema_fraction >= 0.05 for e in exams])
    label = np.array([e.labels["emphysema"] for e in exams])
    agreement = (emph == label).mean()
    assert 0.85 < agreement < 0.99  # mostly follows the finding, with reader noise
    big = np.array(
        [
            bool(e.findings.nodules) and e.findings.nodules[0].diameter_mm >= 4
            for e in exams
        ]
    )
    seen = np.array([e.labels["nodule_presence"] for e in exams])
    assert 0.85 < (big == seen).mean() < 0.99


def test_cohort_is_deterministic_and_prefix_stable():
    a = sample_cohort("hospital_b", 30, 7)
    b = sample_cohort("hospital_b", 30, 7)
    c = sample_cohort("hospital_b", 12, 7)
    assert a == b
    assert a[:12] == c
    assert a != sample_cohort("hospital_b", 30, 8)


@pytest.mark.parametrize("profile", ["hospital_a", "hospital_b", "hospital_c"])
def test_records_are_valid(profile):
    cohort = sample_cohort(profile, 200, 3)
    names = {(p.given_name, p.family_name) for p in cohort}
    assert len(names) == len(cohort)
    assert len({p.patient_id for p in cohort}) == len(cohort)
    for patient in cohort:
        for exam in patient.exams:
            clin, labels = exam.clinical, exam.labels
            assert len(clin) == 49
            assert 18 <= clin["age"] <= 110 and 48 <= clin["height"] <= 90
            assert 60 <= clin["weight"] <= 700 and 0 <= clin["pack_years"] <= 300
            assert set(labels) == set(TASKS)
            for task, classes in _CLASSES.items():
                assert labels[task] in classes, (task, labels[task])
            event, followup = labels["cancer_risk"]
            assert followup > 0 and (event is None or 0 < event <= followup)
            assert exam.exam_id.startswith(patient.patient_id.replace("-P", "-E"))
