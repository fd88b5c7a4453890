"""Captions as token ids: a WordLevel tokenizer (HF ``tokenizers``) over the image world's closed vocabulary.

Every caption is ``[BOS] words [EOS]`` padded with ``[PAD]`` to the text model's position limit. The EOS id is
3, never 2: HF CLIP treats ``eos_token_id == 2`` as a legacy config and pools the text at the *highest* token
id instead of at the EOS (fluxforge.train.clip refuses it). A caption with a word outside the vocabulary, no
word, or more words than the limit allows is a data error here; curation rejects such rows before training.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerFast

from fluxforge.errors import DataError

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
SPECIALS = (PAD, UNK, BOS, EOS)  # ids 0, 1, 2, 3


def read_vocabulary(path: Path | str) -> list[str]:
    """The world's caption vocabulary (``vocab.json``: a JSON list of words)."""
    path = Path(path)
    try:
        vocab = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: cannot read the caption vocabulary ({err})") from None
    if not isinstance(vocab, list) or not all(isinstance(w, str) and w and " " not in w for w in vocab):
        raise DataError(f"{path}: the vocabulary must be a JSON list of single words")
    return vocab


def words(caption: str) -> list[str]:
    """The caption's words as the tokenizer splits them (lower-cased, on whitespace)."""
    return caption.lower().split()


def caption_tokens(caption: str) -> int:
    """Positions the caption takes in the text model: its words plus BOS and EOS."""
    return len(words(caption)) + 2


def out_of_vocabulary(caption: str, vocab: Sequence[str] | set[str]) -> list[str]:
    known = set(vocab)
    return [w for w in words(caption) if w not in known]


def caption_tokenizer(vocab: Sequence[str], max_length: int) -> PreTrainedTokenizerFast:
    """A WordLevel tokenizer over ``vocab`` that writes ``[BOS] ... [EOS]`` and pads to ``max_length``."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel

    if len(set(vocab)) != len(vocab) or set(vocab) & set(SPECIALS):
        raise DataError("the caption vocabulary must list each word once and hold no special token")
    table = {tok: i for i, tok in enumerate((*SPECIALS, *vocab))}
    tok = Tokenizer(WordLevel(table, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A {EOS}", special_tokens=[(BOS, 2), (EOS, 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, unk_token=UNK, bos_token=BOS, eos_token=EOS,
                                   model_max_length=max_length)
    assert fast.eos_token_id == 3 and fast.pad_token_id == 0, "special token ids moved"
    return fast


def encode_captions(tok: PreTrainedTokenizerFast, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention masks, ``(N, max_length)`` int64; a caption that does not fit or holds an unknown
    word is a DataError naming it (nothing is truncated or mapped to [UNK] silently)."""
    limit = tok.model_max_length
    vocab = tok.get_vocab()
    for i, text in enumerate(captions):
        if not words(text):
            raise DataError(f"caption {i} is empty")
        if caption_tokens(text) > limit:
            raise DataError(f"caption {i} needs {caption_tokens(text)} positions, over the text limit {limit}: {text[:80]!r}")
        if oov := [w for w in words(text) if w not in vocab]:
            raise DataError(f"caption {i} has words outside the vocabulary {oov}: {text[:80]!r}")
    enc = tok(list(captions), padding="max_length", max_length=limit, return_tensors="np")
    return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
