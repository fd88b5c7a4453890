"""Our quality filters vs datatrove 0.10.1's on the same documents: keep/drop agreement and speed.

datatrove (with spaCy, which it uses to split words) runs in its own venv, ``benchmarks/.venv-datatrove``
(made by ``--setup``, or on first use), in a subprocess that writes one keep/drop + reason per document
and filter; ours runs here, in the project's .venv. Filters compared, each on the ORIGINAL documents:
GopherQualityFilter, GopherRepetitionFilter, C4QualityFilter(filter_no_terminal_punct=False) and
FineWebQualityFilter, all at their defaults. Speed: the 4-filter chain in FineWeb's order (C4 rewrites
the text FineWeb sees), one process, docs/s of CPU time (= per core).

Corpora: the generated world (data/raw/world.parquet, needs `dvc repro ingest`), WikiText-2 articles
(../shared/data/general/*.txt split on level-1 " = Title = " headings) and CTI-Bench descriptions
(../shared/data/cyber/*.tsv, column Description or Text).

Usage: python benchmarks/filters_vs_datatrove.py [--setup] [--limit N] [--no-md]
Writes benchmarks/results/filters_vs_datatrove.json and the "Filters vs datatrove" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV = HERE / ".venv-datatrove"
VENV_PY = VENV / "bin" / "python"
PINS = ["datatrove==0.10.1", "spacy==3.8.18", "regex"]  # datatrove's filters need regex (its "processing" extra)
FILTERS = ("gopher_repetition", "gopher_quality", "c4", "fineweb")
SHARED = ROOT.parent / "shared" / "data"


# ----------------------------------------------------------------------------- datatrove side (its own venv)
def datatrove_worker(docs_path: str, out_path: str) -> None:
    """Runs inside .venv-datatrove: per-filter keep/drop on original docs, then the timed chain."""
    from datatrove.data import Document
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    docs = [json.loads(line) for line in Path(docs_path).read_text().splitlines()]
    make = {
        "gopher_repetition": GopherRepetitionFilter,
        "gopher_quality": GopherQualityFilter,
        "c4": lambda: C4QualityFilter(filter_no_terminal_punct=False),
        "fineweb": FineWebQualityFilter,
    }
    filters = {k: f() for k, f in make.items()}

    def run(f, text: str, i: int) -> tuple[bool, str, str]:
        d = Document(text=text, id=str(i))
        res = f.filter(d)
        keep, why = (res, "") if isinstance(res, bool) else res
        return bool(keep), why or "", d.text

    filters["gopher_quality"].filter(Document(text="warm up the spacy tokenizer " * 20, id="w"))
    out: dict = {k: [] for k in FILTERS}
    for i, doc in enumerate(docs):
        for k in FILTERS:
            keep, why, _ = run(filters[k], doc["text"], i)
            out[k].append([keep, why])
    t0, c0 = time.perf_counter(), time.process_time()
    kept = 0
    for i, doc in enumerate(docs):
        text = doc["text"]
        for k in FILTERS:  # FineWeb's order; C4 rewrites the text for FineWeb
            keep, _, text = run(filters[k], text, i)
            if not keep:
                break
        kept += keep
    out["chain"] = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "kept": kept}
    Path(out_path).write_text(json.dumps(out))


# ----------------------------------------------------------------------------- our side
def setup() -> None:
    if not VENV_PY.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(VENV_PY), "-m", "pip", "install", "-q", *PINS], check=True)


def load_corpora(limit: int | None) -> dict[str, list[str]]:
    import pandas as pd

    out: dict[str, list[str]] = {}
    world = ROOT / "data" / "raw" / "world.parquet"
    if world.exists():
        out["world"] = pd.read_parquet(world)["text"].tolist()
    wiki = []
    for f in sorted((SHARED / "general").glob("*.txt")):
        parts = re.split(r"^ = (?!=)(.+?) = $", f.read_text(), flags=re.M)
        wiki += [f" = {t} = \n{body}".strip() for t, body in zip(parts[1::2], parts[2::2], strict=True)]
    if wiki:
        out["wikitext2"] = wiki
    cti = []
    for f in sorted((SHARED / "cyber").glob("*.tsv")):
        df = pd.read_csv(f, sep="\t")
        col = "Description" if "Description" in df else "Text"
        cti += df[col].dropna().astype(str).tolist()
    if cti:
        out["cti_bench"] = cti
    if not out:
        sys.exit("no corpus found: need data/raw/world.parquet or ../shared/data")
    return {k: v[:limit] if limit else v for k, v in out.items()}


def ours(texts: list[str]) -> tuple[dict[str, list[list]], dict]:
    import pandas as pd

    from fluxforge.config import C4Config, FilterConfig
    from fluxforge.data.filters import C4, Batch, FineWebQuality, GopherQuality, GopherRepetition, apply_filters

    b = Batch(pd.Series(texts, dtype=object))
    steps = {"gopher_repetition": GopherRepetition(), "gopher_quality": GopherQuality(),
             "c4": C4(C4Config(filter_no_terminal_punct=False)), "fineweb": FineWebQuality()}
    out = {}
    for k, step in steps.items():
        out[k] = [[not x, x.split(":", 1)[1] if x else ""] for x in step(b).reasons]
    off = {"enabled": False}
    cfg = FilterConfig.model_validate({k: off for k in ("boilerplate", "url_blocklist", "language", "toxicity", "pii", "age")})
    df = pd.DataFrame({"id": [str(i) for i in range(len(texts))], "text": texts, "meta": "{}"})
    apply_filters(df.head(50), cfg)  # warm-up (imports, regex compilation)
    t0, c0 = time.perf_counter(), time.process_time()
    kept, _, _ = apply_filters(df, cfg)
    chain = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "kept": int(len(kept))}
    return out, chain


def compare(name: str, texts: list[str], tmp: Path) -> dict:
    docs = tmp / f"{name}.jsonl"
    docs.write_text("\n".join(json.dumps({"text": t}) for t in texts) + "\n")
    res = tmp / f"{name}.dt.json"
    subprocess.run([str(VENV_PY), __file__, "--worker", str(docs), str(res)], check=True)
    theirs = json.loads(res.read_text())
    mine, chain = ours(texts)
    mb = sum(len(t.encode()) for t in texts) / 1e6
    rep: dict = {"docs": len(texts), "MB": round(mb, 3), "filters": {}}
    for k in FILTERS:
        t_keep = [x[0] for x in theirs[k]]
        m_keep = [x[0] for x in mine[k]]
        diff = [i for i in range(len(texts)) if t_keep[i] != m_keep[i]]
        rep["filters"][k] = {
            "agreement": round(1 - len(diff) / len(texts), 4),
            "datatrove_dropped": len(texts) - sum(t_keep), "ours_dropped": len(texts) - sum(m_keep),
            "disagreements": [{"doc": i, "datatrove": theirs[k][i][1] or "keep", "ours": mine[k][i][1] or "keep",
                               "text": texts[i][:160]} for i in diff[:8]],
            "n_disagreements": len(diff),
        }
    tc, oc = theirs["chain"], chain
    rep["chain"] = {
        "datatrove_docs_per_cpu_s": round(len(texts) / tc["cpu_s"], 1),
        "ours_docs_per_cpu_s": round(len(texts) / oc["cpu_s"], 1),
        "speedup": round(tc["cpu_s"] / oc["cpu_s"], 1),
        "datatrove_kept": tc["kept"], "ours_kept": oc["kept"],
        "datatrove_wall_s": round(tc["wall_s"], 3), "ours_wall_s": round(oc["wall_s"], 3),
    }
    return rep


def markdown(results: dict, command: str) -> str:
    sys.path.insert(0, str(HERE))
    from report_md import machine

    lines = [
        f"Machine: {machine()}. Date: {time.strftime('%Y-%m-%d')}. Command: `{command}`",
        "(datatrove 0.10.1 + spaCy 3.8.18 in `benchmarks/.venv-datatrove`; ours in `.venv`; one process each;",
        "docs/s = documents / CPU seconds of the 4-filter chain GopherRepetition -> GopherQuality -> C4 -> FineWeb).",
        "",
        "| corpus | docs | MB | gopher_repetition | gopher_quality | c4 | fineweb | datatrove docs/s | ours docs/s | speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["corpora"].items():
        ag = " | ".join(f"{r['filters'][k]['agreement']:.2%}" for k in FILTERS)
        c = r["chain"]
        lines.append(f"| {name} | {r['docs']} | {r['MB']} | {ag} | {c['datatrove_docs_per_cpu_s']} | "
                     f"{c['ours_docs_per_cpu_s']} | {c['speedup']}x |")
    lines += ["", "Agreement = share of documents both implementations keep or both drop (each filter on the original text);",
              "the differing documents are listed in `benchmarks/results/filters_vs_datatrove.json` (`disagreements`):", ""]
    for name, r in results["corpora"].items():
        for k in FILTERS:
            f = r["filters"][k]
            if f["n_disagreements"]:
                pairs = sorted({f"{d['datatrove']} vs {d['ours']}" for d in f["disagreements"]})
                lines.append(f"- {name} / {k}: {f['n_disagreements']} docs (datatrove vs ours: {'; '.join(pairs)})")
    lines += [
        "",
        "Why they differ: datatrove splits words with spaCy's English tokenizer, ours with one regex that emulates it",
        "(punctuation split off, spaCy's infix rules, `n't`/`'s`, abbreviations). The two agree token for token on",
        "ordinary prose; they part on code-like strings (URL-encoded payloads, `C:\\paths\\`, kernel stack traces,",
        "`--flags`), which moves the share of alphabetic words or the most frequent n-gram of a few CVE descriptions",
        "across a threshold. C4's sentence count emulates spaCy's sentencizer on the same tokens; the rare misses are",
        "tokens such as `HYF54&%` that spaCy keeps whole.",
        "",
        "Speed: ours splits lines/paragraphs/words once per batch (the word regex runs once per distinct whitespace",
        "chunk), then each rule is a numpy/pandas reduction; datatrove tokenises with spaCy inside each filter (an",
        "`lru_cache` of 5 texts lets the next filter reuse it). The machine is shared, so datatrove's rate varied",
        "between runs (WikiText-2: 14-25 docs/s); both sides run in the same invocation, one after the other.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setup", action="store_true", help="(re)install datatrove + spaCy into benchmarks/.venv-datatrove")
    ap.add_argument("--limit", type=int, default=None, help="at most N docs per corpus")
    ap.add_argument("--no-md", action="store_true", help="do not rewrite the BENCHMARKS.md section")
    ap.add_argument("--worker", nargs=2, metavar=("DOCS", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return datatrove_worker(*args.worker)
    if args.setup or not VENV_PY.exists():
        setup()
    sys.path.insert(0, str(ROOT / "src"))
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="filters_vs_datatrove_"))
    results: dict = {"date": time.strftime("%Y-%m-%d"), "corpora": {}}
    for name, texts in load_corpora(args.limit).items():
        print(f"== {name}: {len(texts)} docs", flush=True)
        results["corpora"][name] = rep = compare(name, texts, tmp)
        print(json.dumps({k: v["agreement"] for k, v in rep["filters"].items()}), json.dumps(rep["chain"]), flush=True)
    out = HERE / "results" / "filters_vs_datatrove.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    command = "python benchmarks/filters_vs_datatrove.py" + (f" --limit {args.limit}" if args.limit else "")
    md = markdown(results, command)
    (HERE / "results" / "filters_vs_datatrove.md").write_text(md)
    if not args.no_md:
        sys.path.insert(0, str(HERE))
        from report_md import replace_section

        replace_section(ROOT / "BENCHMARKS.md", "Filters vs datatrove", md)
    print(md)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
