"""Byte-level BPE text tokenizer (RoBERTa-style) for clinical text and questions."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

__all__ = [
    "SPECIAL_TOKENS",
    "DEFAULT_VOCAB_PATH",
    "TextTokenizer",
    "load_tokenizer",
    "load_roberta_tokenizer",
]

logger = logging.getLogger(__name__)

# RoBERTa's special tokens; in the shipped vocabulary they have ids 0..4 in this order.
SPECIAL_TOKENS: tuple[str, ...] = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
DEFAULT_VOCAB_PATH = Path(__file__).resolve().parent / "assets" / "clinical_bpe.json"


class TextTokenizer:
    """Turns texts into padded id tensors with ``<s> ... </s>`` framing.

    Special ids are looked up by token string, so both the shipped vocabulary
    (``<mask>`` = 4) and RoBERTa's (``<mask>`` = 50264) work. Build it with
    ``load_tokenizer`` or ``load_roberta_tokenizer``.

    Args:
        tokenizer: A ``tokenizers.Tokenizer`` whose vocabulary holds the five
            ``SPECIAL_TOKENS``.
        source: Where the vocabulary came from (for error messages).
    """

    def __init__(self, tokenizer: Tokenizer, *, source: str = "<memory>") -> None:
        missing = [t for t in SPECIAL_TOKENS if tokenizer.token_to_id(t) is None]
        if missing:
            raise ValueError(
                f"tokenizer from {source} lacks special tokens {missing}; the "
                f"vocabulary must contain all of {list(SPECIAL_TOKENS)}"
            )
        # Framing and padding are done here, so switch off any stored in the file.
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tok = tokenizer
        self._source = source
        self._bos, self._pad, self._eos, _, self._mask = (
            tokenizer.token_to_id(t) for t in SPECIAL_TOKENS
        )

    @property
    def vocab_size(self) -> int:
        """Number of ids (embedding rows needed), special tokens included."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def pad_id(self) -> int:
        """Id of ``<pad>``."""
        return self._pad

    @property
    def bos_id(self) -> int:
        """Id of ``<s>``."""
        return self._bos

    @property
    def eos_id(self) -> int:
        """Id of ``</s>``."""
        return self._eos

    @property
    def mask_id(self) -> int:
        """Id of ``<mask>`` (masked-token pretraining)."""
        return self._mask

    def __repr__(self) -> str:
        return f"TextTokenizer(source={self._source!r}, vocab_size={self.vocab_size})"

    def _frame(self, ids: list[int], max_length: int) -> list[int]:
        """Add ``<s>``/``</s>`` and truncate so that ``</s>`` stays last."""
        return [self._bos, *ids[: max_length - 2], self._eos]

    def encode(
        self, texts: Sequence[str | None], max_length: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode a batch of texts to fixed-length id and mask tensors.

        A ``None`` (or blank) entry is a missing text: its row is all ``<pad>``
        with an all-False mask, so the model can ignore that modality.

        Args:
            texts: B texts (or None for missing).
            max_length: L, the fixed output length including ``<s>`` and ``</s>``
                (at least 2); longer texts are truncated keeping ``</s>`` last.

        Returns:
            ids (B, L) int64, right-padded with ``pad_id``; mask (B, L) bool,
            True = real token (attend).
        """
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise ValueError(
                "texts must be a sequence of strings (or None); wrap a single text "
                "in a list"
            )
        _check_max_length(max_length)
        ids = torch.full((len(texts), max_length), self._pad, dtype=torch.long)
        mask = torch.zeros((len(texts), max_length), dtype=torch.bool)
        for row, text in enumerate(texts):
            if text is None or (isinstance(text, str) and not text.strip()):
                continue
            if not isinstance(text, str):
                raise ValueError(
                    f"texts[{row}] must be a str or None, got {type(text).__name__}"
                )
            tokens = self._tok.encode(text, add_special_tokens=False).ids
            framed = self._frame(tokens, max_length)
            ids[row, : len(framed)] = torch.tensor(framed, dtype=torch.long)
            mask[row, : len(framed)] = True
        return ids, mask

    def encode_with_offsets(
        self, text: str, max_length: int
    ) -> tuple[list[int], list[tuple[int, int]]]:
        """Encode one text and give each token's character span in it.

        Args:
            text: The text.
            max_length: Maximum number of ids, ``<s>`` and ``</s>`` included.

        Returns:
            The framed, unpadded ids and one (start, end) per id with
            ``text[start:end]`` the token's characters (leading whitespace
            excluded); (0, 0) for ``<s>`` and ``</s>``.
        """
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        _check_max_length(max_length)
        encoding = self._tok.encode(text, add_special_tokens=False)
        keep = max_length - 2
        offsets = [_trim_left(text, s, e) for s, e in encoding.offsets[:keep]]
        return self._frame(encoding.ids, max_length), [(0, 0), *offsets, (0, 0)]

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Turn ids back into text, dropping special and padding tokens.

        Args:
            ids: A 1-D sequence or tensor of ids.

        Returns:
            The decoded text.
        """
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise ValueError(f"decode takes 1-D ids, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)


def _check_max_length(max_length: int) -> None:
    if isinstance(max_length, bool) or not isinstance(max_length, int):
        raise ValueError(f"max_length must be an int, got {max_length!r}")
    if max_length < 2:
        raise ValueError(
            f"max_length must be >= 2 (room for <s> and </s>), got {max_length}"
        )


def _trim_left(text: str, start: int, end: int) -> tuple[int, int]:
    """Move a span's start past leading whitespace (byte-level tokens carry it)."""
    while start < end and text[start].isspace():
        start += 1
    return start, end


def _require_file(path: str | Path, what: str) -> Path:
    """Return ``path`` as a Path, raising ValueError if it is not a readable file."""
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise ValueError(f"{what} not found: {str(resolved)!r}; check the path")
    return resolved


def load_tokenizer(path: str | Path | None = None) -> TextTokenizer:
    """Load a tokenizer from a ``tokenizers`` JSON file.

    Args:
        path: The JSON file; None loads the shipped clinical vocabulary
            (``m3fm_model/assets/clinical_bpe.json``).

    Returns:
        The tokenizer.

    Raises:
        ValueError: If the file is missing, unreadable, or lacks the special tokens.
    """
    resolved = _require_file(
        DEFAULT_VOCAB_PATH if path is None else path, "tokenizer file"
    )
    try:
        tokenizer = Tokenizer.from_file(str(resolved))
    except Exception as err:  # the Rust side raises plain Exception
        raise ValueError(
            f"cannot read tokenizer file {str(resolved)!r}: {err}; expected a "
            "tokenizers JSON file (Tokenizer.save)"
        ) from err
    logger.debug("loaded tokenizer %s", resolved)
    return TextTokenizer(tokenizer, source=str(resolved))


def load_roberta_tokenizer(
    vocab_json: str | Path, merges_txt: str | Path
) -> TextTokenizer:
    """Build RoBERTa's byte-level BPE tokenizer from its vocab.json and merges.txt.

    Args:
        vocab_json: Path to RoBERTa's ``vocab.json`` (token -> id).
        merges_txt: Path to RoBERTa's ``merges.txt``.

    Returns:
        The tokenizer (special ids as in the vocabulary, e.g. ``<mask>`` = 50264).

    Raises:
        ValueError: If a file is missing or invalid, or a special token is absent.
    """
    vocab_path = _require_file(vocab_json, "RoBERTa vocab.json")
    merges_path = _require_file(merges_txt, "RoBERTa merges.txt")
    try:
        with vocab_path.open(encoding="utf-8") as handle:
            vocab = json.load(handle)
        if not isinstance(vocab, dict):
            raise TypeError("top level is not an object")
        model = models.BPE.from_file(str(vocab_path), str(merges_path))
    except Exception as err:
        raise ValueError(
            f"cannot read RoBERTa files {str(vocab_path)!r} / {str(merges_path)!r}: "
            f"{err}; expected a token->id JSON object and a BPE merges file"
        ) from err
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    present = [t for t in SPECIAL_TOKENS if t in vocab]
    tokenizer.add_special_tokens(present)  # existing entries keep their ids
    return TextTokenizer(tokenizer, source=str(vocab_path))
