from pathlib import Path

import pytest

from client.site_config import SiteConfigError, load_site_config

BASE = """
[site]
name = "h1"
tasks = ["cancer_risk", "heart"]
[dicom]
root = "dicom"
[clinical]
path = "clinical.csv"
patient-id-column = "pid"
[clinical.columns]
age = "AGE"
height = "H"
[clinical.units]
height = "cm"
[labels]
path = "labels.csv"
patient-id-column = "pid"
[labels.columns]
heart = "cvd"
cancer_risk = { event-year = "ev", followup-years = "fu" }
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "site.toml"
    p.write_text(text)
    return p


def test_parses_and_resolves_paths(tmp_path):
    cfg = load_site_config(_write(tmp_path, BASE))
    assert cfg.name == "h1" and cfg.tasks == ("cancer_risk", "heart")
    assert cfg.dicom.root == (tmp_path / "dicom").resolve()
    assert cfg.clinical.units["height"] == "cm"
    assert cfg.labels.columns["cancer_risk"].followup_years == "fu"
    assert cfg.privacy.enabled and cfg.privacy.epsilon == 8.0
    assert cfg.split.fractions == (0.7, 0.15, 0.15)


@pytest.mark.parametrize(
    "edit,key",
    [
        (
            lambda t: t.replace(
                'tasks = ["cancer_risk", "heart"]', 'tasks = ["cancer_risk", "dragon"]'
            ),
            "site.tasks",
        ),
        (lambda t: t.replace('age = "AGE"', 'agee = "AGE"'), "clinical.columns"),
        (
            lambda t: t.replace('height = "cm"', 'height = "furlong"'),
            "clinical.units.height",
        ),
        (lambda t: t + "[privacy]\nepsilon = -1.0\n", "privacy"),
        (lambda t: t + "[split]\nfractions = [0.5, 0.5, 0.5]\n", "split.fractions"),
        (lambda t: t + "[compute]\ndevice = 'tpu'\n", "compute.device"),
        (lambda t: t.replace("[dicom]", "[dicom]\nroots = 'x'"), "dicom"),
        (lambda t: t.replace('heart = "cvd"\n', ""), "labels.columns"),
        (
            lambda t: t.replace(
                'cancer_risk = { event-year = "ev", followup-years = "fu" }',
                'cancer_risk = "ev"',
            ),
            "labels.columns.cancer_risk",
        ),
        (lambda t: t + "[extra]\n", "extra"),
        (lambda t: t + "[privacy]\nenabled = 'yes'\n", "privacy.enabled"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path, edit, key):
    path = _write(tmp_path, edit(BASE))
    with pytest.raises(SiteConfigError) as err:
        load_site_config(path)
    assert err.value.key == key
    assert str(path) in str(err.value)


def test_invalid_toml(tmp_path):
    with pytest.raises(SiteConfigError, match="not valid TOML"):
        load_site_config(_write(tmp_path, "[site\nname="))
