"""The CT-only probe: its dataset hides the text, its baseline and record are sound."""

import math

import numpy as np
import pytest
import torch

from server.ct_probe import ct_only_dataset, intensity_features, run_probe
from tests.client.site_fixtures import prepared_site


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    torch.set_num_threads(1)
    return prepared_site(tmp_path_factory)


def test_intensity_features_are_mean_std_and_percentiles():
    crop = np.arange(1000, dtype=np.float32).reshape(10, 10, 10) / 1000
    got = intensity_features(crop)
    assert got.shape == (11,)
    assert got[0] == pytest.approx(crop.mean()) and got[1] == pytest.approx(crop.std())
    assert got[2:] == pytest.approx(
        np.percentile(crop, [1, 5, 10, 25, 50, 75, 90, 95, 99])
    )


def test_probe_examples_show_the_ct_and_never_the_text(site):
    data = ct_only_dataset([site], "emphysema", "tiny", modality_dropout=0.5, seed=3)
    assert len(data) > 0
    for i in range(len(data)):
        item = data[i]
        assert item.ct is not None and item.task == "emphysema"
        assert not bool(item.text_mask.any())


def test_probe_record_has_the_curve_and_the_baseline(site):
    record = run_probe(
        [site], [site], task="emphysema", steps=2, every=1, batch_size=4, threads=1
    )
    assert [p["step"] for p in record["curve"]] == [1, 2]
    assert record["train_exams"] == record["eval_exams"] > 0
    for value in [record["baseline_auc"]] + [p["auc"] for p in record["curve"]]:
        assert math.isnan(value) or 0.0 <= value <= 1.0
    assert all(math.isfinite(p["train_loss"]) for p in record["curve"])


def test_probe_refuses_a_task_that_is_not_binary(site):
    with pytest.raises(ValueError, match="binary"):
        run_probe([site], [site], task="nodule_size", steps=1, every=1)
