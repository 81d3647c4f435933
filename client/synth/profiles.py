"""The three demo hospital profiles: scanner, cohort, table conventions and tasks.

Each profile is a frozen description; nothing here draws random numbers. The
generators in this package read a profile and a seed and produce a whole site.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass

from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless

__all__ = ["ScannerSpec", "CohortSpec", "TableSpec", "Profile", "PROFILES", "get"]


@dataclass(frozen=True)
class ScannerSpec:
    """How a site's CT scanner writes its series.

    Attributes:
        manufacturer: DICOM Manufacturer.
        model: DICOM ManufacturerModelName.
        rows: Rows and Columns of every axial image.
        pixel_spacing_mm: In-plane pixel spacing (square pixels).
        slice_thickness_mm: Nominal SliceThickness written in the header.
        slice_spacing_mm: True distance between slice positions.
        margin_below_mm: Scan range below the lung base.
        margin_above_mm: Scan range above the lung apex.
        noise_hu: Standard deviation of the white image noise in HU.
        kvp: Tube voltage.
        kernel: ConvolutionKernel.
        signed: Store int16 (True) or uint16 (False).
        bits_stored: BitsStored.
        rescale_intercept: RescaleIntercept (HU = stored + intercept).
        padding_value: Stored PixelPaddingValue outside the reconstruction circle,
            or None for no padding.
        transfer_syntax: Transfer syntax UID of the written files.
        orientation: ImageOrientationPatient; axis-aligned row/column directions.
        patient_position: PatientPosition.
        superior_first: InstanceNumber 1 at the superior end (reversed numbering).
        file_style: "numbered" (IM0001, no extension) or "hashed" (<hex>.dcm).
        folder_style: "readable" (<PatientID>/<date>_<exam>/SE002), "hashed"
            (opaque hex folders) or "dated" (<PatientID>/<date>/<n>_<description>).
        station: StationName.
        study_description: StudyDescription.
        series_description: SeriesDescription of the primary series.
        thick_series_fraction: Share of exams with an extra thick-slice series.
        thick_spacing_mm: Slice spacing of that extra series.
    """

    manufacturer: str
    model: str
    rows: int
    pixel_spacing_mm: float
    slice_thickness_mm: float
    slice_spacing_mm: float
    margin_below_mm: float
    margin_above_mm: float
    noise_hu: float
    kvp: float
    kernel: str
    signed: bool
    bits_stored: int
    rescale_intercept: float
    padding_value: int | None
    transfer_syntax: str
    orientation: tuple[float, float, float, float, float, float]
    patient_position: str
    superior_first: bool
    file_style: str
    folder_style: str
    station: str
    study_description: str
    series_description: str
    thick_series_fraction: float = 0.0
    thick_spacing_mm: float = 6.0


@dataclass(frozen=True)
class CohortSpec:
    """Distributions of one site's patients (see README.md, generative model).

    Attributes:
        age_mean: Mean age at the first scan.
        age_sd: Standard deviation of that age.
        age_range: Inclusive (min, max) age.
        male_fraction: Share of men.
        smoking: Probabilities of (current, former, never).
        min_pack_years: Smallest pack-years of ever-smokers (screening rule).
        cigs_median: Median cigarettes per day of smokers.
        race: Probabilities over the dictionary's race categories, in order.
        hispanic: Share of "hispanic or latino".
        education: Probabilities over the dictionary's education levels, in order.
        disease_scale: Multiplier on the base prevalence of disease history.
        cvd_shift: Added to the log-odds of cardiovascular history (hypertension,
            diabetes, heart disease, stroke).
        covid_prevalence: Share of patients with COVID-19 at the scan.
        nodule_logit: Intercept of the nodule-presence model.
        cancer_rate: Weibull scale of lung-cancer incidence (per year**shape).
        second_exam: Probability of a follow-up exam 1-2 years later.
        followup_years: (min, max) of the uniform follow-up time.
        heart_scale: (min, max) of the heart size multiplier (cardiomegaly).
    """

    age_mean: float
    age_sd: float
    age_range: tuple[int, int]
    male_fraction: float
    smoking: tuple[float, float, float]
    min_pack_years: float
    cigs_median: float
    race: tuple[float, ...]
    hispanic: float
    education: tuple[float, ...]
    disease_scale: float
    cvd_shift: float
    covid_prevalence: float
    nodule_logit: float
    cancer_rate: float
    second_exam: float
    followup_years: tuple[float, float]
    heart_scale: tuple[float, float]


@dataclass(frozen=True)
class TableSpec:
    """How a site writes its clinical and labels tables.

    Attributes:
        clinical_file: File name of the clinical table (.csv, .parquet or .xlsx).
        labels_file: File name of the labels table.
        patient_id_column: Patient-ID column (both tables).
        exam_id_column: Exam-ID column (both tables).
        columns: Dictionary field -> the site's column.
        units: Field -> unit of the site's column ("cm"/"in", "kg"/"lb").
        values: Field -> {site code -> dictionary value}.
        identifiers: Unmapped identifier columns: (name, record number, note).
        label_columns: Task -> column, or (event-year, followup-years) columns.
    """

    clinical_file: str
    labels_file: str
    patient_id_column: str
    exam_id_column: str
    columns: Mapping[str, str]
    units: Mapping[str, str]
    values: Mapping[str, Mapping[str, str]]
    identifiers: tuple[str, str, str]
    label_columns: Mapping[str, str | tuple[str, str]]


@dataclass(frozen=True)
class Profile:
    """One demo hospital.

    Attributes:
        name: Site name.
        code: Small integer that separates the random streams of the profiles.
        prefix: Prefix of pseudonymous IDs ("HA" gives patient IDs HA-P<n> and exam IDs HA-E<n>-<k>).
        scanner: Scanner conventions.
        cohort: Patient distributions.
        tables: Table conventions.
        tasks: Tasks the site labels.
        epsilon: The site's total privacy budget.
        default_faults: Whether faults are injected when not asked explicitly.
        demo_patients: Patients of the committed demo site.
        demo_seed: Seed of the committed demo site.
    """

    name: str
    code: int
    prefix: str
    scanner: ScannerSpec
    cohort: CohortSpec
    tables: TableSpec
    tasks: tuple[str, ...]
    epsilon: float
    default_faults: bool
    demo_patients: int
    demo_seed: int


def _frozen(mapping: dict) -> Mapping:
    return types.MappingProxyType(mapping)


_FLAG_YN = {"Y": "yes", "N": "no"}
_FLAG_10 = {"1": "yes", "0": "no"}

_A_COLUMNS = {
    "age": "AGE", "gender": "SEX", "race": "RACE", "ethnicity": "HISPANIC",
    "height": "HEIGHT_IN", "weight": "WEIGHT_LB", "education": "EDUC",
    "smoking_status": "CIG_STATUS", "pack_years": "PKYR", "cigs_per_day": "CIGPERDAY",
    "smoking_years": "SMOKEYR", "age_started_smoking": "SMOKEAGE",
    "age_quit_smoking": "AGE_QUIT", "copd": "DIAGCOPD_AGE",
    "emphysema_history": "DIAGEMPH_AGE", "diabetes": "DIAGDIAB_AGE",
    "hypertension": "DIAGHYPE_AGE", "heart_disease": "DIAGHEAR_AGE",
    "pneumonia": "DIAGPNEU_AGE", "asthma": "DIAGASTH_AGE",
    "cancer_larynx": "CANCLARY_AGE", "cancer_bladder": "CANCBLAD_AGE",
    "family_father": "FAMFATHER", "family_mother": "FAMMOTHER",
    "family_brother": "FAMBROTHER", "family_sister": "FAMSISTER",
    "exposure_asbestos": "WRKASBE", "exposure_welding": "WRKWELD",
}  # fmt: skip
_A_VALUES = {
    "gender": {"M": "Male", "F": "Female"},
    "race": {"W": "white", "B": "black or african-american", "A": "asian",
             "AI": "american indian or alaskan native",
             "PI": "native hawaiian or other pacific islander",
             "MR": "more than one race"},
    "ethnicity": {"Y": "hispanic or latino", "N": "neither hispanic nor latino"},
    "education": {"LT9": "8th grade or less", "9-11": "9th-11th grade",
                  "HS": "high school graduate/ged", "POSTHS": "post high school training",
                  "SOMECOL": "associate degree/ some college", "BA": "bachelors degree",
                  "GRAD": "graduate school"},
    "smoking_status": {"CURRENT": "current", "FORMER": "former", "NEVER": "never"},
    **{f: _FLAG_YN for f in ("family_father", "family_mother", "family_brother",
                             "family_sister", "exposure_asbestos", "exposure_welding")},
}  # fmt: skip
_B_COLUMNS = {
    "age": "age_at_ct", "gender": "sex", "race": "race", "height": "height_cm",
    "weight": "weight_kg", "smoking_status": "smoker", "pack_years": "pack_years",
    "smoking_years": "years_smoked", "age_quit_smoking": "quit_age",
    "hypertension": "htn_dx_age", "diabetes": "dm_dx_age",
    "heart_disease": "chd_dx_age", "stroke": "stroke_dx_age", "copd": "copd_dx_age",
    "chronic_bronchitis": "bronchitis_dx_age", "pneumonia": "pneumonia_dx_age",
    "cancer_lung": "prior_lung_ca_age", "cancer_breast": "prior_breast_ca_age",
    "cancer_colorectal": "prior_crc_age", "family_father": "fhx_lung_ca_father",
    "family_mother": "fhx_lung_ca_mother", "family_brother": "fhx_lung_ca_brother",
    "family_sister": "fhx_lung_ca_sister", "exposure_asbestos": "asbestos_exposure",
}  # fmt: skip
_B_VALUES = {
    "gender": {"male": "Male", "female": "Female"},
    "smoking_status": {"current smoker": "current", "ex-smoker": "former",
                       "non-smoker": "never"},
}  # fmt: skip
_C_FLAGS = (
    "asthma", "childhood_asthma", "diabetes", "hypertension", "pneumonia",
    "pulmonary_fibrosis", "sarcoidosis", "tuberculosis", "family_father",
    "family_mother", "exposure_farming", "exposure_coal_mining",
    "exposure_sandblasting",
)  # fmt: skip
_C_COLUMNS = {
    "age": "Age", "gender": "Gender", "race": "Race", "ethnicity": "Ethnicity",
    "height": "Height (cm)", "weight": "Weight (kg)", "education": "Education Level",
    "smoking_status": "Smoking Status", "pack_years": "Pack Years",
    "cigs_per_day": "Cigarettes per Day", "age_started_smoking": "Age Started Smoking",
    "asthma": "Asthma", "childhood_asthma": "Childhood Asthma",
    "diabetes": "Diabetes", "hypertension": "Hypertension", "pneumonia": "Pneumonia",
    "pulmonary_fibrosis": "Pulmonary Fibrosis", "sarcoidosis": "Sarcoidosis",
    "tuberculosis": "Tuberculosis", "family_father": "Father Lung Cancer",
    "family_mother": "Mother Lung Cancer", "exposure_farming": "Farming Exposure",
    "exposure_coal_mining": "Coal Mining Exposure",
    "exposure_sandblasting": "Sandblasting Exposure",
}  # fmt: skip
_C_VALUES = {
    "gender": {"1": "Male", "2": "Female"},
    "race": {"1": "white", "2": "black or african-american", "3": "asian",
             "4": "american indian or alaskan native",
             "5": "native hawaiian or other pacific islander", "6": "more than one race"},
    "ethnicity": {"1": "hispanic or latino", "2": "neither hispanic nor latino"},
    "education": {"1": "8th grade or less", "2": "9th-11th grade",
                  "3": "high school graduate/ged", "4": "post high school training",
                  "5": "associate degree/ some college", "6": "bachelors degree",
                  "7": "graduate school"},
    "smoking_status": {"1": "current", "2": "former", "3": "never"},
    **{f: _FLAG_10 for f in _C_FLAGS},
}  # fmt: skip

_RACE_A = (0.90, 0.05, 0.02, 0.01, 0.005, 0.015)
_EDU_A = (0.05, 0.07, 0.25, 0.13, 0.22, 0.15, 0.13)

HOSPITAL_A = Profile(
    name="hospital_a", code=1, prefix="HA",
    scanner=ScannerSpec(
        manufacturer="GE MEDICAL SYSTEMS", model="LightSpeed VCT", rows=112,
        pixel_spacing_mm=2.8, slice_thickness_mm=2.5, slice_spacing_mm=2.5,
        margin_below_mm=25.0, margin_above_mm=20.0, noise_hu=18.0, kvp=120.0,
        kernel="LUNG", signed=True, bits_stored=16, rescale_intercept=-1024.0,
        padding_value=-2000, transfer_syntax=ExplicitVRLittleEndian,
        orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), patient_position="HFS",
        superior_first=True, file_style="numbered", folder_style="readable",
        station="CTSCREEN1",
        study_description="CT CHEST LOW DOSE SCREENING",
        series_description="LUNG 2.5mm",
    ),
    cohort=CohortSpec(
        age_mean=63.0, age_sd=5.0, age_range=(55, 77), male_fraction=0.59,
        smoking=(0.48, 0.52, 0.0), min_pack_years=30.0, cigs_median=25.0,
        race=_RACE_A, hispanic=0.02, education=_EDU_A, disease_scale=1.0,
        cvd_shift=0.0, covid_prevalence=0.0, nodule_logit=-0.3, cancer_rate=3e-4,
        second_exam=0.0, followup_years=(1.0, 8.0), heart_scale=(0.92, 1.1),
    ),
    tables=TableSpec(
        clinical_file="clinical.csv", labels_file="labels.csv",
        patient_id_column="pid", exam_id_column="study_id",
        columns=_frozen(_A_COLUMNS), units=_frozen({"height": "in", "weight": "lb"}),
        values=_frozen(_A_VALUES), identifiers=("patient_name", "mrn", "notes"),
        label_columns=_frozen({
            "cancer_risk": ("yrs_to_lung_ca", "yrs_followup"),
            "nodule_presence": "nodule", "nodule_size": "nodule_size",
            "emphysema": "emphysema", "heart": "cvd",
        }),
    ),
    tasks=("cancer_risk", "nodule_presence", "nodule_size", "emphysema", "heart"),
    epsilon=8.0, default_faults=False, demo_patients=75, demo_seed=1,
)  # fmt: skip

HOSPITAL_B = Profile(
    name="hospital_b", code=2, prefix="HB",
    scanner=ScannerSpec(
        manufacturer="SIEMENS", model="SOMATOM Definition AS", rows=128,
        pixel_spacing_mm=2.7, slice_thickness_mm=5.0, slice_spacing_mm=4.0,
        margin_below_mm=45.0, margin_above_mm=25.0, noise_hu=10.0, kvp=120.0,
        kernel="B31f", signed=False, bits_stored=12, rescale_intercept=-1024.0,
        padding_value=None, transfer_syntax=JPEGLSLossless,
        orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), patient_position="HFS",
        superior_first=False, file_style="hashed", folder_style="hashed",
        station="CARDCT02",
        study_description="CT CHEST WITHOUT CONTRAST",
        series_description="Thorax 5.0 B31f",
    ),
    cohort=CohortSpec(
        age_mean=70.0, age_sd=8.0, age_range=(50, 90), male_fraction=0.62,
        smoking=(0.2, 0.45, 0.35), min_pack_years=0.0, cigs_median=20.0,
        race=(0.72, 0.16, 0.06, 0.01, 0.01, 0.04), hispanic=0.08,
        education=(0.06, 0.08, 0.3, 0.12, 0.2, 0.14, 0.1), disease_scale=1.3,
        cvd_shift=1.0, covid_prevalence=0.0, nodule_logit=-1.0, cancer_rate=1e-4,
        second_exam=0.35, followup_years=(1.0, 8.0), heart_scale=(0.95, 1.3),
    ),
    tables=TableSpec(
        clinical_file="clinical.parquet", labels_file="labels.parquet",
        patient_id_column="patient_ref", exam_id_column="accession",
        columns=_frozen(_B_COLUMNS), units=_frozen({"height": "cm", "weight": "kg"}),
        values=_frozen(_B_VALUES),
        identifiers=("full_name", "hospital_number", "referral_note"),
        label_columns=_frozen({
            "heart": "cardiac_abnormality", "cvd_mortality": "cvd_death",
            "cancer_risk": ("lung_ca_years", "followup_years"),
            "pleural_effusion": "effusion", "consolidation": "consolidation",
        }),
    ),
    tasks=("heart", "cvd_mortality", "cancer_risk", "pleural_effusion", "consolidation"),
    epsilon=4.0, default_faults=True, demo_patients=65, demo_seed=2,
)  # fmt: skip

HOSPITAL_C = Profile(
    name="hospital_c", code=3, prefix="HC",
    scanner=ScannerSpec(
        manufacturer="TOSHIBA", model="Aquilion ONE", rows=100,
        pixel_spacing_mm=3.0, slice_thickness_mm=3.0, slice_spacing_mm=3.0,
        margin_below_mm=20.0, margin_above_mm=15.0, noise_hu=14.0, kvp=120.0,
        kernel="FC52", signed=True, bits_stored=16, rescale_intercept=0.0,
        padding_value=None, transfer_syntax=ExplicitVRLittleEndian,
        orientation=(-1.0, 0.0, 0.0, 0.0, -1.0, 0.0), patient_position="HFP",
        superior_first=False, file_style="hashed", folder_style="dated",
        station="TSX301",
        study_description="CT THORAX", series_description="LUNG 3.0 FC52",
        thick_series_fraction=0.3, thick_spacing_mm=6.0,
    ),
    cohort=CohortSpec(
        age_mean=50.0, age_sd=14.0, age_range=(21, 88), male_fraction=0.5,
        smoking=(0.2, 0.25, 0.55), min_pack_years=0.0, cigs_median=15.0,
        race=(0.55, 0.18, 0.15, 0.03, 0.02, 0.07), hispanic=0.2,
        education=(0.04, 0.06, 0.22, 0.1, 0.24, 0.22, 0.12), disease_scale=0.8,
        cvd_shift=-0.5, covid_prevalence=0.35, nodule_logit=-1.0, cancer_rate=3e-4,
        second_exam=0.0, followup_years=(1.0, 4.0), heart_scale=(0.9, 1.05),
    ),
    tables=TableSpec(
        clinical_file="clinical.xlsx", labels_file="labels.xlsx",
        patient_id_column="Patient ID", exam_id_column="Exam ID",
        columns=_frozen(_C_COLUMNS), units=_frozen({"height": "cm", "weight": "kg"}),
        values=_frozen(_C_VALUES),
        identifiers=("Name", "Medical Record No", "Comments"),
        label_columns=_frozen({
            "covid19": "COVID-19", "nodule_presence": "Nodule",
            "nodule_consistency": "Nodule Type", "atelectasis": "Atelectasis",
            "fibrosis": "Fibrosis", "emphysema": "Emphysema",
        }),
    ),
    tasks=("covid19", "nodule_presence", "nodule_consistency", "atelectasis",
           "fibrosis", "emphysema"),
    epsilon=10.0, default_faults=False, demo_patients=55, demo_seed=3,
)  # fmt: skip

PROFILES: Mapping[str, Profile] = types.MappingProxyType(
    {p.name: p for p in (HOSPITAL_A, HOSPITAL_B, HOSPITAL_C)}
)


def get(name: str) -> Profile:
    """Return the profile called ``name``.

    Args:
        name: "hospital_a", "hospital_b" or "hospital_c".

    Returns:
        The profile.

    Raises:
        ValueError: If no profile has that name.
    """
    if name not in PROFILES:
        raise ValueError(
            f"unknown synthetic site profile {name!r}; choose one of "
            + ", ".join(PROFILES)
        )
    return PROFILES[name]
