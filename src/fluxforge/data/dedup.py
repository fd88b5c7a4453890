"""Exact and MinHash-LSH near-duplicate removal across all slices.

Exact: a hash of the normalised text (lowercase, punctuation removed, whitespace
collapsed). Near: word n-gram shingles, MinHash with ``bands x rows`` permutations
(defaults 14 x 8 over 5-grams, as datatrove/FineWeb), candidate pairs from LSH bands,
confirmed when the signature agreement estimates Jaccard >= ``threshold``.

One representative per cluster is kept: the earliest timestamp, then the smallest id.
Because clusters span slices, a later slice never re-adds what an earlier one kept.
"""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pandas as pd

from fluxforge.config import DedupConfig

_NORM = re.compile(r"[^\w\s]")


def normalise(text: str) -> str:
    return " ".join(_NORM.sub(" ", text.lower()).split())


def shingles(text: str, n: int) -> set[str]:
    words = normalise(text).split()
    return {" ".join(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}


def jaccard(a: str, b: str, n: int = 5) -> float:
    """Exact Jaccard similarity of word n-gram shingle sets (what MinHash estimates)."""
    sa, sb = shingles(a, n), shingles(b, n)
    return len(sa & sb) / max(1, len(sa | sb))


def _shingle_hashes(text: str, n: int) -> np.ndarray:
    grams = shingles(text, n)
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(g.encode(), digest_size=8).digest(), "little") for g in grams),
        dtype=np.uint64, count=len(grams),
    )


def _fmix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser: a bijective mix, so each seed below acts as an independent permutation."""
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xFF51AFD7ED558CCD)  # wraps mod 2^64 by design
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xC4CEB9FE1A85EC53)
    return x ^ (x >> np.uint64(33))


def minhash_signatures(texts: list[str], cfg: DedupConfig) -> np.ndarray:
    """(docs, bands*rows) uint64 MinHash signatures: min over shingles of fmix64(shingle ^ seed_k)."""
    k = cfg.bands * cfg.rows
    seeds = np.random.default_rng(cfg.seed).integers(0, np.iinfo(np.uint64).max, size=k, dtype=np.uint64, endpoint=True)
    sig = np.empty((len(texts), k), dtype=np.uint64)
    for i, t in enumerate(texts):
        h = _shingle_hashes(t, cfg.ngram)
        sig[i] = _fmix64(h[None, :] ^ seeds[:, None]).min(axis=1)
    return sig


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, x: int, y: int) -> None:
        rx, ry = self.find(x), self.find(y)
        if rx != ry:
            self.parent[max(rx, ry)] = min(rx, ry)


def dedup(df: pd.DataFrame, cfg: DedupConfig) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Return (kept, rejected with reason and duplicate_of in meta, stats)."""
    # priority order: earliest first, then id; index 0 of a cluster is its representative
    df = df.sort_values(["timestamp", "id"], kind="stable").reset_index(drop=True)
    n = len(df)
    uf = _UnionFind(n)
    kind = np.array([""] * n, dtype=object)
    norm_hash = df["text"].map(lambda t: hashlib.sha1(normalise(t).encode()).hexdigest())
    first_of: dict[str, int] = {}
    for i, h in enumerate(norm_hash):
        if h in first_of:
            uf.union(first_of[h], i)
            kind[i] = "exact_duplicate"
        else:
            first_of[h] = i
    uniq = np.array(sorted(first_of.values()), dtype=np.int64)
    sig = minhash_signatures(df["text"].iloc[uniq].tolist(), cfg) if len(uniq) else np.zeros((0, 1), np.uint64)
    pairs = 0
    for band in range(cfg.bands):
        cols = sig[:, band * cfg.rows : (band + 1) * cfg.rows]
        buckets: dict[bytes, int] = {}
        for j in range(len(uniq)):
            key = cols[j].tobytes()
            if key in buckets:
                other = buckets[key]
                if uf.find(uniq[j]) != uf.find(uniq[other]) and np.mean(sig[j] == sig[other]) >= cfg.threshold:
                    uf.union(uniq[other], uniq[j])
                    pairs += 1
            else:
                buckets[key] = j
    roots = np.array([uf.find(i) for i in range(n)], dtype=np.int64)
    dup = roots != np.arange(n)
    kind[dup & (kind == "")] = "near_duplicate"
    rejected = df[dup].copy()
    rejected["reason"] = kind[dup]
    rejected["stage"] = "dedup"
    rep_ids = df["id"].to_numpy()[roots[dup]]
    rejected["meta"] = [json.dumps({**json.loads(m or "{}"), "duplicate_of": r}) for m, r in zip(rejected["meta"], rep_ids)]
    stats = {"clusters_with_duplicates": int(len(set(roots[dup]))), "near_pairs_confirmed": pairs,
             "exact_duplicates": int((kind == "exact_duplicate").sum()), "near_duplicates": int((kind == "near_duplicate").sum())}
    return df[~dup].reset_index(drop=True), rejected.reset_index(drop=True), stats
