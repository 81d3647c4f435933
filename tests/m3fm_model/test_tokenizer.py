"""Tests for the text tokenizer, the shipped vocabulary and its training script."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models

from m3fm_model.clinical import CLINICAL_FIELDS, FieldKind, random_record, serialize
from m3fm_model.tasks import all_questions
from m3fm_model.tokenizer import (
    DEFAULT_VOCAB_PATH,
    TextTokenizer,
    load_roberta_tokenizer,
    load_tokenizer,
)

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train_tokenizer.py"
PARAGRAPH = (
    "The patient is 68.0 years old. Gender is Female. Smoking duration is 37.5 pack "
    "years. The patient had diabetes diagnosed at 68.0 years old."
)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def train_script():
    spec = importlib.util.spec_from_file_location("train_tokenizer", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _full_record(rng):
    """Every one of the 49 fields present, numbers with random one-decimal values."""
    record = {}
    for name, field in CLINICAL_FIELDS.items():
        if field.kind is FieldKind.CATEGORY:
            record[name] = max(field.allowed, key=len)
        elif field.kind is FieldKind.FLAG:
            record[name] = True
        else:
            low, high = field.minimum, field.maximum
            record[name] = round(float(rng.uniform(low, high)), 1)
    return record


def test_shipped_special_ids(tok):
    assert (tok.bos_id, tok.pad_id, tok.eos_id, tok.mask_id) == (0, 1, 2, 4)
    assert tok.vocab_size == 2048
    assert DEFAULT_VOCAB_PATH.stat().st_size < 500_000


def test_encode_pads_masks_and_handles_missing(tok):
    ids, mask = tok.encode([PARAGRAPH, None, "Is there emphysema?", "  "], 64)
    assert ids.shape == mask.shape == (4, 64)
    assert ids.dtype == torch.long and mask.dtype == torch.bool
    for row in (0, 2):
        n = int(mask[row].sum())
        assert ids[row, 0] == tok.bos_id and ids[row, n - 1] == tok.eos_id
        assert mask[row, :n].all() and not mask[row, n:].any()
        assert (ids[row, n:] == tok.pad_id).all()
    for row in (1, 3):  # missing text: all padding, nothing to attend
        assert (ids[row] == tok.pad_id).all() and not mask[row].any()
    assert tok.decode(ids[0]) == PARAGRAPH


def test_truncation_keeps_eos(tok):
    ids, mask = tok.encode([PARAGRAPH], 6)
    assert mask.all()
    assert ids[0, 0] == tok.bos_id and ids[0, -1] == tok.eos_id
    full, _ = tok.encode_with_offsets(PARAGRAPH, 1000)
    assert ids[0, 1:5].tolist() == full[1:5]
    short, offsets = tok.encode_with_offsets(PARAGRAPH, 6)
    assert short == ids[0].tolist() and len(offsets) == 6


def test_offsets_point_at_token_text(tok):
    ids, offsets = tok.encode_with_offsets(PARAGRAPH, 200)
    assert offsets[0] == offsets[-1] == (0, 0)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    for token_id, (start, end) in zip(ids[1:-1], offsets[1:-1], strict=True):
        assert PARAGRAPH[start:end] == tok.decode([token_id]).lstrip()
    covered = "".join(PARAGRAPH[s:e] for s, e in offsets[1:-1])
    assert covered.replace(" ", "") == PARAGRAPH.replace(" ", "")


def test_full_record_fits_160_tokens(tok):
    rng = np.random.default_rng(0)
    lengths = [len(tok.encode_with_offsets(serialize(_full_record(rng)), 10_000)[0])
               for _ in range(20)]  # fmt: skip
    assert max(lengths) <= 160
    ids, _ = tok.encode([serialize(random_record(rng))], 160)
    assert tok.decode(ids[0]).startswith(("The patient", "Gender", "Race"))


def test_questions_decode_exactly(tok):
    questions = [q for _, q in all_questions()]
    ids, mask = tok.encode(questions, 50)
    assert mask.sum(1).max() < 50  # no question is truncated
    assert [tok.decode(row) for row in ids] == questions


def test_encode_validates_arguments(tok):
    with pytest.raises(ValueError, match="sequence of strings"):
        tok.encode("just one text", 10)
    with pytest.raises(ValueError, match="max_length"):
        tok.encode(["a"], 1)
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        tok.encode(["a", 3], 10)
    with pytest.raises(ValueError, match="1-D"):
        tok.decode(torch.zeros(2, 2, dtype=torch.long))


def _write_roberta_pair(tmp_path, *, with_mask=True):
    pieces = ["h", "e", "l", "o", "w", "r", "d", "Ġ", "he", "ll", "hell", "hello",
              "Ġw", "or", "Ġwor", "Ġworl", "Ġworld"]  # fmt: skip
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({p: i + 4 for i, p in enumerate(pieces)})
    if with_mask:
        vocab["<mask>"] = len(vocab)
    merges = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "Ġwor l",
              "Ġworl d"]  # fmt: skip
    vocab_path, merges_path = tmp_path / "vocab.json", tmp_path / "merges.txt"
    vocab_path.write_text(json.dumps(vocab), encoding="utf-8")
    merges_path.write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab_path, merges_path, vocab


def test_roberta_pair_loading(tmp_path):
    vocab_path, merges_path, vocab = _write_roberta_pair(tmp_path)
    tok = load_roberta_tokenizer(vocab_path, merges_path)
    assert tok.mask_id == vocab["<mask>"] == 21
    assert (tok.bos_id, tok.pad_id, tok.eos_id) == (0, 1, 2)
    assert tok.vocab_size == len(vocab)
    ids, mask = tok.encode(["hello world"], 6)
    assert ids[0].tolist() == [0, vocab["hello"], vocab["Ġworld"], 2, 1, 1]
    assert mask[0].tolist() == [True, True, True, True, False, False]
    assert tok.decode(ids[0]) == "hello world"
    _, offsets = tok.encode_with_offsets("hello world", 10)
    assert offsets == [(0, 0), (0, 5), (6, 11), (0, 0)]


def test_roberta_pair_errors(tmp_path):
    vocab_path, merges_path, _ = _write_roberta_pair(tmp_path, with_mask=False)
    with pytest.raises(ValueError, match="<mask>"):
        load_roberta_tokenizer(vocab_path, merges_path)
    with pytest.raises(ValueError, match="merges.txt not found.*nope.txt"):
        load_roberta_tokenizer(vocab_path, tmp_path / "nope.txt")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="bad.json"):
        load_roberta_tokenizer(tmp_path / "bad.json", merges_path)


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(ValueError, match="tokenizer file not found.*missing.json"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read tokenizer file.*broken.json"):
        load_tokenizer(tmp_path / "broken.json")
    Tokenizer(models.BPE()).save(str(tmp_path / "bare.json"))
    with pytest.raises(ValueError, match="lacks special tokens"):
        load_tokenizer(tmp_path / "bare.json")
    with pytest.raises(ValueError, match="lacks special tokens"):
        TextTokenizer(Tokenizer(models.BPE()))


def test_shipped_vocab_matches_clinical_templates(train_script):
    added = json.loads(DEFAULT_VOCAB_PATH.read_text(encoding="utf-8"))["added_tokens"]
    contents = {t["content"] for t in added if not t["special"]}
    assert contents == set(train_script.clinical_phrases()), (
        "clinical sentence templates changed: rerun scripts/train_tokenizer.py"
    )


def test_training_script_is_deterministic(tmp_path, train_script):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    train_script.main(["--out", str(a), "--records", "300", "--vocab-size", "700"])
    train_script.main(["--out", str(b), "--records", "300", "--vocab-size", "700"])
    assert a.read_bytes() == b.read_bytes()
    tok = load_tokenizer(a)
    assert tok.vocab_size == 700 and tok.mask_id == 4
    ids, _ = tok.encode([PARAGRAPH], 100)
    assert tok.decode(ids[0]) == PARAGRAPH
    with pytest.raises(ValueError, match="vocab_size must be"):
        train_script.train(tmp_path / "c.json", vocab_size=300, seed=0, records=10)
