"""Curation on a real Ray cluster (a head and a worker node as separate processes on loopback) gives exactly the
in-process result, and survives a worker killed with SIGKILL in the middle of the run."""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fluxforge.config import DedupConfig, RunnerConfig
from fluxforge.data.dedup import MinHashIndex, dedup
from fluxforge.orchestrate.runners import dedup_engine
from ray_nodes import Cluster, Node, ray_cluster

pytestmark = pytest.mark.slow  # a two-node cluster starts in ~20 s here

VOCAB = [f"w{i}" for i in range(3000)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    import ray

    with ray_cluster(tmp_path_factory.mktemp("rc")) as c:
        yield c
        if ray.is_initialized():
            ray.shutdown()


def corpus(n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` documents; every fifth one is a near copy (a few words changed) or an exact copy (case, punctuation)
    of a document far away in the table, so duplicates cross shards and the copy is sometimes the older one."""
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(VOCAB) for _ in range(rng.randint(40, 120))) for _ in range(n)]
    for i in range(4, n, 5):
        src = texts[rng.randrange(n)].split()
        if i % 2:
            src[len(src) // 3] = f"x{rng.randrange(10**6)}"  # one word: Jaccard of 5-grams stays above 0.8
            texts[i] = " ".join(src)
        else:
            texts[i] = " ".join(src).upper() + " !"
    stamps = pd.to_datetime([f"20{21 + rng.randrange(3)}-0{1 + rng.randrange(9)}-01" for _ in range(n)], utc=True)
    return pd.DataFrame({"id": [f"d{seed}-{i:05d}" for i in range(n)], "text": texts, "source": "s", "url": "u",
                         "timestamp": stamps, "domain": "general", "meta": "{}"})


def ray_cfg(cluster: Cluster, shard_docs: int) -> RunnerConfig:
    return RunnerConfig(kind="ray", address=cluster.address, shard_docs=shard_docs)


@pytest.mark.parametrize("confirm", ["jaccard", "signature"])
def test_dedup_on_the_cluster_equals_in_process_across_shards_and_with_an_index(cluster, confirm):
    cfg = DedupConfig(bands=20, rows=8, confirm=confirm)
    first, second = corpus(700, seed=1), corpus(500, seed=2)
    second.loc[::7, "text"] = first["text"].iloc[: len(second.loc[::7])].to_numpy()  # duplicates of the earlier slice
    results = {}
    for name, engine in (("local", None), ("ray", dedup_engine(ray_cfg(cluster, shard_docs=64)))):
        kwargs = {} if engine is None else {"engine": engine}
        index = MinHashIndex(cfg)
        a = dedup(first, cfg, index=index, update_index=True, **kwargs)
        b = dedup(second, cfg, index=index, update_index=True, **kwargs)
        results[name] = (a, b, index)
    for (kept, rejected, stats), (kept_r, rejected_r, stats_r) in zip(results["local"][:2], results["ray"][:2]):
        pd.testing.assert_frame_equal(kept, kept_r)
        pd.testing.assert_frame_equal(rejected, rejected_r)
        assert stats == stats_r
    local, ray_index = results["local"][2], results["ray"][2]
    assert list(local.ids) == list(ray_index.ids) and np.array_equal(local.signatures, ray_index.signatures)
    assert np.array_equal(local.shingles.values, ray_index.shingles.values)

    (_, rejected, stats), (_, _, stats2) = results["ray"][:2]
    assert stats["near_duplicates"] > 50 and stats["exact_duplicates"] > 50 and stats2["duplicates_of_index"] > 50
    row = {d: i for i, d in enumerate(first.sort_values(["timestamp", "id"], kind="stable")["id"])}
    far = [abs(row[d] - row[json.loads(m)["duplicate_of"]]) // 64 for d, m in zip(rejected["id"], rejected["meta"])]
    assert sum(f > 0 for f in far) > 50, "duplicates should span shards of 64 documents"


# ----------------------------------------------------------------------------- the stages, and a worker killed under them
class Killer(threading.Thread):
    """SIGKILL the first process of ``node`` seen running ``function``; records what it killed."""

    def __init__(self, node: Node, function: str, whole_node: bool = False):
        super().__init__(daemon=True)
        self.node, self.function, self.whole_node = node, function, whole_node
        self.killed: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        group = self.node.group()  # scanning every process each turn takes long enough under load to miss a short task
        while not self.stop.is_set():
            for p in self.node.task_workers(self.function, group):
                title = " ".join(p.cmdline())
                if self.whole_node:  # the machine is gone: raylet, object store and workers at once
                    self.node.kill()
                else:
                    p.send_signal(signal.SIGKILL)
                self.killed.append(title)
                return
            time.sleep(0.01)


def _outputs(root: Path) -> dict[str, bytes]:
    files = [*sorted((root / "data" / "filtered").iterdir()), *sorted((root / "data" / "curated").iterdir())]
    out = {f"{f.parent.name}/{f.name}": f.read_bytes() for f in files}
    for name in ("filter.json", "dedup.json"):
        out[name] = json.dumps({k: v for k, v in json.loads((root / "metrics" / name).read_text()).items()
                                if k not in ("seconds", "docs_per_s")}, sort_keys=True).encode()
    return out


def test_filter_and_dedup_stages_on_the_cluster_match_in_process_after_sigkill(cluster, tiny_params, in_tmp):
    from stages.dedup import main as dedup_stage
    from stages.filter import main as filter_stage

    from fluxforge import paths as P
    from fluxforge.config import Source, load_params
    from fluxforge.data.documents import read_docs, write_docs
    from fluxforge.data.ledger import Ledger
    from fluxforge.data.sources import read_source
    from fluxforge.io import write_json
    from fluxforge.world import generate_world

    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml", profile="tiny")
    generate_world(params.world, in_tmp / "world")
    world, _, _ = read_source(Source(name="world", format="world", path=str(in_tmp / "world")))
    copies = []
    for k in range(4):  # the world four times over (new ids): enough shards, and seconds of work per shard
        c = world.copy()
        c["id"] = c["id"] + f"-{k}"
        c["timestamp"] = c["timestamp"] + pd.Timedelta(days=k)
        copies.append(c)
    raw = pd.concat(copies, ignore_index=True)
    write_docs(raw, P.RAW / "world.parquet")
    none = raw[:0].assign(reason="", stage="")
    write_docs(none, P.RAW / "rejected.parquet", rejected=True)
    write_json(P.METRICS / "ingest.json", Ledger.balanced("ingest", raw, none, len(raw)).to_dict())  # what ingest writes
    shard_docs = len(raw) // 6

    def run(runner: RunnerConfig, kills: tuple[Killer, Killer] | None = None) -> dict[str, bytes]:
        p = tiny_params.model_copy(update={"data": tiny_params.data.model_copy(update={"runner": runner})})
        for stage, killer in zip((filter_stage, dedup_stage), kills or (None, None)):
            if killer:
                killer.start()
            try:
                stage.run(p)
            finally:
                if killer:
                    killer.stop.set()
                    killer.join()
        return _outputs(in_tmp)

    single = run(RunnerConfig(kind="serial", shard_docs=10 * len(raw)))
    worker = cluster.workers[0]
    kills = (Killer(worker, "run_step"), Killer(worker, "sketch_shard", whole_node=True))
    on_ray = run(ray_cfg(cluster, shard_docs), kills)
    assert kills[0].killed and "ray::run_step" in kills[0].killed[0], "no filter task was killed on the worker node"
    assert kills[1].killed and "ray::sketch_shard" in kills[1].killed[0], "the worker node was not killed during dedup"
    assert on_ray.keys() == single.keys()
    for name in single:
        assert on_ray[name] == single[name], f"{name} differs between Ray (a worker killed) and in-process"
    kept, filtered = read_docs(P.CURATED / "curated.parquet"), read_docs(P.FILTERED / "kept.parquet")
    rejected = [read_docs(d / "rejected.parquet") for d in (P.FILTERED, P.CURATED)]
    assert len(filtered) + len(rejected[0]) == len(raw) and len(kept) + len(rejected[1]) == len(filtered)
    assert set(kept["id"]) | set(rejected[0]["id"]) | set(rejected[1]["id"]) == set(raw["id"])
