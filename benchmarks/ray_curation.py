"""Filter + near-dedup throughput: in-process, a process pool and Ray (1 and 2 workers), and what 1B documents would cost.

Why (issue 19): the curation runners (``data.runner.kind``: serial, process, ray) promise the same output at a
different speed and memory; this measures docs/s, each worker's peak memory and the CPU-seconds per document of
the DAG's own filter and dedup steps, and extrapolates that measured cost to 1B documents on N nodes, with the
assumptions written next to the numbers.

What runs: a corpus of ``--docs`` documents built from the generated world (params.yaml's ``world``) and the real
samples in ../shared/data (WikiText-2 and CTI-Bench, read as benchmarks/real_samples.py reads them), re-sampled
with word edits so near and exact duplicates cross shards, written as Parquet shards in a temporary folder. Each
runner, in a fresh process of its own, reads the shards and runs exactly what the DAG's filter and dedup stages
run: ``filter_in_shards(raw, data.filters, shard_docs, shard_runner(runner))`` then
``dedup(kept, data.dedup, engine=dedup_engine(runner))`` (src/fluxforge/orchestrate/runners.py). Every runner must
keep the same ids after each step, or the benchmark fails.

Runners: ``serial`` (in the driver, no Prefect); ``process x2`` (Prefect's process pool, 2 workers; the project
runs dedup in the driver for every kind but ray); ``ray x1`` / ``ray x2``: a real multi-process Ray cluster on
loopback started with tests/ray_nodes.py (``ray start`` processes: a head node with 1 CPU, plus one worker node
with 1 CPU for x2), joined by address. Start-up (cluster or Prefect server, connecting, a warm-up run on 100
documents that imports the code in the workers) is timed apart from the measured run.

Usage (inside .venv; the full run takes a long time on 2 cores, try --docs 3000 first):
    python benchmarks/ray_curation.py [--docs 100000] [--shards 20] [--write]
With --write it replaces the "Ray curation" section of BENCHMARKS.md (machine, date, command, tables).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import random
import re
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(ROOT / "tests"))  # tests/ray_nodes.py starts the Ray nodes
from report_md import machine, replace_section  # noqa: E402

RUNNERS = ("serial", "process x2", "ray x1", "ray x2")
WARMUP_DOCS = 100
EDIT = re.compile(r"(\s+)")

# the corpus: what each re-sampled document is (shares of the documents beyond the originals)
ORIGINALS = 0.6  # at most this share of the corpus are originals (all of them at 100k documents: ~5k exist)
NEAR, EXACT, COPY = 0.15, 0.05, 0.05  # the rest are variants: ~20% of the words swapped, not duplicates

# the 1B extrapolation's assumptions
TARGET_DOCS = 1_000_000_000
NODES = (1, 8, 64)
CORES = 32
NETWORK_GBIT = 10.0  # per node, each direction


# ----------------------------------------------------------------------------- the corpus
def base_documents(tmp: Path) -> dict[str, pd.DataFrame]:
    """The originals: the default world (generated into ``tmp``) and the real samples, read by the project's readers."""
    from real_samples import CORPORA

    from fluxforge.config import Source, load_params
    from fluxforge.data.curate import input_files, load_config, sources_for
    from fluxforge.data.sources import read_source
    from fluxforge.world import generate_world

    generate_world(load_params(ROOT / "params.yaml").world, tmp / "world")
    out = {"world": read_source(Source(name="world", format="world", path=str(tmp / "world")))[0]}
    for name, (pattern, config) in CORPORA.items():
        if not SHARED.is_dir():
            break
        glob = str(SHARED / pattern)
        cfg_path = HERE / "real_samples" / config
        by_format = input_files(glob)
        for src in sources_for(glob, by_format, load_config(cfg_path), cfg_path):
            out[name] = read_source(src, files=by_format[src.format])[0]
    return out


def _edit(text: str, rng: random.Random, share: float | None) -> str:
    """Swap words for other words of the same text, whitespace kept: one word at a third of the text (share None),
    else about ``share`` of them."""
    parts = EDIT.split(text)
    words = parts[0::2]
    if len(words) < 2:
        return text + " x"
    if share is None:
        words[len(words) // 3] = f"x{rng.randrange(10**6)}"
    else:
        for i in rng.sample(range(len(words)), max(1, int(share * len(words)))):
            words[i] = rng.choice(words)
    parts[0::2] = words
    return "".join(parts)


def build_corpus(base: dict[str, pd.DataFrame], n: int, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """``n`` documents: originals (all of them, or a random ``ORIGINALS`` share of ``n`` when that is fewer), then
    re-sampled originals: near copies (one word changed), exact copies after normalisation (punctuation added),
    verbatim copies and variants (~20% of the words swapped: new documents for the filters, not duplicates). A
    copy's timestamp is its original's +-200 days, so the copy is sometimes the older one; the table is shuffled,
    so duplicates span shards."""
    rng = random.Random(seed)
    pool = pd.concat([df.assign(_from=name) for name, df in base.items()], ignore_index=True)
    pool = pool.sample(n=min(len(pool), math.ceil(ORIGINALS * n)), random_state=seed).reset_index(drop=True)
    picks = [rng.randrange(len(pool)) for _ in range(n - len(pool))]
    texts, kinds = [], []
    for i in picks:
        text, r = pool["text"].iat[i], rng.random()
        if r < NEAR:
            text, kind = _edit(text, rng, None), "near copy"
        elif r < NEAR + EXACT:
            text, kind = text + " !", "exact copy (punctuation)"
        elif r < NEAR + EXACT + COPY:
            kind = "verbatim copy"
        else:
            text, kind = _edit(text, rng, 0.2), "variant"
        texts.append(text)
        kinds.append(kind)
    extra = pool.iloc[picks].reset_index(drop=True)
    extra["text"], extra["_kind"] = texts, kinds
    extra["id"] = [f"{d}~{k}" for k, d in enumerate(extra["id"])]
    days = pd.to_timedelta([rng.randint(-200, 200) for _ in picks], unit="D")
    extra["timestamp"] = pd.to_datetime(extra["timestamp"], utc=True) + days
    out = pd.concat([pool.assign(_kind="original"), extra], ignore_index=True)
    out = out.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    counts = {"by_source": out["_from"].value_counts().to_dict(),
              "by_kind": out.groupby(["_from", "_kind"]).size().unstack(fill_value=0).to_dict(orient="index"),
              "originals_read": {k: len(v) for k, v in base.items()},
              "mean_text_bytes": float(out["text"].str.encode("utf-8").str.len().mean())}
    return out.drop(columns=["_from", "_kind"]), counts


def write_shards(df: pd.DataFrame, folder: Path, shard_docs: int) -> list[Path]:
    from fluxforge.data.documents import write_docs

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s, start in enumerate(range(0, len(df), shard_docs)):
        paths.append(folder / f"part-{s:05d}.parquet")
        write_docs(df.iloc[start:start + shard_docs], paths[-1])
    return paths


# ----------------------------------------------------------------------------- memory and CPU of the processes
def _hwm_kb(pid: int) -> int:
    """The kernel's RSS high-water mark (VmHWM) of a process, in KiB."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


class Sampler(threading.Thread):
    """Every ``interval`` s: VmHWM, title and CPU time of every descendant of this process (pool workers, Ray nodes
    and their workers), and this process's own RSS. VmHWM only grows, so a sample misses only what a process grew
    in its last ``interval`` s before exiting (a Prefect pool is shut down when its flow ends)."""

    def __init__(self, interval: float = 0.25):
        super().__init__(daemon=True)
        import psutil

        self.me, self.interval, self.halt = psutil.Process(), interval, threading.Event()
        self.procs: dict[int, dict] = {}
        self.driver_rss = 0

    def sample(self) -> None:
        import psutil

        self.driver_rss = max(self.driver_rss, self.me.memory_info().rss)
        for p in self.me.children(recursive=True):
            try:
                cmd = p.cmdline()
                hwm, cpu = _hwm_kb(p.pid), sum(p.cpu_times()[:2])
            except (psutil.Error, OSError):
                continue
            rec = self.procs.setdefault(p.pid, {"cpu0": cpu, "titles": set(), "hwm_kb": 0})
            rec["titles"].add(" ".join(cmd)[:80])
            rec["hwm_kb"], rec["cpu"] = max(rec["hwm_kb"], hwm), cpu

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            self.sample()

    def finish(self) -> dict:
        self.halt.set()
        self.join()
        workers, services = [], []
        for pid, r in self.procs.items():
            titles = r["titles"]
            is_worker = any(t.startswith("ray::") for t in titles) or any(
                "multiprocessing" in t and "resource_tracker" not in t for t in titles)
            entry = {"pid": pid, "peak_rss_mib": r["hwm_kb"] / 1024, "cpu_s": r.get("cpu", r["cpu0"]) - r["cpu0"],
                     "title": sorted(titles, key=lambda t: "IDLE" in t)[0]}
            (workers if is_worker else services).append(entry)
        busy = [w for w in workers if w["cpu_s"] > 0.05]  # Ray keeps idle workers around; count the ones that worked
        return {"workers": sorted(busy, key=lambda w: -w["cpu_s"]),
                "services_peak_rss_mib": sum(s["peak_rss_mib"] for s in services),
                "driver_peak_rss_mib": self.driver_rss / 2**20}


# ----------------------------------------------------------------------------- one runner, in a process of its own
def runner_config(name: str, shard_docs: int, address: str | None):
    from fluxforge.config import RunnerConfig

    if name == "serial":
        return RunnerConfig(kind="serial", shard_docs=shard_docs)
    if name == "process x2":
        return RunnerConfig(kind="process", workers=2, shard_docs=shard_docs)
    return RunnerConfig(kind="ray", address=address, shard_docs=shard_docs)


def curate_once(raw: pd.DataFrame, cfg, work: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The DAG's filter stage then its dedup stage, on ``cfg`` (a RunnerConfig); per-step wall and driver CPU seconds."""
    from fluxforge.config import load_params
    from fluxforge.data.dedup import dedup
    from fluxforge.data.filters.sharded import filter_in_shards
    from fluxforge.orchestrate.runners import dedup_engine, shard_runner

    data = load_params(ROOT / "params.yaml").data
    t0, c0 = time.perf_counter(), time.process_time()
    kept, _, fstats, run = filter_in_shards(raw, data.filters, cfg.shard_docs, shard_runner(cfg), work_root=work)
    run.discard()
    t1, c1 = time.perf_counter(), time.process_time()
    curated, rejected, dstats = dedup(kept, data.dedup, engine=dedup_engine(cfg))
    t2, c2 = time.perf_counter(), time.process_time()
    times = {"filter_s": t1 - t0, "dedup_s": t2 - t1, "filter_driver_cpu_s": c1 - c0, "dedup_driver_cpu_s": c2 - c1,
             "filter_shards": run.shards, "dedup_stats": dstats}
    return kept, curated, times


def cost_breakdown(kept: pd.DataFrame) -> dict:
    """CPU seconds, in this process, of dedup's parts (the project's own functions, as ``dedup`` calls them):
    sketches (exact hashes, shingles, MinHash: the per-shard map) and the LSH band grouping (the shuffle's work)."""
    from fluxforge.config import load_params
    from fluxforge.data.dedup import candidate_pairs, sketch

    cfg = load_params(ROOT / "params.yaml").data.dedup
    texts = kept.sort_values(["timestamp", "id"], kind="stable")["text"].reset_index(drop=True)
    c0 = time.process_time()
    sk = sketch(texts, cfg)
    c1 = time.process_time()
    candidate_pairs(sk.signatures, cfg)
    c2 = time.process_time()
    return {"sketch_cpu_s": c1 - c0, "lsh_cpu_s": c2 - c1}


def child(args: argparse.Namespace) -> None:
    """Measure one runner (``--child NAME``) on the corpus in ``--corpus``; write the result to ``--out``."""
    from contextlib import ExitStack

    from fluxforge.data.documents import read_docs

    name, corpus, out = args.child, Path(args.corpus), Path(args.out)
    paths = sorted((corpus / "shards").glob("*.parquet"))
    t0 = time.perf_counter()
    raw = read_docs(paths)
    read_s = time.perf_counter() - t0
    warm = raw.iloc[:WARMUP_DOCS].assign(id=lambda d: d["id"] + "~warm-up")
    result: dict = {"runner": name, "docs": len(raw), "read_s": read_s}
    with ExitStack() as stack:
        t0 = time.perf_counter()
        address, cluster_kind = None, "none: in the driver"
        if name.startswith("ray"):
            import ray

            from ray_nodes import ray_cluster

            workers = int(name[-1])
            logs = corpus / f"ray-{workers}"
            logs.mkdir()
            cluster = stack.enter_context(ray_cluster(logs, workers=workers - 1, cpus=1))
            address = cluster.address
            ray.init(address=address, log_to_driver=False, logging_level="WARNING")  # ray_session reuses it
            stack.callback(ray.shutdown)
            cluster_kind = (f"`ray start` head node (1 CPU){' + 1 worker node (1 CPU)' if workers > 1 else ''}, "
                            "loopback, joined by address")
        elif name.startswith("process"):
            cluster_kind = "Prefect ProcessPoolTaskRunner, 2 processes (spawned again for each step)"
        result["cluster_start_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        curate_once(warm, runner_config(name, WARMUP_DOCS // 2, address), corpus / f"work-warm-{name}")
        result["warmup_s"] = time.perf_counter() - t0
        result["cluster"] = cluster_kind

        sampler = Sampler()
        sampler.sample()
        sampler.start()
        kept, curated, times = curate_once(raw, runner_config(name, args.shard_docs, address), corpus / f"work-{name}")
        result.update(times)
        result.update(sampler.finish())
    result["driver_ru_maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["filter_kept"], result["curated"] = len(kept), len(curated)
    if name == "serial":
        result.update(cost_breakdown(kept))
        result["row_bytes"] = float(raw.memory_usage(deep=True).sum() / len(raw))
    (out.parent / f"{out.stem}-ids.json").write_text(json.dumps({"filter": kept["id"].tolist(),
                                                                 "dedup": curated["id"].tolist()}))
    out.write_text(json.dumps(result, default=str))


# ----------------------------------------------------------------------------- the driver
def child_env(tmp: Path) -> dict[str, str]:
    env = {**os.environ, "FLUXFORGE_PROGRESS": "0", "RAY_USAGE_STATS_ENABLED": "0", "PREFECT_LOGGING_LEVEL": "WARNING",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *sys.path])}
    # as tests/conftest.py: every Ray process authenticates with this run's token
    env.setdefault("RAY_AUTH_MODE", "token")
    env.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))
    if "PREFECT_API_URL" not in env:  # a temporary Prefect server with its own database, not the user's ~/.prefect
        env["PREFECT_HOME"] = str(tmp / "prefect")
    return env


def measure(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="ray-curation-"))
    try:
        t0 = time.perf_counter()
        corpus, counts = build_corpus(base_documents(tmp), args.docs)
        shard_docs = math.ceil(len(corpus) / args.shards)
        write_shards(corpus, tmp / "shards", shard_docs)
        print(f"corpus: {len(corpus)} documents in {args.shards} shards of {shard_docs} "
              f"({time.perf_counter() - t0:.1f} s to build); by source {counts['by_source']}", flush=True)
        del corpus
        runs, ids = {}, {}
        for name in RUNNERS:
            out = tmp / f"{name.replace(' ', '-')}.json"
            t0 = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--child", name, "--corpus", str(tmp), "--out", str(out),
                            "--shard-docs", str(shard_docs)], env=child_env(tmp), check=True)
            runs[name] = json.loads(out.read_text())
            ids[name] = json.loads((out.parent / f"{out.stem}-ids.json").read_text())
            r = runs[name]
            print(f"{name:11s} filter {r['filter_s']:7.1f} s, dedup {r['dedup_s']:7.1f} s, "
                  f"{r['docs'] / (r['filter_s'] + r['dedup_s']):7.0f} docs/s; start-up {r['cluster_start_s']:.1f} s "
                  f"+ warm-up {r['warmup_s']:.1f} s; process wall {time.perf_counter() - t0:.0f} s", flush=True)
        for name in RUNNERS[1:]:
            for step in ("filter", "dedup"):
                same = ids[name][step] == ids["serial"][step]
                assert same, (f"{name} kept other ids than serial after {step}: {len(ids[name][step])} vs "
                              f"{len(ids['serial'][step])}, {len(set(ids[name][step]) ^ set(ids['serial'][step]))} differ")
        print("every runner kept the same ids after filter and after dedup", flush=True)
        return {"docs": args.docs, "shards": args.shards, "shard_docs": shard_docs, "corpus": counts, "runs": runs}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def extrapolate(res: dict) -> tuple[list[dict], dict]:
    """The measured per-document cost scaled to TARGET_DOCS on N nodes of CORES cores (an extrapolation, not a run)."""
    from fluxforge.config import load_params

    dedup_cfg = load_params(ROOT / "params.yaml").data.dedup
    serial, ray1 = res["runs"]["serial"], res["runs"]["ray x1"]
    n = serial["docs"]
    keep = serial["filter_kept"] / n
    per_doc = {  # CPU seconds per INPUT document, on one core
        "filter": serial["filter_driver_cpu_s"] / n,
        "sketch": serial["sketch_cpu_s"] / n,
        "lsh": serial["lsh_cpu_s"] / n,
        "rest": max(0.0, serial["dedup_driver_cpu_s"] - serial["sketch_cpu_s"] - serial["lsh_cpu_s"]) / n,
    }
    overhead = max(1.0, (ray1["filter_s"] + ray1["dedup_s"]) / (serial["filter_s"] + serial["dedup_s"]))
    key_row = np.dtype([("band", np.int32), ("key", np.uint64), ("id", np.int64)]).itemsize  # ray_cluster.partition_keys
    shuffle_bytes = keep * dedup_cfg.bands * key_row  # per input document
    bw = NETWORK_GBIT * 1e9 / 8
    driver_bytes = serial["row_bytes"] * (1 + keep)  # filter results back to the driver + kept texts sent out to dedup
    rows = []
    for nodes in NODES:
        cores = nodes * CORES
        hours = {k: TARGET_DOCS * v * overhead / cores / 3600 for k, v in per_doc.items() if k != "rest"}
        shuffle_h = 0.0 if nodes == 1 else TARGET_DOCS / nodes * shuffle_bytes * (nodes - 1) / nodes / bw / 3600
        rows.append({"nodes": nodes, "cores": cores, **hours, "shuffle_h": shuffle_h,
                     "total_h": sum(hours.values()) + shuffle_h})
    facts = {"per_doc": per_doc, "overhead": overhead, "keep": keep, "shuffle_bytes": shuffle_bytes,
             "driver_bytes": driver_bytes, "driver_h": TARGET_DOCS * driver_bytes / bw / 3600,
             "driver_rest_h": TARGET_DOCS * per_doc["rest"] / 3600, "key_row": key_row, "bands": dedup_cfg.bands}
    return rows, facts


def markdown(res: dict, command: str) -> str:
    runs, c = res["runs"], res["corpus"]
    rows, f = extrapolate(res)
    lines = [f"Machine: {machine()}. Date: {dt.date.today()}. Command: `{command}`.", "",
             f"Corpus: {res['docs']} documents in {res['shards']} Parquet shards of {res['shard_docs']}: "
             + ", ".join(f"{k} {v}" for k, v in c["by_source"].items())
             + f" (originals read: {', '.join(f'{k} {v}' for k, v in c['originals_read'].items())}; mean text "
             f"{c['mean_text_bytes']:.0f} bytes). Per source and kind: "
             + "; ".join(f"{s}: " + ", ".join(f"{k} {v}" for k, v in kinds.items() if v) for s, kinds in c["by_kind"].items())
             + ". Filters and dedup: params.yaml's `data.filters` and `data.dedup`, the DAG's `filter_in_shards` and "
             "`dedup` with `shard_runner`/`dedup_engine` (src/fluxforge/orchestrate/runners.py). Every runner kept "
             f"the same ids (asserted): {runs['serial']['filter_kept']} after filter, {runs['serial']['curated']} after dedup.",
             "", "| runner | cluster | start-up s (+ warm-up s) | filter s | dedup s | docs/s | worker CPU s | "
             "peak RSS per worker MiB | driver peak MiB |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in runs.items():
        total = r["filter_s"] + r["dedup_s"]
        workers = r["workers"]
        peaks = ", ".join(f"{w['peak_rss_mib']:.0f}" for w in workers) or "- (in the driver)"
        cpu = f"{sum(w['cpu_s'] for w in workers):.1f}" if workers else "-"
        lines.append(f"| {name} | {r['cluster']} | {r['cluster_start_s']:.1f} (+ {r['warmup_s']:.1f}) | {r['filter_s']:.1f} | "
                     f"{r['dedup_s']:.1f} | {r['docs'] / total:.0f} | {cpu} | {peaks} | {r['driver_ru_maxrss_mib']:.0f} |")
    lines += ["", "Start-up (not in docs/s): the cluster's `ray start` processes and the driver's connection, or nothing; "
              "warm-up = the same two steps on 100 documents, which starts Prefect's temporary server (process) or "
              "imports the code in the Ray workers. The process pool is spawned again inside each timed step (the "
              "project's Prefect runner makes a pool per flow, whose workers import Prefect and fluxforge each time: the "
              "worker CPU column shows it), and dedup runs in the driver for every kind but ray. "
              "Peak RSS per worker: the kernel's high-water mark (VmHWM) of each worker process that did work, sampled "
              "every 0.25 s (a Ray worker's RSS counts the object-store pages it touched); driver: its ru_maxrss. "
              "Worker CPU s: user+system CPU of those workers during the timed run. On 2 busy cores, 2 workers cannot "
              "beat 1 by much: the ratios here are about overhead, not scaling.", "",
              "### Extrapolation to 1B documents (computed, not measured)", "",
              f"CPU seconds per input document, measured in-process above: filter {f['per_doc']['filter'] * 1e3:.2f} ms, "
              f"dedup sketches (exact hash, shingles, MinHash) {f['per_doc']['sketch'] * 1e3:.2f} ms, LSH band grouping "
              f"{f['per_doc']['lsh'] * 1e3:.3f} ms, the rest of dedup (confirmation, clusters, tables; in the driver) "
              f"{f['per_doc']['rest'] * 1e3:.3f} ms. Ray overhead factor {f['overhead']:.2f} (ray x1 wall / serial wall, "
              f"at least 1) multiplies the parallel work. {f['keep']:.0%} of documents pass the filter.", "",
              f"| nodes x {CORES} cores | filter h | sketches h | LSH grouping h | shuffle network h | total h |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['nodes']} x {CORES} ({r['cores']} cores) | {r['filter']:.1f} | {r['sketch']:.1f} | "
                     f"{r['lsh']:.2f} | {r['shuffle_h']:.3f} | {r['total_h']:.1f} |")
    lines += ["", "Assumptions: the per-document CPU cost measured here holds at any scale (same document mix; "
              "per-shard work scales linearly with documents and with cores, no straggler or retry cost); the shuffle "
              f"moves {f['bands']} band keys of {f['key_row']} bytes (band, key, id) per filtered document "
              f"({f['shuffle_bytes']:.0f} bytes per input document), (N-1)/N of it across a {NETWORK_GBIT:.0f} Gbit/s "
              f"link per node; peak memory per worker stays what it is at {res['shard_docs']} documents per shard "
              "(it depends on the shard, not the corpus). Not measured: reading and writing 1B documents from "
              "object storage, the confirmation of pairs at scale (the number of candidate pairs grows with the "
              "duplicate rate), node failures, and the driver. The driver is the limit of the code as it is: "
              "the stages read the whole corpus into the driver, every filter shard's result comes back to it and "
              f"dedup sends the kept texts out from it: ~{f['driver_bytes']:.0f} bytes per document through one "
              f"process, {f['driver_h']:.1f} h at {NETWORK_GBIT:.0f} Gbit/s and ~{TARGET_DOCS * f['driver_bytes'] / 1e12:.0f} TB "
              "in its memory for 1B documents, plus the in-driver rest of dedup "
              f"({f['driver_rest_h']:.1f} h on one core). So 1B documents need the shards read and written by the "
              "workers (the driver keeping ids, exact hashes and pairs only) before the table above applies."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=100_000, help="documents in the corpus (default 100000)")
    ap.add_argument("--shards", type=int, default=20, help="Parquet shards = filter shards = dedup map tasks (default 20)")
    ap.add_argument("--write", action="store_true", help='replace the "Ray curation" section of BENCHMARKS.md')
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--corpus", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--shard-docs", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    if args.shards < 2:
        ap.error("--shards must be at least 2 (one shard runs in the driver whatever the runner)")
    t0 = time.perf_counter()
    res = measure(args)
    command = f"python benchmarks/ray_curation.py --docs {args.docs} --shards {args.shards}" + (" --write" if args.write else "")
    body = markdown(res, command)
    if args.write:
        (HERE / "results").mkdir(exist_ok=True)
        (HERE / "results" / "ray_curation.json").write_text(json.dumps(res, indent=2, default=str))
        replace_section(ROOT / "BENCHMARKS.md", "Ray curation", body)
    print(body)
    print(f"\n(benchmark wall time {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
