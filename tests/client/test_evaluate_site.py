"""m3fm-site evaluate on a generated, prepared site: outputs, agreement, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from client.cli import main
from client.evaluation.model_io import load_model, save_model
from client.metrics import task_metrics
from client.site_dataset import build_site_dataset
from client.train import predict_split
from m3fm_model import build_model
from tests.client.site_fixtures import prepared_site


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    torch.set_num_threads(1)
    return prepared_site(tmp_path_factory)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    out = {}
    for seed, name in ((0, "ref"), (1, "other")):
        torch.manual_seed(seed)
        out[name] = save_model(
            build_model("tiny"), root, preset="tiny", extra_tasks=[], card={},
            file_name=f"{name}.pt",
        )  # fmt: skip
    torch.manual_seed(2)
    out["heart_only"] = save_model(
        build_model("tiny", tasks=("heart",)), root, preset="tiny", extra_tasks=[],
        card={}, file_name="heart_only.pt",
    )  # fmt: skip
    return out


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_evaluate_writes_report_and_matches_batch_metrics(
    site, checkpoints, tmp_path, capsys
) -> None:
    # Prepare
    before = _files(site.path.parent)
    out = tmp_path / "eval"
    # Execute
    rc = main(
        [
            "evaluate",
            "--model",
            str(checkpoints["ref"]),
            "--site-config",
            str(site.path),
        ]
        + ["--split", "train", "--compare", str(checkpoints["other"])]
        + ["--bootstrap", "50", "--by", "gender", "--by", "ct", "--out", str(out)]
    )
    # Assert
    assert rc == 0
    assert _files(site.path.parent) == before  # nothing written at the site
    printed = capsys.readouterr().out
    assert "ref" in printed and "other" in printed and "cindex" in printed
    payload = json.loads((out / "metrics.json").read_text())
    html = (out / "report.html").read_text()
    assert payload["tasks"], "no task evaluated"
    assert html.count("data:image/png;base64,") == 2 * len(payload["tasks"])
    data = build_site_dataset(site, "tiny", "train", augment=False, auxiliary=False)
    model = load_model(checkpoints["ref"]).model
    reference = predict_split(model, data, "cpu")
    for task, res in payload["tasks"].items():
        assert set(res["models"]) == {"ref", "other"}
        got = res["models"]["ref"]["overall"]
        want = task_metrics(task, reference[task].outputs, reference[task].targets)
        key = "cindex" if res["kind"] == "hazard6" else "auc"
        if want.get(key) is None or np.isnan(want[key]):
            assert got[key]["value"] is None
        else:
            assert got[key]["value"] == pytest.approx(want[key], abs=1e-6)
        assert res["n"] == want["n"]
        groups = res["models"]["ref"]["subgroups"]
        assert sum(g["n"] for g in groups["gender"].values()) == res["n"]
        assert set(groups["ct"]) <= {"with CT", "without CT"}


def test_model_without_the_sites_heads_is_refused(site, checkpoints, tmp_path, capsys):
    rc = main(
        ["evaluate", "--model", str(checkpoints["heart_only"])]
        + ["--site-config", str(site.path), "--out", str(tmp_path / "x")]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "no heads for the site's tasks" in err
    assert not (tmp_path / "x").exists()


def test_preset_mismatch_and_missing_card_are_refused(
    site, checkpoints, tmp_path, capsys
):
    rc = main(
        ["evaluate", "--model", str(checkpoints["ref"]), "--preset", "base"]
        + ["--site-config", str(site.path), "--out", str(tmp_path / "x")]
    )
    assert rc == 2 and "contradicts" in capsys.readouterr().err
    bare = tmp_path / "bare.pt"
    torch.save(torch.load(checkpoints["ref"], weights_only=True), bare)
    rc = main(["evaluate", "--model", str(bare), "--site-config", str(site.path)])
    assert rc == 2 and "pass --preset" in capsys.readouterr().err


def test_unknown_subgroup_field_is_refused(site, checkpoints, tmp_path, capsys):
    rc = main(
        [
            "evaluate",
            "--model",
            str(checkpoints["ref"]),
            "--site-config",
            str(site.path),
        ]
        + ["--by", "shoe_size", "--out", str(tmp_path / "x")]
    )
    assert rc == 2 and "unknown subgroup field 'shoe_size'" in capsys.readouterr().err
