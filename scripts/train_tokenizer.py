"""Train the shipped byte-level BPE vocabulary on synthetic clinical text."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, ByteLevelBPETokenizer, Regex, pre_tokenizers

from m3fm_model import clinical
from m3fm_model.tasks import all_questions
from m3fm_model.tokenizer import DEFAULT_VOCAB_PATH, SPECIAL_TOKENS

logger = logging.getLogger("train_tokenizer")

_LOBES = (
    "right upper lobe", "right middle lobe", "right lower lobe",
    "left upper lobe", "left lower lobe", "lingula",
)  # fmt: skip
_KINDS = ("solid", "part-solid", "ground-glass", "calcified", "nonsolid")
_MARGINS = ("smooth", "spiculated", "lobulated", "poorly defined")
_NODULE_TEMPLATES = (
    "A {size} mm {kind} nodule in the {lobe}.",
    "There is a {size} mm {kind} nodule in the {lobe} with {margin} margins.",
    "{size} mm {kind} nodule, {lobe}, {margin} margin.",
    "New {size} mm {kind} nodule in the {lobe}, not seen on the prior exam.",
    "Stable {size} mm {kind} nodule in the {lobe} compared with the prior study.",
    "Multiple small nodules; the largest is a {size} mm {kind} nodule in the {lobe}.",
    "Part-solid nodule in the {lobe} measuring {size} mm with a {solid} mm solid "
    "component.",
    "No suspicious pulmonary nodules.",
    "Calcified granuloma in the {lobe}, benign.",
    "Growing {kind} nodule in the {lobe}, now {size} mm, previously {prior} mm.",
)


def nodule_description(rng: np.random.Generator) -> str:
    """Write one report-style nodule description (Lung-RADS task input).

    Args:
        rng: Source of randomness.

    Returns:
        One or two sentences describing pulmonary nodules.
    """
    size = float(rng.choice([rng.integers(2, 31), round(rng.uniform(2, 30), 1)]))
    text = str(rng.choice(_NODULE_TEMPLATES)).format(
        size=f"{size:g}",
        kind=rng.choice(_KINDS),
        lobe=rng.choice(_LOBES),
        margin=rng.choice(_MARGINS),
        solid=int(rng.integers(1, max(2, int(size)))),
        prior=int(rng.integers(2, max(3, int(size)))),
    )
    return text[0].upper() + text[1:]


def build_corpus(rng: np.random.Generator, records: int) -> Iterator[str]:
    """Yield the training texts: clinical paragraphs, questions, nodule findings.

    Args:
        rng: Source of randomness.
        records: Number of synthetic clinical records.

    Returns:
        An iterator over texts (deterministic given ``rng``'s state).
    """
    for _ in range(records):
        completeness = float(rng.uniform(0.3, 1.0))
        yield clinical.serialize(clinical.random_record(rng, completeness=completeness))
    for _ in range(max(records // 4, 1)):
        yield nodule_description(rng)
    for _ in range(20):  # questions are few; repeat them so their words get merged
        yield from (question for _, question in all_questions())


# GPT-2's split (RoBERTa) except that a decimal number stays one piece: "68.0".
_WORD_SPLIT = (
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\d+(?:\.\d+)?| ?[^\s\p{L}\p{N}]+"
    r"|\s+(?!\S)|\s+"
)


def word_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """RoBERTa's byte-level word split, keeping decimal numbers whole.

    Returns:
        The pre-tokenizer (stored in the saved JSON).
    """
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_WORD_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def clinical_phrases() -> list[str]:
    """Fixed phrases of the clinical sentences, to add as whole tokens.

    Category and flag sentences become one token each; number and age sentences
    become (head, number, tail). Each phrase is added with and without a leading
    space (first vs later sentence). Without them a record with all 49 fields
    needs ~500 tokens; with them it fits in 160.

    Returns:
        The phrases, sorted.
    """
    pieces: set[str] = set()
    for name, field in clinical.CLINICAL_FIELDS.items():
        if field.kind is clinical.FieldKind.CATEGORY:
            pieces.update(clinical.serialize({name: v}) for v in field.allowed)
            continue
        if field.kind is not clinical.FieldKind.NUMBER:  # flags, age at diagnosis
            pieces.add(clinical.serialize({name: True}))
        if field.kind is not clinical.FieldKind.FLAG:
            value = max(field.minimum, 50.0)
            head, tail = clinical.serialize({name: value}).split(f" {value:.1f}")
            pieces.update((head, tail.strip()))
    return sorted(pieces | {" " + piece for piece in pieces})


def train(out: Path, *, vocab_size: int, seed: int, records: int) -> Path:
    """Train the vocabulary and save it as a ``tokenizers`` JSON file.

    Args:
        out: Output JSON path.
        vocab_size: Target vocabulary size, special tokens included.
        seed: Seed of the synthetic corpus.
        records: Number of synthetic clinical records in the corpus.

    Returns:
        The written path.
    """
    phrases = clinical_phrases()
    minimum = 256 + len(SPECIAL_TOKENS) + len(phrases)
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size must be >= {minimum} (256 bytes, the special tokens and "
            f"{len(phrases)} clinical phrases), got {vocab_size}"
        )
    tokenizer = ByteLevelBPETokenizer(add_prefix_space=False, lowercase=False)
    tokenizer.pre_tokenizer = word_pre_tokenizer()
    tokenizer.train_from_iterator(
        build_corpus(np.random.default_rng(seed), records),
        vocab_size=vocab_size - len(phrases),
        min_frequency=2,
        show_progress=False,
        special_tokens=list(SPECIAL_TOKENS),
    )
    # Not normalized: matched on the raw text and decoded verbatim.
    tokenizer.add_tokens([AddedToken(p, normalized=False) for p in phrases])
    out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out))
    logger.info("saved %d-token vocabulary to %s", tokenizer.get_vocab_size(), out)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point.

    Args:
        argv: Arguments (defaults to ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_VOCAB_PATH)
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--records", type=int, default=20000)
    args = parser.parse_args(argv)
    if args.records < 1:
        parser.error("--records must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    train(
        args.out,
        vocab_size=args.vocab_size,
        seed=args.seed,
        records=args.records,
    )


if __name__ == "__main__":
    main()
