"""Train a byte-level BPE tokenizer (HF ``tokenizers``) and pack documents into token streams.

Each slice (``<domain>-<year>``) becomes one flat ``uint16``/``uint32`` array of token
ids with an end-of-text token after every document. Training samples fixed-length
windows from these streams, so packing is free and the order is fixed by a seed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from fluxforge.data.documents import slice_of
from fluxforge.errors import DataError
from fluxforge.io import atomic_dir, write_json

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


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model")


def load_pretrained_tokenizer(path: Path | str) -> PreTrainedTokenizerBase:
    """A base model's own tokenizer (Llama, Qwen, ...) from its directory, never from the network.

    A base model only understands the ids of the tokenizer it was trained with, so the pipeline
    must pack its streams with that tokenizer instead of training one. ``trust_remote_code`` stays
    off: a tokenizer that needs custom Python from the checkpoint is refused, not executed.
    Base tokenizers often have no pad token (Llama); the EOS token stands in, which is safe here
    because packed streams never pad and attention masks hide padding in batched evaluation.
    A ``tokenizer.json`` saved as a generic fast tokenizer (this pipeline's own, Llama 3's) is
    loaded exactly as written: transformers 5's AutoTokenizer would otherwise pick a class from
    config.json's model_type (e.g. Qwen2Tokenizer) and rebuild the pre-tokenizer, changing ids.
    """
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir() or not any((path / f).exists() for f in TOKENIZER_FILES):
        raise DataError(f"{path}: no tokenizer files (one of {list(TOKENIZER_FILES)}) in this model directory")
    try:
        settings = json.loads((path / "tokenizer_config.json").read_text()) if (path / "tokenizer_config.json").exists() else {}
        exact = settings.get("tokenizer_class") in ("PreTrainedTokenizerFast", "TokenizersBackend") \
            and (path / "tokenizer.json").exists()
        loader = PreTrainedTokenizerFast if exact else AutoTokenizer
        tok = loader.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except Exception as err:  # noqa: BLE001 - transformers raises many types; re-raised with the path
        raise DataError(f"{path}: cannot load the model's tokenizer: {err}") from err
    if tok.eos_token_id is None:
        raise DataError(f"{path}: the tokenizer has no eos_token; documents are packed with EOS after each one "
                        f"(set eos_token in {path / 'tokenizer_config.json'})")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


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


# MeCo's --use_short_url (princeton-pli/MeCo datatools/mds_pack_data.py): drop the scheme, keep what comes
# before the first '/', e.g. https://en.wikipedia.org/wiki/X -> en.wikipedia.org. Any scheme is dropped (MeCo:
# http/https only), so a file:///... fallback URL has no host; '?' and '#' also end the host (they cannot be in one).
_SCHEME = r"^[A-Za-z][A-Za-z0-9+.\-]*://"
_PATH = r"(?s)[/?#].*$"


def short_url(url: str | None) -> str:
    """The host part of ``url`` that MeCo conditions on; "" when there is no URL (or no host)."""
    if url is None or (isinstance(url, float) and url != url):  # None or a pandas NaN
        return ""
    return re.sub(_PATH, "", re.sub(_SCHEME, "", str(url).strip()))


def short_urls(urls: Sequence[str | None] | pd.Series) -> list[str]:
    """``short_url`` of every URL, vectorised for the tokenize stage's millions of documents."""
    s = pd.Series(urls, dtype=object).fillna("").astype(str).str.strip()
    return s.str.replace(_SCHEME, "", regex=True).str.replace(_PATH, "", regex=True).tolist()


def read_index(token_dir: Path | str) -> dict:
    """The tokenize stage's ``index.json``: vocabulary size, special ids and each slice's stream."""
    file = Path(token_dir) / "index.json"
    if not file.exists():
        raise DataError(f"{file} not found: run the tokenize stage first")
    return json.loads(file.read_text())


def load_streams(token_dir: Path | str, slices: Sequence[str]) -> dict[str, np.ndarray]:
    """Memory-map the packed streams of the given slices."""
    token_dir = Path(token_dir)
    index = read_index(token_dir)
    out = {}
    for s in slices:
        if s not in index["slices"]:
            raise DataError(f"slice '{s}' has no documents left after curation, so no tokens in {token_dir} "
                            f"(slices with tokens: {sorted(index['slices'])}); drop it from the params or add data")
        meta = index["slices"][s]
        out[s] = np.memmap(token_dir / meta["file"], dtype=meta["dtype"], mode="r", shape=(meta["tokens"],))
    return out


def pack_corpus(docs: pd.DataFrame, tok: PreTrainedTokenizerBase, out_dir: Path | str, source: str = "trained") -> dict:
    """Write ``out_dir`` (atomically): the tokenizer, one packed stream per slice and its hosts, and ``index.json``.

    Documents are packed per slice in (timestamp, id) order, so the streams are the same on every rerun.
    Returns the stage's metrics: vocabulary size and tokens per slice.
    """
    docs = docs.assign(slice=slice_of(docs))
    docs = docs.sort_values(["timestamp", "id"]).reset_index(drop=True)
    dtype = dtype_for(len(tok))
    index: dict = {"vocab_size": len(tok), "eos_id": tok.eos_token_id, "pad_id": tok.pad_token_id, "slices": {},
                   "tokenizer": source}
    with atomic_dir(Path(out_dir)) as tmp:
        tok.save_pretrained(tmp)
        for name, group in docs.groupby("slice", sort=True):
            ids = encode_stream(tok, group["text"].tolist())
            ids.astype(dtype).tofile(tmp / f"{name}.bin")
            # each document's host in stream order: MeCo (train/meco.py) conditions training on "URL: <host>"
            write_json(tmp / f"{name}.hosts.json", short_urls(group["url"]))
            index["slices"][name] = {"file": f"{name}.bin", "tokens": int(len(ids)), "docs": int(len(group)),
                                     "dtype": np.dtype(dtype).name, "hosts": f"{name}.hosts.json"}
        write_json(tmp / "index.json", index)
    return {"vocab_size": len(tok), "tokens": sum(s["tokens"] for s in index["slices"].values()),
            "tokens_per_slice": {k: v["tokens"] for k, v in index["slices"].items()}}
