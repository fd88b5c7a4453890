"""Exact and MinHash-LSH near-duplicate removal across all slices, vectorised, with a persisted index.

Exact: a 64-bit hash of the normalised text (lowercase, punctuation removed, whitespace
collapsed). Near: word n-gram shingles (datatrove's ``MinhashConfig``: 5-grams, 14 bands x 8
rows, seed 1), MinHash signatures, candidate pairs from LSH bands, confirmed by the exact
shingle Jaccard or the signature agreement (``DedupConfig.confirm``), clusters by connected
components.

One representative per cluster is kept: the earliest timestamp, then the smallest id. Clusters
span slices, so a later slice never re-adds what an earlier one kept. A :class:`MinHashIndex`
holds the keepers of earlier runs; ``dedup(df, cfg, index=...)`` rejects new documents that
duplicate one of them (the index always wins: what an earlier run published stays published).

Everything is numpy over whole batches, with no Python loop per document or shingle:

* words: pyarrow's regex/split kernels, each distinct word hashed once with
  ``pandas.util.hash_array`` (SipHash with a fixed key, so hashes are stable across processes,
  which a persisted index needs; Python's ``hash`` is salted per process);
* n-grams: a polynomial rolling combination of n shifted word-hash arrays, then ``fmix64``;
* MinHash: per permutation k, ``h_k(x) = a_k * x + b_k (mod 2^64)`` on the 32 high bits x of
  the mixed shingle hash, the multiply-add-shift family, 2-independent (Dietzfelbinger 1996),
  ordered by its high bits; ``np.minimum.reduceat`` takes the per-document minimum in batches.

For a shard runner, ``signatures``/``shingle_sets``/``exact_hashes`` work on any split of the
texts (a document's values do not depend on its batch) and ``find_duplicates`` clusters
precomputed signatures.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from fluxforge.config import DedupConfig
from fluxforge.io import atomic_dir

_NORM = re.compile(r"[^\w\s]")
# The same rule for pyarrow's RE2, which reads \w and \s as ASCII: runs of anything but Python's
# Unicode \w (letters, digits, underscore) and ASCII whitespace become one space, so the Unicode
# separators Python's str.split() breaks on (NBSP, U+2003, ...) are gone before an ASCII split.
_NON_WORD = r"[^\p{L}\p{N}_\t\n\x0b\x0c\r ]+"
_M1, _M2 = np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53)  # MurmurHash3 fmix64 constants
_ROLL = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier for the n-gram polynomial (golden ratio)
_SPACE = pa.scalar(" ", pa.large_string())
_PAD = np.uint64(0)  # word slot filling documents shorter than n words, so each has one shingle
_SHINGLES_PER_BATCH = 1 << 14  # x (bands*rows) uint64 = 14 MiB of scratch per MinHash batch
_PAIRS_PER_BATCH = 1 << 13  # < 2^16, the pair-position field of _packed_sets keys
_MAX_BUCKET_OFFSET = 64  # in an LSH bucket, each doc is paired with up to this many bucket neighbours
INDEX_FORMAT = 1


# ----------------------------------------------------------------------------- normalising and hashing
def _normalised(texts: Sequence[str] | pd.Series) -> pa.Array:
    arr = pa.array(list(texts) if not isinstance(texts, pd.Series) else texts.tolist(), type=pa.large_string())
    if arr.null_count:
        bad = np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[:5].tolist()
        raise ValueError(f"dedup: text is null at positions {bad} (of {len(arr)}); drop or fill them before dedup")
    return pc.ascii_trim_whitespace(pc.replace_substring_regex(pc.utf8_lower(arr), _NON_WORD, " "))


def _words(texts: Sequence[str] | pd.Series) -> pa.Array:
    """The normalised words of each text (a list array): computed once, shared by exact and near dedup."""
    return pc.ascii_split_whitespace(_normalised(texts))


def normalise_many(texts: Sequence[str] | pd.Series) -> list[str]:
    """``normalise`` for a batch, vectorised (what exact and near dedup use)."""
    return pc.binary_join(_words(texts), _SPACE).to_pylist()


def normalise(text: str) -> str:
    """Lowercase, punctuation to spaces, whitespace collapsed: the text exact dedup compares (datatrove's simplify_text, minus diacritics/number folding)."""
    return " ".join(_NORM.sub(" ", text.lower()).split())


def _fmix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser: a bijective avalanche mix (multiplications wrap mod 2^64 by design)."""
    x = x ^ (x >> np.uint64(33))
    x = x * _M1
    x = x ^ (x >> np.uint64(33))
    x = x * _M2
    return x ^ (x >> np.uint64(33))


def _stable_hash(strings: pa.Array) -> np.ndarray:
    """Process-independent uint64 hash of each string (SipHash-2-4, pandas' fixed default key)."""
    return pd.util.hash_array(strings.to_numpy(zero_copy_only=False).astype(object), categorize=False)


def exact_hashes(texts: Sequence[str] | pd.Series | pa.Array) -> np.ndarray:
    """uint64 hash of each normalised text; equal hashes = exact duplicates (collision odds ~n^2/2^65)."""
    words = texts if isinstance(texts, pa.Array) else _words(texts)
    return _stable_hash(pc.binary_join(words, _SPACE))


class Shingles(NamedTuple):
    """Ragged per-document shingle hashes: document i owns ``values[offsets[i]:offsets[i+1]]``."""

    values: np.ndarray  # uint64
    offsets: np.ndarray  # int64, len = docs + 1

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def take(self, docs: np.ndarray) -> Shingles:
        lengths = np.diff(self.offsets)[docs]
        return Shingles(self.values[_ragged_arange(self.offsets[docs], lengths)], _offsets(lengths))

    def concat(self, other: Shingles) -> Shingles:
        """These documents' sets followed by ``other``'s."""
        return Shingles(np.concatenate([self.values, other.values]),
                        np.concatenate([self.offsets, other.offsets[1:] + self.offsets[-1]]))


def _offsets(lengths: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)


def _ragged_arange(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """concat(arange(s, s + l) for s, l in zip(starts, lengths)), without a Python loop."""
    lengths = np.asarray(lengths, dtype=np.int64)
    firsts = _offsets(lengths)[:-1]
    return np.repeat(np.asarray(starts, dtype=np.int64) - firsts, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)


def _word_hashes(words: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(hash of every word in order, words per document); each distinct word is hashed once."""
    lengths = pc.list_value_length(words).to_numpy(zero_copy_only=False).astype(np.int64)
    encoded = pc.list_flatten(words).dictionary_encode()
    vocab = _stable_hash(encoded.dictionary) if len(encoded.dictionary) else np.zeros(0, np.uint64)
    return vocab[encoded.indices.to_numpy(zero_copy_only=False)], lengths


def shingle_sets(texts: Sequence[str] | pd.Series | pa.Array, cfg: DedupConfig) -> Shingles:
    """Word ``cfg.ngram``-gram hashes per document, in text order (a text of fewer words is one shingle, as in ``shingles``).

    A repeated n-gram appears more than once; MinHash and ``pair_jaccard`` treat the lists as sets.
    """
    n = cfg.ngram
    word_hash, lengths = _word_hashes(texts if isinstance(texts, pa.Array) else _words(texts))
    padded = np.maximum(lengths, n)
    starts = _offsets(padded)
    buf = np.full(int(starts[-1]), _PAD, dtype=np.uint64)
    buf[_ragged_arange(starts[:-1], lengths)] = word_hash
    m = max(len(buf) - n + 1, 0)
    gram = np.zeros(m, dtype=np.uint64)
    for j in range(n):  # Horner: ((w0*R + w1)*R + w2)... keeps word order
        gram = gram * _ROLL + buf[j : j + m]
    gram = _fmix64(gram)
    counts = padded - n + 1
    return Shingles(gram[_ragged_arange(starts[:-1], counts)], _offsets(counts))


def _permutations(cfg: DedupConfig) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(cfg.seed)
    k = cfg.bands * cfg.rows
    a = rng.integers(0, np.iinfo(np.uint64).max, size=k, dtype=np.uint64, endpoint=True) | np.uint64(1)
    b = rng.integers(0, np.iinfo(np.uint64).max, size=k, dtype=np.uint64, endpoint=True)
    return a, b


def minhash(sh: Shingles, cfg: DedupConfig) -> np.ndarray:
    """(docs, bands*rows) uint64 MinHash signatures of precomputed shingles, in fixed-size batches."""
    a, b = _permutations(cfg)
    docs = len(sh)
    sig = np.full((len(a), docs), np.iinfo(np.uint64).max, dtype=np.uint64)  # (hashes, docs): reduceat runs along rows
    x = sh.values >> np.uint64(32)
    doc_of = np.repeat(np.arange(docs), np.diff(sh.offsets))
    for lo in range(0, len(x), _SHINGLES_PER_BATCH):
        hi = min(lo + _SHINGLES_PER_BATCH, len(x))
        h = np.multiply(a[:, None], x[None, lo:hi])
        h += b[:, None]
        d = doc_of[lo:hi]
        seg = np.flatnonzero(np.r_[True, d[1:] != d[:-1]])  # each document's first shingle in this batch
        mins = np.minimum.reduceat(h, seg, axis=1)
        sig[:, d[seg]] = np.minimum(sig[:, d[seg]], mins)  # a document split across batches keeps the smaller
    return np.ascontiguousarray(sig.T)


def signatures(texts: Sequence[str] | pd.Series, cfg: DedupConfig) -> np.ndarray:
    """(docs, bands*rows) uint64 MinHash signatures; a document's row does not depend on its batch."""
    return minhash(shingle_sets(texts, cfg), cfg)


minhash_signatures = signatures


# ----------------------------------------------------------------------------- exact Jaccard (reference)
def shingles(text: str, n: int) -> set[str]:
    words = normalise(text).split()
    return {" ".join(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}


def jaccard(a: str, b: str, n: int = 5) -> float:
    """Exact Jaccard similarity of word n-gram shingle sets (what MinHash estimates); the plain-Python reference."""
    sa, sb = shingles(a, n), shingles(b, n)
    return len(sa & sb) / max(1, len(sa | sb))


def _packed_sets(sh: Shingles, docs: np.ndarray) -> np.ndarray:
    """Sorted unique keys (position in ``docs`` << 48 | top 48 bits of the shingle hash) of the listed documents.

    One uint64 key per (pair side, shingle) lets a single ``np.sort`` (vectorised, ~20x faster
    than ``np.lexsort`` on two keys) do the set work; two different shingles of one document
    share 48 top bits with odds ~size^2 / 2^49 (1e-10 for 300 shingles).
    """
    lengths = np.diff(sh.offsets)[docs]
    vals = sh.values[_ragged_arange(sh.offsets[docs], lengths)]
    keys = (np.repeat(np.arange(len(docs), dtype=np.uint64), lengths) << np.uint64(48)) | (vals >> np.uint64(16))
    keys = np.sort(keys)
    return keys[np.r_[True, keys[1:] != keys[:-1]]] if len(keys) else keys


def pair_jaccard(sh: Shingles, pairs: np.ndarray) -> np.ndarray:
    """Exact Jaccard of each (i, j) row pair's shingle sets (up to 48-bit hash collisions, see ``_packed_sets``)."""
    out = np.empty(len(pairs), dtype=np.float64)
    shift = np.uint64(48)
    for lo in range(0, len(pairs), _PAIRS_PER_BATCH):
        p = pairs[lo : lo + _PAIRS_PER_BATCH]
        a, b = _packed_sets(sh, p[:, 0]), _packed_sets(sh, p[:, 1])
        size_a = np.bincount((a >> shift).astype(np.int64), minlength=len(p))
        size_b = np.bincount((b >> shift).astype(np.int64), minlength=len(p))
        both = np.sort(np.concatenate([a, b]))
        same = both[1:][both[1:] == both[:-1]]  # each key is unique per side, so a repeat = in both sets
        inter = np.bincount((same >> shift).astype(np.int64), minlength=len(p))
        out[lo : lo + len(p)] = inter / np.maximum(size_a + size_b - inter, 1)
    return out


# ----------------------------------------------------------------------------- LSH and clustering
def band_keys(sig: np.ndarray, cfg: DedupConfig) -> np.ndarray:
    """(rows, bands) uint64: one bucket key per LSH band (its ``rows`` MinHash values mixed); equal key = same bucket."""
    keys = np.zeros((len(sig), cfg.bands), dtype=np.uint64)
    for band in range(cfg.bands):
        cols = sig[:, band * cfg.rows : (band + 1) * cfg.rows]
        key = np.zeros(len(sig), dtype=np.uint64)
        for j in range(cfg.rows):
            key = _fmix64(key * _ROLL + cols[:, j])
        keys[:, band] = key
    return keys


def bucket_pairs(key: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(m, 2) row pairs of one band that share a bucket: each row with its next ``_MAX_BUCKET_OFFSET`` bucket members.

    Members are taken in row order, so any subset of rows holding whole buckets (a shuffle partition)
    gives exactly the pairs the whole table gives for those buckets.
    """
    by_row = np.argsort(rows, kind="stable")
    key, rows = key[by_row], rows[by_row]
    order = np.argsort(key, kind="stable")
    sk, sr = key[order], rows[order]
    found = [np.zeros((0, 2), dtype=np.int64)]
    for off in range(1, min(_MAX_BUCKET_OFFSET, len(key) - 1) + 1):
        same = np.flatnonzero(sk[off:] == sk[:-off])
        if not len(same):
            break
        found.append(np.stack([sr[same], sr[same + off]], axis=1).astype(np.int64))
    return np.concatenate(found)


def unique_pairs(found: Sequence[np.ndarray], n: int, fixed: int = 0) -> np.ndarray:
    """Sorted unique (i < j) pairs of ``found``, dropping pairs of two rows ``< fixed`` (index documents)."""
    if not found or not sum(len(f) for f in found):
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.sort(np.concatenate(found), axis=1).astype(np.int64)
    pairs = pairs[pairs[:, 1] >= fixed]
    key = np.unique(pairs[:, 0] * n + pairs[:, 1])  # 1-D unique: far faster than unique(axis=0)
    return np.stack([key // n, key % n], axis=1)


def candidate_pairs(sig: np.ndarray, cfg: DedupConfig, fixed: int = 0) -> np.ndarray:
    """(m, 2) int64 row pairs (i < j) that share all ``rows`` values of some band.

    Rows ``< fixed`` are index documents: pairs between two of them are skipped (already deduped).
    Within a bucket each row is paired with its next ``_MAX_BUCKET_OFFSET`` members, so a huge
    bucket (templated text) costs O(size) pairs, not O(size^2); its chain still links it.
    """
    keys, rows = band_keys(sig, cfg), np.arange(len(sig), dtype=np.int64)
    return unique_pairs([bucket_pairs(keys[:, band], rows) for band in range(cfg.bands)], len(sig), fixed)


def confirm_pairs(pairs: np.ndarray, sig: np.ndarray, cfg: DedupConfig, sh: Shingles | None = None) -> np.ndarray:
    """Boolean mask of candidate pairs that are duplicates under ``cfg.confirm`` and ``cfg.threshold``."""
    if cfg.confirm == "jaccard":
        if sh is None:
            raise ValueError("dedup.confirm='jaccard' needs shingle sets; pass sh=shingle_sets(texts, cfg)")
        return pair_jaccard(sh, pairs) >= cfg.threshold
    ok = np.empty(len(pairs), dtype=bool)
    for lo in range(0, len(pairs), _PAIRS_PER_BATCH):
        p = pairs[lo : lo + _PAIRS_PER_BATCH]
        ok[lo : lo + len(p)] = (sig[p[:, 0]] == sig[p[:, 1]]).mean(axis=1) >= cfg.threshold
    return ok


def representatives(n: int, pairs: np.ndarray) -> np.ndarray:
    """For rows in priority order, the smallest row of each one's connected component (itself if alone)."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    first = np.full(label.max() + 1, n, dtype=np.int64)
    np.minimum.at(first, label, np.arange(n))
    return first[label]


def find_duplicates(sig: np.ndarray, cfg: DedupConfig, sh: Shingles | None = None,
                    fixed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cluster precomputed signatures (rows in priority order): (representative row per row, confirmed pairs)."""
    pairs = candidate_pairs(sig, cfg, fixed)
    pairs = pairs[confirm_pairs(pairs, sig, cfg, sh)] if len(pairs) else pairs
    return representatives(len(sig), pairs), pairs


# ----------------------------------------------------------------------------- persisted index
class MinHashIndex:
    """Signatures, exact hashes and ids (plus shingle sets for ``confirm='jaccard'``) of kept documents.

    Saved as a directory (``index.json`` with the config it was built with, ``ids.parquet``,
    ``signatures.npy``, and ``shingles.npy`` + ``shingle_offsets.npy``); loading with a config
    whose ngram/bands/rows/seed/confirm differ is an error, since those signatures could never match.
    """

    KEYS = ("ngram", "bands", "rows", "seed", "confirm")

    def __init__(self, cfg: DedupConfig) -> None:
        self.cfg = cfg
        self.ids = np.zeros(0, dtype=object)
        self.exact = np.zeros(0, dtype=np.uint64)
        self.signatures = np.zeros((0, cfg.bands * cfg.rows), dtype=np.uint64)
        self.shingles = Shingles(np.zeros(0, np.uint64), np.zeros(1, np.int64))

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, ids: Sequence, exact: np.ndarray, sig: np.ndarray, sh: Shingles | None = None) -> None:
        if not (len(ids) == len(exact) == len(sig)) or (sh is not None and len(sh) != len(ids)):
            raise ValueError(f"MinHashIndex.add: lengths differ (ids {len(ids)}, exact {len(exact)}, signatures {len(sig)})")
        if sig.shape[1:] != self.signatures.shape[1:]:
            raise ValueError(f"MinHashIndex.add: signatures have {sig.shape[1:]} hashes, index has {self.signatures.shape[1:]}")
        if self.cfg.confirm == "jaccard" and sh is None:
            raise ValueError("MinHashIndex.add: confirm='jaccard' needs the documents' shingle sets")
        self.ids = np.concatenate([self.ids, np.asarray(list(ids), dtype=object)])
        self.exact = np.concatenate([self.exact, np.asarray(exact, dtype=np.uint64)])
        self.signatures = np.concatenate([self.signatures, sig])
        if sh is not None:
            self.shingles = self.shingles.concat(sh)

    def save(self, path: Path | str) -> None:
        with atomic_dir(Path(path)) as tmp:
            (tmp / "index.json").write_text(json.dumps(
                {"format": INDEX_FORMAT, "documents": len(self), **{k: getattr(self.cfg, k) for k in self.KEYS}}, indent=2))
            pd.DataFrame({"id": self.ids.astype(str), "exact": self.exact}).to_parquet(tmp / "ids.parquet", index=False)
            np.save(tmp / "signatures.npy", self.signatures)
            if self.cfg.confirm == "jaccard":
                np.save(tmp / "shingles.npy", self.shingles.values)
                np.save(tmp / "shingle_offsets.npy", self.shingles.offsets)

    @classmethod
    def load(cls, path: Path | str, cfg: DedupConfig) -> MinHashIndex:
        path = Path(path)
        meta_file = path / "index.json"
        if not meta_file.exists():
            raise FileNotFoundError(f"{meta_file}: not a MinHash index (no index.json)")
        meta = json.loads(meta_file.read_text())
        if meta.get("format") != INDEX_FORMAT:
            raise ValueError(f"{meta_file}: index format {meta.get('format')!r}, this code reads {INDEX_FORMAT}")
        diff = {k: (meta.get(k), getattr(cfg, k)) for k in cls.KEYS if meta.get(k) != getattr(cfg, k)}
        if diff:
            raise ValueError(f"{meta_file}: built with a different dedup config (index, params): {diff}")
        index = cls(cfg)
        ids = pd.read_parquet(path / "ids.parquet")
        index.ids = ids["id"].to_numpy(dtype=object)
        index.exact = ids["exact"].to_numpy(dtype=np.uint64)
        index.signatures = np.load(path / "signatures.npy")
        if cfg.confirm == "jaccard":
            index.shingles = Shingles(np.load(path / "shingles.npy"), np.load(path / "shingle_offsets.npy"))
        if not (len(index.ids) == len(index.signatures) == meta["documents"]):
            raise ValueError(f"{path}: index files disagree ({len(index.ids)} ids, {len(index.signatures)} signatures, "
                             f"index.json says {meta['documents']})")
        return index


# ----------------------------------------------------------------------------- sketches, where the work is
class Sketch(NamedTuple):
    """One shard's per-document features; a document's values do not depend on the shard it is in."""

    exact: np.ndarray  # uint64 hash of the normalised text
    signatures: np.ndarray  # (docs, bands*rows) uint64
    shingles: Shingles | None  # for confirm='jaccard' only

    def take(self, rows: np.ndarray) -> tuple[np.ndarray, Shingles | None]:
        """(signatures, shingle sets) of ``rows`` of this shard."""
        return self.signatures[rows], None if self.shingles is None else self.shingles.take(rows)


def sketch(texts: Sequence[str] | pd.Series, cfg: DedupConfig) -> Sketch:
    """Exact hashes, MinHash signatures and (for Jaccard confirmation) shingle sets of ``texts``: the per-document work."""
    words = _words(texts)
    sh = shingle_sets(words, cfg)
    return Sketch(exact_hashes(words), minhash(sh, cfg), sh if cfg.confirm == "jaccard" else None)


class Sketches(Protocol):
    """The sketches of a whole corpus, wherever they are held (this process, or a cluster's object store).

    Rows are the corpus's rows in priority order. ``candidate_pairs`` numbers rows compactly: the
    ``index_sig`` rows first, then ``members`` in order, and returns what :func:`candidate_pairs`
    returns for those signatures stacked (``fixed`` = the index rows).
    """

    def exact(self) -> np.ndarray: ...

    def candidate_pairs(self, members: np.ndarray, index_sig: np.ndarray) -> np.ndarray: ...

    def take(self, rows: np.ndarray) -> tuple[np.ndarray, Shingles | None]: ...


class DedupEngine(Protocol):
    """Where dedup's per-document work and LSH bucketing run; ``kind`` names it in logs. Whatever the engine,
    :func:`dedup` returns the same tables: it only decides where sketches are computed and buckets grouped."""

    kind: str

    def sketch(self, texts: pd.Series, cfg: DedupConfig) -> AbstractContextManager[Sketches]: ...


class LocalSketches:
    """Every sketch in this process, as one shard."""

    def __init__(self, texts: pd.Series, cfg: DedupConfig) -> None:
        self.cfg, self.sketch = cfg, sketch(texts, cfg)

    def exact(self) -> np.ndarray:
        return self.sketch.exact

    def candidate_pairs(self, members: np.ndarray, index_sig: np.ndarray) -> np.ndarray:
        return candidate_pairs(np.concatenate([index_sig, self.sketch.signatures[members]]), self.cfg, fixed=len(index_sig))

    def take(self, rows: np.ndarray) -> tuple[np.ndarray, Shingles | None]:
        return self.sketch.take(rows)


class InProcess:
    """The default engine: everything in this process."""

    kind = "in-process"

    def sketch(self, texts: pd.Series, cfg: DedupConfig) -> AbstractContextManager[Sketches]:
        return nullcontext(LocalSketches(texts, cfg))


in_process = InProcess()


# ----------------------------------------------------------------------------- the stage
def _confirmed(pairs: np.ndarray, index: MinHashIndex, index_rows: np.ndarray, members: np.ndarray,
               sk: Sketches, cfg: DedupConfig) -> np.ndarray:
    """The candidate pairs (compact rows: index rows, then members) that ``cfg.confirm`` confirms.

    Only the documents in some pair are fetched, so the caller never holds every signature.
    """
    if not len(pairs):
        return pairs
    involved = np.unique(pairs)
    old, new = involved[involved < len(index_rows)], involved[involved >= len(index_rows)]
    sig_new, sh_new = sk.take(members[new - len(index_rows)])
    sig = np.concatenate([index.signatures[index_rows[old]], sig_new])
    sh = index.shingles.take(index_rows[old]).concat(sh_new) if cfg.confirm == "jaccard" else None
    return pairs[confirm_pairs(np.searchsorted(involved, pairs), sig, cfg, sh)]


def dedup(df: pd.DataFrame, cfg: DedupConfig, index: MinHashIndex | None = None, update_index: bool = False,
          engine: DedupEngine = in_process) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Return (kept, rejected with reason and duplicate_of in meta, stats).

    With ``index``, documents that duplicate an index document are rejected (pointing at it), and
    ``update_index=True`` appends this batch's keepers to it (save it with ``index.save``).
    ``engine`` decides where sketches are computed and LSH buckets grouped (this process, or a
    cluster); the result never depends on it.
    """
    index = index if index is not None else MinHashIndex(cfg)
    if index.cfg != cfg:
        raise ValueError(f"dedup: the index was built with {index.cfg}, called with {cfg}")
    if df["text"].isna().any():
        raise ValueError(f"dedup: null text in rows with id {df.loc[df['text'].isna(), 'id'].tolist()[:5]}")
    # priority order: the index first (already published), then earliest, then id
    df = df.sort_values(["timestamp", "id"], kind="stable").reset_index(drop=True)
    fixed, n = len(index), len(df)
    with engine.sketch(df["text"], cfg) as sk:
        exact = np.concatenate([index.exact, sk.exact()])
        _, first, inverse = np.unique(exact, return_index=True, return_inverse=True)  # first = earliest row per hash
        exact_rep = first[inverse]  # each row's first exact twin (itself if none earlier)
        uniq = np.sort(first)
        index_rows, members = uniq[uniq < fixed], uniq[uniq >= fixed] - fixed
        pairs = _confirmed(sk.candidate_pairs(members, index.signatures[index_rows]), index, index_rows, members, sk, cfg)
        rep_u = representatives(len(uniq), pairs)
        keep_u = np.flatnonzero(rep_u[len(index_rows):] == np.arange(len(index_rows), len(uniq)))
        kept_sketch = sk.take(members[keep_u]) if update_index else None
    rep_of_uniq = np.empty(fixed + n, dtype=np.int64)
    rep_of_uniq[uniq] = uniq[rep_u]
    rep = rep_of_uniq[exact_rep][fixed:]  # per df row: the row (index rows first) its cluster keeps
    own = np.arange(fixed, fixed + n)
    dup = rep != own
    kind = np.where(exact_rep[fixed:] != own, "exact_duplicate", "near_duplicate")[dup]
    all_ids = np.concatenate([index.ids, df["id"].to_numpy(dtype=object)])
    rejected = df[dup].copy()
    rejected["reason"] = kind
    rejected["stage"] = "dedup"
    rejected["meta"] = [json.dumps({**json.loads(m or "{}"), "duplicate_of": r}) for m, r in zip(rejected["meta"], all_ids[rep[dup]])]
    if kept_sketch is not None:
        rows = members[keep_u]
        index.add(df["id"].to_numpy(dtype=object)[rows], exact[fixed + rows], *kept_sketch)
    stats = {"clusters_with_duplicates": int(len(np.unique(rep[dup]))), "near_pairs_confirmed": int(len(pairs)),
             "exact_duplicates": int((kind == "exact_duplicate").sum()), "near_duplicates": int((kind == "near_duplicate").sum()),
             "duplicates_of_index": int((rep[dup] < fixed).sum())}
    return df[~dup].reset_index(drop=True), rejected.reset_index(drop=True), stats
