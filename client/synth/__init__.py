"""Generated demo hospitals: chest CT phantoms as DICOM, clinical and label tables.

``synthesize_site(profile, out_dir, patients=..., seed=...)`` writes a whole site
(DICOM tree, clinical table, labels table, ``site.toml`` and ``truth.json``);
``sample_cohort`` draws the latent cohort without rendering; ``site_config_toml``
is the single source of the generated and the committed site configs. See
README.md in this folder for the generative model.
"""

from client.synth.cohort import (
    ExamRecord,
    PatientRecord,
    cohort_features,
    sample_cohort,
)
from client.synth.profiles import PROFILES, Profile
from client.synth.site import synthesize_site
from client.synth.siteconfig import site_config_toml, write_demo_site_configs

__all__ = [
    "PROFILES",
    "Profile",
    "PatientRecord",
    "ExamRecord",
    "sample_cohort",
    "cohort_features",
    "synthesize_site",
    "site_config_toml",
    "write_demo_site_configs",
]
