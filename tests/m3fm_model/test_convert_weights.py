import json
from pathlib import Path

import pytest
import torch

from m3fm_model import load_authors_checkpoint
from m3fm_model.convert_weights import CheckpointFormatError, map_key
from m3fm_model.ct_encoder import physical_size_embedding

REF = (
    Path(__file__).resolve().parents[3]
    / "shared"
    / "testdata"
    / "m3fm_reference_tiny.pt"
)
KEYS = (
    Path(__file__).resolve().parents[3]
    / "shared"
    / "docs"
    / "m3fm-large-checkpoint-keys.tsv"
)
needs_ref = pytest.mark.skipif(
    not REF.exists(), reason=f"reference file {REF} not present"
)


@pytest.fixture(scope="module")
def ref():
    return torch.load(REF, weights_only=True)


@pytest.fixture(scope="module")
def ref_model(ref):
    return load_authors_checkpoint(ref["state_dict"], sizes=json.loads(ref["meta"]))


def _inputs(case):
    kw = {
        "question_ids": case["question_ids"],
        "question_mask": case["question_mask"].bool(),
        "text_ids": case["text_ids"],
        "text_mask": case["text_mask"].bool(),
    }
    if "ct" in case:
        kw.update(ct=case["ct"], spacing_mm=case["spacing_mm"])
    return kw


@needs_ref
@pytest.mark.parametrize("case", ["ct_scale0", "ct_scale1", "no_ct"])
def test_reproduces_authors_outputs(ref, ref_model, case):
    # Execute
    with torch.no_grad():
        out = ref_model(**_inputs(ref["inputs"][case]))
    # Assert
    want = ref["outputs"][case]
    torch.testing.assert_close(out.fused, want["fused"], atol=1e-5, rtol=0)
    for task in ("cancer_risk", "heart"):
        torch.testing.assert_close(
            out.logits[task], want[f"logits.{task}"][:, 0], atol=1e-5, rtol=0
        )
    torch.testing.assert_close(
        out.logits["cancer_risk"].sigmoid(),
        want["probs.cancer_risk"][:, 0],
        atol=1e-5,
        rtol=0,
    )
    torch.testing.assert_close(
        out.logits["heart"].softmax(-1), want["probs.heart"][:, 0], atol=1e-5, rtol=0
    )


@needs_ref
@pytest.mark.parametrize("case", ["ct_scale0", "ct_scale1"])
def test_size_embedding_matches(ref, case):
    inp = ref["inputs"][case]
    got = physical_size_embedding(
        inp["spacing_mm"], tuple(inp["patch_size"].tolist()), 48
    )
    torch.testing.assert_close(got, inp["size_embed"], atol=1e-6, rtol=0)


@needs_ref
def test_wrappers_and_prefix_accepted(ref):
    sd = {f"module.{k}": v for k, v in ref["state_dict"].items()}
    model = load_authors_checkpoint({"model": sd}, sizes=json.loads(ref["meta"]))
    assert model.config.hazard_activation == "none"
    assert set(model.tasks) == {"cancer_risk", "heart"}


@needs_ref
def test_loads_from_path(ref, tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"model": ref["state_dict"]}, path)
    model = load_authors_checkpoint(path, sizes=json.loads(ref["meta"]))
    assert model.config.ct.scales[0].crop == (16, 64, 48)


@needs_ref
def test_unknown_key_fails_with_its_name(ref):
    sd = dict(ref["state_dict"])
    sd["encoder_img.extra_layer.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointFormatError, match="encoder_img.extra_layer.weight"):
        load_authors_checkpoint(sd, sizes=json.loads(ref["meta"]))


@needs_ref
def test_used_conv_that_differs_from_patch_embed_fails(ref):
    sd = dict(ref["state_dict"])
    sd["img_tokenizer.conv2.weight"] = sd["img_tokenizer.conv2.weight"] + 1
    with pytest.raises(CheckpointFormatError, match="conv2"):
        load_authors_checkpoint(sd, sizes=json.loads(ref["meta"]))


@needs_ref
def test_missing_key_fails(ref):
    sd = dict(ref["state_dict"])
    del sd["task_attention.norm.bias"]
    with pytest.raises(CheckpointFormatError, match="task_attention.norm.bias"):
        load_authors_checkpoint(sd, sizes=json.loads(ref["meta"]))


def test_heads_not_inferable_without_sizes():
    sd = {
        "encoder_txt.embeddings.word_embeddings.weight": torch.zeros(10, 40),
    }
    with pytest.raises(CheckpointFormatError, match="heads"):
        load_authors_checkpoint(sd)


@pytest.mark.skipif(not KEYS.exists(), reason="key list not present")
def test_key_map_covers_every_authors_key():
    # Every key of the released large checkpoint maps to a parameter of our large model,
    # except the convs shared with patch embeddings and the fixed hazard matrix.
    from m3fm_model import build_model

    with torch.device("meta"):
        ours = dict(
            build_model("large", tasks=("cancer_risk", "heart")).named_parameters()
        )
    rows = [
        line.split("\t")
        for line in KEYS.read_text().splitlines()
        if line and not line.startswith("#")
    ]
    mapped = set()
    for name, shape in rows:
        if name.startswith("img_tokenizer.conv") or name.endswith(
            "upper_triagular_mask"
        ):
            continue
        new = map_key(name)
        assert new in ours, f"{name} -> {new}"
        assert str(tuple(ours[new].shape)) == shape.strip(), name
        mapped.add(new)
    assert mapped == set(ours)
