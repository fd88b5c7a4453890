"""Train a byte-level BPE tokenizer (HF ``tokenizers``) and pack documents into token streams.

Each slice (``<domain>-<year>``) becomes one flat ``uint16``/``uint32`` array of token
ids with an end-of-text token after every document. Training samples fixed-length
windows from these streams, so packing is free and the order is fixed by a seed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from fluxforge.errors import DataError

EOS = "<|endoftext|>"
PAD = "<|pad|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return wrap(tok)


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD, unk_token=None)


def load_tokenizer(path: Path | str) -> PreTrainedTokenizerFast:
    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.exists():
        raise DataError(f"{file}: tokenizer not found (run the tokenize stage first)")
    return wrap(Tokenizer.from_file(str(file)))


def dtype_for(vocab_size: int) -> type:
    return np.uint16 if vocab_size <= 65535 else np.uint32


def encode_stream(tok: PreTrainedTokenizerFast, texts: Sequence[str]) -> np.ndarray:
    """Token ids of all texts, each followed by EOS, as one array."""
    eos = tok.eos_token_id
    ids = tok(list(texts), add_special_tokens=False)["input_ids"] if texts else []
    total = sum(len(x) + 1 for x in ids)
    out = np.empty(total, dtype=dtype_for(len(tok)))
    pos = 0
    for x in ids:
        out[pos : pos + len(x)] = x
        out[pos + len(x)] = eos
        pos += len(x) + 1
    return out


def load_streams(token_dir: Path | str, slices: Sequence[str]) -> dict[str, np.ndarray]:
    """Memory-map the packed streams of the given slices."""
    token_dir = Path(token_dir)
    index = json.loads((token_dir / "index.json").read_text())
    out = {}
    for s in slices:
        if s not in index["slices"]:
            raise DataError(f"slice '{s}' has no documents left after curation, so no tokens in {token_dir} "
                            f"(slices with tokens: {sorted(index['slices'])}); drop it from the params or add data")
        meta = index["slices"][s]
        out[s] = np.memmap(token_dir / meta["file"], dtype=meta["dtype"], mode="r", shape=(meta["tokens"],))
    return out
