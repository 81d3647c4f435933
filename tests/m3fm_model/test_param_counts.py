import pytest
import torch

from m3fm_model import build_model, count_parameters

# The authors' totals count their fixed 6x6 upper-triangular hazard matrix (36 values) as
# parameters; ours computes the same cumulative sum with torch.cumsum and holds no such
# tensor, so each preset has exactly 36 fewer parameters.
AUTHORS = {"base": 251_708_459, "large": 496_004_651, "huge": 856_837_163}


@pytest.mark.parametrize("preset", ["base", "large", "huge"])
def test_parameter_count_matches_authors(preset):
    with torch.device("meta"):
        model = build_model(preset, tasks=("cancer_risk",))
    assert count_parameters(model) == AUTHORS[preset] - 36


def test_large_breakdown():
    with torch.device("meta"):
        m = build_model("large", tasks=("cancer_risk",))

    def n(prefix):
        return sum(p.numel() for k, p in m.named_parameters() if k.startswith(prefix))

    assert n("ct_encoder.tokenizers") == 15_564_800
    assert n("ct_encoder") - n("ct_encoder.tokenizers") == 302_311_424
    assert n("text_encoder") == 124_055_040
    assert n("task_attention.blocks") + n("task_attention.norm") == 50_386_944
    assert n("heads.cancer_risk") == 1_058_859 - 36
