"""A replay buffer of whole documents from past tasks, capped in tokens, saved with the checkpoint.

WHY: replaying earlier data is what keeps a continually pretrained model from forgetting (FoMo-in-Flux,
Roth et al. 2024, methods.md section 8: "replaying buffer and pretraining data is crucial for stability";
their default batch mixes 0.33 pretraining replay / 0.34 update / 0.33 buffer). The buffer holds whole
documents (cut at EOS), never fragments, so a replayed window starts or ends at a real document boundary.

Policies (which documents stay when the cap is reached):

- ``uniform``: a uniform sample of every document ever added (reservoir sampling in its "bottom-k"
  form: each document draws a random key once; the buffer keeps the smallest keys whose documents
  fit the cap, stopping at the first that does not). The kept set is the same whatever the order
  the tasks were added in, because a document's key depends only on (seed, task name, its index).
- ``recent``: first in, first out: the newest documents that fit (stopping at the first that does not).
- ``balanced``: an equal share of the cap per task seen (max-min fair: a task smaller than its share
  keeps everything and the rest of the cap is split among the others); inside its share a task keeps
  a uniform sample (smallest keys), as ``uniform`` does.

A document longer than the whole cap can never be kept: it is counted in :attr:`ReplayBuffer.rejected`
with the reason, not dropped silently. Evicted documents are gone: a later, larger share cannot bring
them back.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from fluxforge.errors import FluxForgeError

POLICIES = ("uniform", "recent", "balanced")
STATE_VERSION = 1


class ReplayError(FluxForgeError):
    """A replay setting or saved buffer that cannot be used: bad ratio, bad policy, mismatched checkpoint state."""


def validate_ratio(ratio: float) -> float:
    """Return ``ratio`` as a float if it is a number in [0, 1] (the share of each batch drawn from replay)."""
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not math.isfinite(ratio) or not 0.0 <= ratio <= 1.0:
        raise ReplayError(f"replay ratio must be a number in [0, 1] (the share of each batch taken from replay), got {ratio!r}")
    return float(ratio)


@dataclass
class _Doc:
    key: float  # random key of the reservoir, in [0, 1)
    order: int  # arrival number across the buffer's whole life (FIFO)
    tokens: np.ndarray


def _task_seed(seed: int, task: str, adds: int) -> list[int]:
    """RNG seed of one add: stable across processes (no Python ``hash``), different per task and per repeated add."""
    digest = int.from_bytes(hashlib.sha256(task.encode()).digest()[:8], "little")
    return [seed, digest, adds]


def _doc_bounds(stream: np.ndarray, eos_id: int, task: str) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) of each document of a packed stream; the stream must end with EOS."""
    ends = np.flatnonzero(stream == eos_id) + 1
    if len(stream) and (not len(ends) or ends[-1] != len(stream)):
        raise ReplayError(f"task '{task}': the token stream does not end with EOS ({eos_id}), so it is not a packed stream of "
                          "whole documents (fluxforge.data.tokenize.encode_stream)")
    return np.r_[0, ends[:-1]].astype(np.int64), ends.astype(np.int64)


def _fitting_prefix(lengths: list[int], cap: int) -> int:
    """How many leading items fit in ``cap`` tokens, stopping at the first that does not."""
    total = 0
    for i, n in enumerate(lengths):
        if total + n > cap:
            return i
        total += n
    return len(lengths)


def fair_shares(demands: dict[str, int], cap: int) -> dict[str, int]:
    """Max-min fair split of ``cap`` tokens: tasks needing less than an equal share get all they need."""
    shares: dict[str, int] = {}
    left, names = cap, sorted(demands, key=lambda t: (demands[t], t))
    for i, t in enumerate(names):
        level = left // (len(names) - i)
        shares[t] = min(demands[t], level)
        left -= shares[t]
    return shares


class ReplayBuffer:
    """Whole documents of past tasks, at most ``cap_tokens`` tokens, chosen by ``policy`` reproducibly from ``seed``."""

    def __init__(self, cap_tokens: int, policy: str, eos_id: int, seed: int) -> None:
        if policy not in POLICIES:
            raise ReplayError(f"unknown replay policy '{policy}'; choose one of {list(POLICIES)}")
        if isinstance(cap_tokens, bool) or not isinstance(cap_tokens, int | np.integer) or cap_tokens < 1:
            raise ReplayError(f"replay buffer cap must be a positive number of tokens, got {cap_tokens!r}")
        self.cap_tokens, self.policy, self.eos_id, self.seed = int(cap_tokens), policy, int(eos_id), int(seed)
        self._docs: dict[str, list[_Doc]] = {}  # task -> kept documents, in arrival order
        self._adds: dict[str, int] = {}  # task -> number of add() calls (seeds repeated adds differently)
        self._seen: dict[str, int] = {}  # task -> documents offered
        self._arrivals = 0
        self._dtype = np.dtype(np.int64)
        self.rejected: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ reading
    @property
    def tokens(self) -> int:
        return sum(len(d.tokens) for docs in self._docs.values() for d in docs)

    @property
    def tasks(self) -> list[str]:
        return list(self._docs)

    def task_tokens(self) -> dict[str, int]:
        """Tokens kept per task (tasks in the order they were first added)."""
        return {t: sum(len(d.tokens) for d in docs) for t, docs in self._docs.items()}

    def documents(self, task: str | None = None) -> list[np.ndarray]:
        """Kept documents (of one task, or all), tasks in first-added order, documents in arrival order."""
        names = self.tasks if task is None else [task]
        return [d.tokens for t in names for d in sorted(self._docs.get(t, []), key=lambda d: d.order)]

    def stream(self) -> np.ndarray:
        """The buffered documents as one packed token stream (each ends with EOS), ready for a sampler."""
        docs = self.documents()
        return np.concatenate(docs).astype(self._dtype) if docs else np.empty(0, dtype=self._dtype)

    def stats(self) -> dict[str, Any]:
        return {"policy": self.policy, "cap_tokens": self.cap_tokens, "tokens": self.tokens,
                "task_tokens": self.task_tokens(), "task_docs": {t: len(d) for t, d in self._docs.items()},
                "seen_docs": dict(self._seen), "rejected": len(self.rejected)}

    # ------------------------------------------------------------------ writing
    def add(self, task_name: str, stream: np.ndarray) -> None:
        """Offer every document of ``stream`` (a packed token stream of one task) to the buffer, then evict to the cap."""
        arr = np.asarray(stream)
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise ReplayError(f"task '{task_name}': expected a 1-D array of integer token ids, got shape {arr.shape} dtype {arr.dtype}")
        starts, ends = _doc_bounds(arr, self.eos_id, task_name)
        adds = self._adds.get(task_name, 0)
        keys = np.random.default_rng(_task_seed(self.seed, task_name, adds)).random(len(starts))
        self._adds[task_name] = adds + 1
        self._seen[task_name] = self._seen.get(task_name, 0) + len(starts)
        self._dtype = np.result_type(self._dtype, arr.dtype) if self.tokens else np.dtype(arr.dtype)
        lengths = ends - starts
        too_long = np.flatnonzero(lengths > self.cap_tokens)
        for i in too_long:
            self.rejected.append({"task": task_name, "doc": int(i) + self._seen[task_name] - len(starts), "tokens": int(lengths[i]),
                                  "reason": f"document longer than the buffer cap ({self.cap_tokens} tokens)"})
        candidates = self._candidates(starts, ends, keys, lengths)
        docs = self._docs.setdefault(task_name, [])
        # materialise only documents that could survive eviction (a huge stream is never copied whole)
        for i in candidates:
            docs.append(_Doc(float(keys[i]), self._arrivals + int(i), np.array(arr[starts[i] : ends[i]])))
        self._arrivals += len(starts)
        self._evict()

    def _candidates(self, starts: np.ndarray, ends: np.ndarray, keys: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Indices of new documents that fit the cap and could be kept by the policy on their own."""
        ok = np.flatnonzero(lengths <= self.cap_tokens)
        if self.policy == "recent":  # the newest suffix that fits
            rev = ok[::-1]
            k = _fitting_prefix(lengths[rev].tolist(), self.cap_tokens)
            return np.sort(rev[:k])
        by_key = ok[np.argsort(keys[ok], kind="stable")]
        k = _fitting_prefix(lengths[by_key].tolist(), self.cap_tokens)
        return by_key[:k]

    def _evict(self) -> None:
        if self.policy == "balanced":
            kept = {t: self._uniform(docs) for t, docs in self._docs.items()}
            shares = fair_shares({t: sum(len(d.tokens) for d in docs) for t, docs in kept.items()}, self.cap_tokens)
            self._docs = {t: self._keep(kept[t], shares[t], by="key") for t in self._docs}
        else:
            everything = [(t, d) for t, docs in self._docs.items() for d in docs]
            by = "key" if self.policy == "uniform" else "recent"
            keep = {id(d) for d in self._keep([d for _, d in everything], self.cap_tokens, by=by)}
            self._docs = {t: [d for d in docs if id(d) in keep] for t, docs in self._docs.items()}

    def _uniform(self, docs: list[_Doc]) -> list[_Doc]:
        return self._keep(docs, self.cap_tokens, by="key")

    @staticmethod
    def _keep(docs: list[_Doc], cap: int, by: str) -> list[_Doc]:
        """Documents kept under ``cap``: smallest keys (``key``) or newest (``recent``) first, stopping at the first misfit."""
        ranked = sorted(docs, key=lambda d: d.key) if by == "key" else sorted(docs, key=lambda d: -d.order)
        k = _fitting_prefix([len(d.tokens) for d in ranked], cap)
        return sorted(ranked[:k], key=lambda d: d.order)

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict[str, Any]:
        """Everything the buffer holds, as JSON-able values (tokens as lists of ints, keys as floats)."""
        return {
            "version": STATE_VERSION, "cap_tokens": self.cap_tokens, "policy": self.policy, "eos_id": self.eos_id,
            "seed": self.seed, "dtype": self._dtype.str, "arrivals": self._arrivals, "adds": dict(self._adds),
            "seen": dict(self._seen), "rejected": [dict(r) for r in self.rejected],
            "docs": {t: [[d.key, d.order, d.tokens.tolist()] for d in docs] for t, docs in self._docs.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a buffer saved by :meth:`state_dict`; its settings must match this buffer's (else a resume changed them)."""
        if state.get("version") != STATE_VERSION:
            raise ReplayError(f"replay buffer state has version {state.get('version')!r}, expected {STATE_VERSION}")
        for key in ("cap_tokens", "policy", "eos_id", "seed"):
            if state.get(key) != getattr(self, key):
                raise ReplayError(f"saved replay buffer has {key}={state.get(key)!r} but this run uses {getattr(self, key)!r}; "
                                  "restore with the settings it was saved with or start a new buffer")
        self._dtype = np.dtype(state["dtype"])
        self._arrivals = int(state["arrivals"])
        self._adds = {t: int(n) for t, n in state["adds"].items()}
        self._seen = {t: int(n) for t, n in state["seen"].items()}
        self.rejected = [dict(r) for r in state["rejected"]]
        self._docs = {t: [_Doc(float(k), int(o), np.asarray(toks, dtype=self._dtype)) for k, o, toks in docs]
                      for t, docs in state["docs"].items()}
        if self.tokens > self.cap_tokens:
            raise ReplayError(f"saved replay buffer holds {self.tokens} tokens, over its cap of {self.cap_tokens}; the state is corrupt")
