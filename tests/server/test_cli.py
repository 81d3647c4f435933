from server.cli import main
from server.report import MetricsHistory


def test_report_prints_summary_and_draws_plots(tmp_path, capsys):
    h = MetricsHistory()
    h.record_train(1, "hospital_a", {"epsilon": 1.5, "status": 0})
    h.record_evaluate(1, "hospital_a", {"heart.auc": 0.7, "heart.n": 10})
    h.write(tmp_path)
    assert main(["report", "--run-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "heart" in out and "hospital_a" in out
    assert list((tmp_path / "plots").glob("*.png"))


def test_report_missing_run_dir(tmp_path, capsys):
    assert main(["report", "--run-dir", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err


def test_simulate_refuses_missing_site_config(tmp_path, capsys):
    assert main(["simulate", "--site-config", str(tmp_path / "x.toml")]) == 2
    assert "not found" in capsys.readouterr().err
