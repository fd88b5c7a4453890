"""Curation on a Ray cluster: the filter's shards and near-dedup's sketches and LSH buckets as Ray tasks.

Ray is what the field's curators run on (NeMo Curator's backend, datatrove's ``RayPipelineExecutor``).
``data.runner.kind: ray`` with ``address: null`` starts a local cluster for the run (``workers`` CPUs,
bound to a loopback address) and stops it after; an address (``auto``, ``HOST:PORT`` of a head's GCS, or
``ray://HOST:10001`` through Ray Client) joins an existing cluster and leaves it running. The
cluster's nodes need this project installed in the same version (``pip install -e .`` from the
lock), as for any Ray job that imports its own code.

Filter: each shard is one task (:class:`RayRunner`, a :class:`~fluxforge.data.shards.ShardRunner`);
results travel back to the driver, which keeps finished shards on disk for a rerun.

Dedup (:class:`RayDedup`, a :class:`~fluxforge.data.dedup.DedupEngine`), the MinHash-LSH shuffle:

1. map: one task per shard computes exact hashes, MinHash signatures and shingle sets; only the
   exact hashes (8 bytes a document) come back, the rest stays in the object store;
2. the driver groups exact duplicates and says which documents take part in near-dedup;
3. shuffle: per shard, a task cuts each document's band keys into ``parts`` partitions by key, so
   a bucket lands whole in one partition whatever shard its documents came from; one reduce task
   per partition pairs each bucket's members exactly as the in-process code does;
4. the driver fetches the signatures (and shingle sets) of paired documents only, confirms the
   pairs and builds the clusters.

A worker that dies (a killed process, a lost node) costs a retry: every task is retried up to
``TASK_RETRIES`` times, and objects lost with a node are rebuilt from their lineage by Ray.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd

from fluxforge.config import DedupConfig, RunnerConfig
from fluxforge.data.dedup import Shingles, Sketch, band_keys, bucket_pairs, sketch, unique_pairs
from fluxforge.data.shards import Failures, OnDone, Step, run_step, split

log = logging.getLogger(__name__)

TASK_RETRIES = 3  # a task whose worker died is run again up to this often (Ray's own default, stated)
SPREAD = "SPREAD"  # map tasks go to every node, not packed onto the first one (Ray's default)
# A loopback address Ray keeps as it is: Ray rewrites 127.0.0.1 and localhost to the machine's outward address
# (ray._private.services.resolve_ip_for_localhost), which would put a run-local cluster on the network.
NODE_IP = "127.0.0.2"
MAX_PARTS = 64


@contextmanager
def ray_session(cfg: RunnerConfig) -> Iterator[None]:
    """Connect to the cluster ``cfg.address`` names, or start a local one for the duration; reuse a session already open."""
    import ray

    if ray.is_initialized():
        yield
        return
    common: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    if cfg.address:
        ray.init(address=cfg.address, **common)
    else:  # bound to loopback: a cluster started for one run serves nobody else
        ray.init(num_cpus=cfg.workers or os.cpu_count() or 1, include_dashboard=False, _node_ip_address=NODE_IP, **common)
    try:
        log.info("ray: %s", ray.cluster_resources())
        yield
    finally:
        ray.shutdown()


class RayRunner:
    """Each shard of a data step is one Ray task; results are handed to ``on_done`` in the driver as they finish."""

    kind = "ray"

    def __init__(self, cfg: RunnerConfig):
        self.cfg = cfg

    def __call__(self, step: Step, todo: Sequence[tuple[int, pd.DataFrame]], stage: str, on_done: OnDone) -> Failures:
        import ray

        with ray_session(self.cfg):
            task = ray.remote(max_retries=TASK_RETRIES, scheduling_strategy=SPREAD)(run_step)
            pending = {task.remote(step, shard): i for i, shard in todo}
            log.info("%s: %d shards on Ray", stage, len(pending))
            failed: Failures = []
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                i = pending.pop(ref)
                try:
                    on_done(i, ray.get(ref))
                except Exception as err:  # noqa: BLE001 - every other shard still finishes and is kept
                    failed.append((i, err))
            return failed


# ----------------------------------------------------------------------------- dedup tasks (module level: Ray ships them by reference)
def sketch_shard(texts: pd.Series, cfg: DedupConfig) -> tuple[np.ndarray, Sketch]:
    """Map: the shard's sketch, and its exact hashes separately (the only part the driver fetches)."""
    sk = sketch(texts, cfg)
    return sk.exact, sk


def partition_keys(sig: np.ndarray, rows: np.ndarray, ids: np.ndarray, cfg: DedupConfig, parts: int) -> list[np.ndarray]:
    """Shuffle write: (band, key, compact id) of ``rows`` of ``sig`` cut into ``parts`` partitions by bucket key."""
    keys = band_keys(sig[rows], cfg)
    table = np.empty(keys.size, dtype=[("band", np.int32), ("key", np.uint64), ("id", np.int64)])
    table["band"] = np.tile(np.arange(cfg.bands, dtype=np.int32), len(rows))
    table["key"] = keys.ravel()
    table["id"] = np.repeat(ids, cfg.bands)
    where = table["key"] % np.uint64(parts)
    return [table[where == np.uint64(p)] for p in range(parts)]


def shard_partitions(sk: Sketch, rows: np.ndarray, ids: np.ndarray, cfg: DedupConfig, parts: int) -> Any:
    out = partition_keys(sk.signatures, rows, ids, cfg, parts)
    return out if parts > 1 else out[0]  # Ray: num_returns=1 returns the value itself


def bucket_partition(bands: int, *tables: np.ndarray) -> np.ndarray:
    """Shuffle read: the pairs of every bucket in one partition, band by band."""
    table = np.concatenate(tables)
    found = [np.zeros((0, 2), dtype=np.int64)]
    for band in range(bands):
        sel = table["band"] == band
        found.append(bucket_pairs(table["key"][sel], table["id"][sel]))
    return np.concatenate(found)


def take_rows(sk: Sketch, rows: np.ndarray) -> tuple[np.ndarray, Shingles | None]:
    return sk.take(rows)


class RaySketches:
    """A corpus's sketches in the cluster's object store, one object per shard."""

    def __init__(self, texts: pd.Series, cfg: DedupConfig, shard_docs: int) -> None:
        import ray

        self.cfg = cfg
        chunks = split(texts.to_frame("text"), shard_docs)
        self.starts = np.cumsum([0] + [len(c) for c in chunks])
        mapper = ray.remote(num_returns=2, max_retries=TASK_RETRIES, scheduling_strategy=SPREAD)(sketch_shard)
        refs = [mapper.remote(c["text"], cfg) for c in chunks]
        self.exact_refs, self.refs = [r[0] for r in refs], [r[1] for r in refs]
        log.info("dedup: %d documents in %d shards on Ray", len(texts), len(chunks))

    def exact(self) -> np.ndarray:
        import ray

        return np.concatenate(ray.get(self.exact_refs)).astype(np.uint64)

    def _by_shard(self, rows: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(shard, positions in ``rows``, rows local to the shard) for each shard holding some of ``rows``."""
        shard_of = np.searchsorted(self.starts, rows, side="right") - 1
        for s in np.unique(shard_of):
            at = np.flatnonzero(shard_of == s)
            yield int(s), at, rows[at] - self.starts[s]

    def candidate_pairs(self, members: np.ndarray, index_sig: np.ndarray) -> np.ndarray:
        import ray

        cfg, fixed = self.cfg, len(index_sig)
        parts = max(1, min(MAX_PARTS, len(self.refs)))
        writer = ray.remote(num_returns=parts, max_retries=TASK_RETRIES)(shard_partitions)
        written = [writer.remote(self.refs[s], local, fixed + at, cfg, parts) for s, at, local in self._by_shard(members)]
        if fixed:
            index = Sketch(np.zeros(fixed, np.uint64), index_sig, None)
            written.append(writer.remote(index, np.arange(fixed), np.arange(fixed), cfg, parts))
        written = [w if parts > 1 else [w] for w in written]
        reducer = ray.remote(max_retries=TASK_RETRIES)(bucket_partition)
        found = ray.get([reducer.remote(cfg.bands, *[w[p] for w in written]) for p in range(parts)]) if written else []
        return unique_pairs(found, fixed + len(members), fixed)

    def take(self, rows: np.ndarray) -> tuple[np.ndarray, Shingles | None]:
        import ray

        task = ray.remote(max_retries=TASK_RETRIES)(take_rows)
        got = [(at, task.remote(self.refs[s], local)) for s, at, local in self._by_shard(rows)]
        sig = np.zeros((len(rows), self.cfg.bands * self.cfg.rows), dtype=np.uint64)
        parts = ray.get([ref for _, ref in got])
        for (at, _), (s, _) in zip(got, parts):
            sig[at] = s
        if self.cfg.confirm != "jaccard":
            return sig, None
        # rows are ascending, so shards come in order and their shingle sets concatenate in row order
        sh = Shingles(np.zeros(0, np.uint64), np.zeros(1, np.int64))
        for _, part in parts:
            sh = sh.concat(part)
        return sig, sh


class RayDedup:
    """Dedup's sketches and LSH buckets on Ray (:func:`fluxforge.data.dedup.dedup`'s ``engine``)."""

    kind = "ray"

    def __init__(self, cfg: RunnerConfig):
        self.cfg = cfg

    @contextmanager
    def sketch(self, texts: pd.Series, cfg: DedupConfig) -> Iterator[RaySketches]:
        with ray_session(self.cfg):
            yield RaySketches(texts, cfg, self.cfg.shard_docs)
