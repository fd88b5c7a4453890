"""MLflow model registry: register with lineage, aliases, and a promotion gate from params.

Versions carry their lineage as tags (git commit, ``dvc.lock`` hashes of the chain,
dataset digests, parent, cumulative tokens, evaluation numbers). ``challenger`` always
points at the newest version; ``champion`` moves only when every gate rule holds.
Aliases move with one ``set_registered_model_alias`` call, which is atomic in MLflow.
The logged model is an MLflow pyfunc whose ``artifacts/hf`` directory is a plain HF
checkpoint, so both MLflow and transformers users load it.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

from fluxforge import paths as P
from fluxforge.config import GateConfig, Params
from fluxforge.io import digest_path
from fluxforge.track.lineage import git_commit, lock_hashes, stage_chain
from fluxforge.track.promotion import promote
from fluxforge.track.runs import stage_run

log = logging.getLogger(__name__)
PYFUNC = Path(__file__).with_name("hf_pyfunc.py")


def headline(ev: dict, name: str) -> dict:
    m = ev["models"][name]
    return {"general_ppl": m["general"]["ppl"], "cyber_ppl": m["cyber"]["ppl"],
            "general_acc": m["general"]["acc"], "cyber_acc": m["cyber"]["acc"]}


def gate(ev: dict, cfg: GateConfig, champion: dict | None) -> tuple[bool, list[str]]:
    """Apply the promotion rules; return (passed, one human-readable line per rule)."""
    final, base = headline(ev, ev["final"]), headline(ev, "pretrain")
    reasons: list[tuple[bool, str]] = []
    gain = final["cyber_acc"] - base["cyber_acc"]
    reasons.append((gain >= cfg.min_cyber_acc_gain,
                    f"cyber accuracy gain {gain:+.3f} over pretrain (need >= {cfg.min_cyber_acc_gain:+.3f})"))
    p = ev["tests"]["cyber"]["p_final_vs_pretrain"]
    reasons.append((p <= cfg.max_significance_p, f"cyber gain one-sided p = {p:.2e} (need <= {cfg.max_significance_p})"))
    rise = final["general_ppl"] / base["general_ppl"] - 1
    reasons.append((rise <= cfg.max_general_ppl_increase,
                    f"general held-out perplexity {rise:+.1%} vs pretrain (need <= {cfg.max_general_ppl_increase:+.0%})"))
    if cfg.min_student_ppl_ratio > 0 and "student" in ev["models"]:
        ratio = final["general_ppl"] / ev["models"]["student"]["general"]["ppl"]
        reasons.append((ratio >= cfg.min_student_ppl_ratio,
                        f"student keeps {ratio:.2f} of the teacher's perplexity quality (need >= {cfg.min_student_ppl_ratio})"))
    if cfg.min_student_acc_fraction > 0 and ev.get("distill"):
        d = ev["distill"]
        worst = min(d["general_acc_fraction"], d["cyber_acc_fraction"])
        reasons.append((worst >= cfg.min_student_acc_fraction,
                        f"student keeps {worst:.0%} of the teacher's above-chance accuracy in its worst domain "
                        f"(need >= {cfg.min_student_acc_fraction:.0%})"))
    if cfg.must_beat_champion and champion and champion.get("eval_set") != ev.get("eval_set_digest"):
        # numbers from another question set say nothing about which model is better
        reasons.append((True, f"champion v{champion['version']} was scored on another evaluation set; not compared"))
    elif cfg.must_beat_champion and champion:
        mine = (final["general_acc"] + final["cyber_acc"]) / 2
        theirs = (champion["general_acc"] + champion["cyber_acc"]) / 2
        # equal counts of correct answers must tie, also against tags older versions rounded to 6 digits
        # (accuracy moves in steps of 1/questions, far above the tolerance)
        reasons.append((mine >= theirs - 1e-6, f"mean accuracy {mine:.3f} vs champion v{champion['version']} {theirs:.3f} (need >=)"))
    elif cfg.must_beat_champion:
        reasons.append((True, "no champion yet"))
    return all(ok for ok, _ in reasons), [("PASS " if ok else "FAIL ") + text for ok, text in reasons]


def _champion(client, name: str) -> dict | None:  # noqa: ANN001
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None
    tags = mv.tags or {}
    try:
        nums = {k: float(tags[f"eval.{k}"]) for k in ("general_acc", "cyber_acc", "general_ppl", "cyber_ppl")}
    except (KeyError, ValueError):
        nums = {"general_acc": 0.0, "cyber_acc": 0.0, "general_ppl": float("inf"), "cyber_ppl": float("inf")}
    return {"version": str(mv.version), "eval_set": tags.get("eval.set_digest", ""), **nums}


def _compute(model_name: str) -> dict[str, float]:
    """Training seconds and approximate FLOPs (6 x parameters x tokens) summed along the parent chain."""
    seconds, flops, name = 0.0, 0.0, model_name
    while name:
        info, metrics = P.model_info(P.model_dir(name)), P.train_metrics(name)
        seconds += float(metrics.get("train_seconds", 0.0))
        flops += 6.0 * info.get("parameters", 0) * info.get("tokens", 0)
        name = info.get("parent", "") if info.get("stage") != "distill" else ""  # a teacher's compute is not the student's
    return {"seconds": seconds, "flops": flops}


def lineage_tags(params: Params, model_name: str) -> dict[str, str]:
    info = P.model_info(P.model_dir(model_name))
    compute = _compute(model_name)
    tags = {
        **git_commit(),
        "fluxforge.model_path": str(P.model_dir(model_name)),
        "fluxforge.parent": info.get("parent", ""),
        "fluxforge.train_run_id": P.train_metrics(model_name).get("mlflow_run_id", ""),
        "fluxforge.cumulative_tokens": str(info.get("cumulative_tokens", "")),
        "fluxforge.parameters": str(info.get("parameters", "")),
        "fluxforge.teacher": info.get("teacher", ""),
        "fluxforge.train_seconds": f"{compute['seconds']:.1f}",
        "fluxforge.train_flops": f"{compute['flops']:.3e}",
        "fluxforge.lineage": json.dumps(stage_chain(P.model_dir(model_name)), separators=(",", ":"))[:5000],
        # a stream model: the update method that made it and the budget it had (continual.methods, continual.budget)
        **({"fluxforge.method": json.dumps(info["method"], separators=(",", ":"))} if "method" in info else {}),
        **({"fluxforge.budget": json.dumps(info["budget"], separators=(",", ":"))} if "budget" in info else {}),
        "data.curated.sha256": digest_path(P.CURATED / "curated.parquet") if (P.CURATED / "curated.parquet").exists() else "",
        "data.tokens.sha256": digest_path(P.TOKENS) if P.TOKENS.exists() else "",
    }
    for stage, h in lock_hashes().items():
        tags[f"dvc.lock.{stage.replace('@', '/')}"] = h  # MLflow tag keys may not contain '@'
    return tags


def register_and_gate(params: Params, ev: dict) -> dict:
    import mlflow

    name = params.registry.model_name
    final = ev["final"]
    with stage_run("register", params, params.registry.model_dump(), inputs={"model": P.model_dir(final)}) as run:
        client = mlflow.MlflowClient()
        champion = _champion(client, name)
        with tempfile.TemporaryDirectory() as tmp:
            hf = Path(tmp) / "hf"  # MLflow names the artifact after the directory: keep it stable
            shutil.copytree(P.model_dir(final), hf)
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(PYFUNC), artifacts={"hf": str(hf)},
                registered_model_name=name, pip_requirements=["torch", "transformers", "safetensors"],
            )
        version = str(info.registered_model_version)
        nums = headline(ev, final)
        tags = {**lineage_tags(params, final), **{f"eval.{k}": repr(float(v)) for k, v in nums.items()},
                "eval.set_digest": ev.get("eval_set_digest", ""),
                "params": json.dumps(params.model_dump(by_alias=True), default=str)[:5000]}
        for k, v in tags.items():
            client.set_model_version_tag(name, version, k, v)
        client.set_registered_model_alias(name, "challenger", version)
        passed, reasons = gate(ev, params.registry.gate, champion)
        client.set_model_version_tag(name, version, "gate", "passed" if passed else "failed")
        client.set_model_version_tag(name, version, "gate.reasons", "\n".join(reasons)[:5000])
        if passed:
            promote(name, version, reason="gate passed")
        run.metrics({"promoted": int(passed), **nums})
        mlflow.set_tags({"registered_model": name, "registered_version": version})
    return {"model_name": name, "version": version, "model_uri": f"models:/{name}/{version}", "promoted": passed,
            "previous_champion": champion["version"] if champion else None, "reasons": reasons, "headline": nums}
