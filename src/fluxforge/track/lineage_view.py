"""What ``fluxforge lineage NAME@ALIAS`` prints: a registered version traced back to the raw data.

Everything comes from the version's tags, written at registration (``registry.lineage_tags``),
so the answer is the same on any machine that can reach the registry, with or without the
DVC workspace that produced the model.
"""

from __future__ import annotations

import json

from fluxforge.track.promotion import history
from fluxforge.track.resolve import parse_models_uri, version_of


def lineage_lines(ref: str) -> list[str]:
    """Human-readable lines for ``NAME@ALIAS``, ``NAME/VERSION``, or the same with a ``models:/`` prefix."""
    import mlflow

    uri = ref if ref.startswith("models:/") else f"models:/{ref}"
    parse_models_uri(uri)  # a clear error for a malformed reference before any network call
    name, version = version_of(uri)
    client = mlflow.MlflowClient()
    mv = client.get_model_version(name, version)
    t = mv.tags or {}
    aliases = [a for a, v in (client.get_registered_model(name).aliases or {}).items() if str(v) == version]
    lines = [
        f"{name} v{version}" + (f"  [{', '.join(sorted(aliases))}]" if aliases else ""),
        f"  registered   {mv.creation_timestamp and _ts(mv.creation_timestamp)}  run {mv.run_id or '-'}",
        f"  gate         {t.get('gate', '-')}",
        *[f"                 {r}" for r in t.get("gate.reasons", "").splitlines()],
        f"  evaluation   cyber acc {t.get('eval.cyber_acc', '-')}  general acc {t.get('eval.general_acc', '-')}  "
        f"general ppl {t.get('eval.general_ppl', '-')}  (eval set {t.get('eval.set_digest', '-')[:12]})",
        f"  code         git {t.get('git_commit', '-')[:12]}" + ("  (dirty working tree)" if t.get("git_dirty") == "true" else ""),
        f"  model        {t.get('fluxforge.model_path', '-')}  {t.get('fluxforge.parameters', '-')} parameters",
        f"  compute      {t.get('fluxforge.cumulative_tokens', '-')} tokens, {t.get('fluxforge.train_flops', '-')} FLOPs, "
        f"{t.get('fluxforge.train_seconds', '-')} s of training along the chain",
    ]
    if t.get("fluxforge.teacher"):
        lines.append(f"  teacher      {t['fluxforge.teacher']}")
    if t.get("fluxforge.parent_version"):
        lines.append(f"  parent       {name} v{t['fluxforge.parent_version']}")
    chain = json.loads(t.get("fluxforge.lineage", "[]") or "[]")
    if chain:
        lines.append("  chain (dvc.lock hashes, newest first):")
        for link in chain:
            outs = ", ".join(f"{p} {h[:12]}" for p, h in link["outs"].items()) or "(no recorded outputs)"
            lines.append(f"    <- {link['stage']:<22} {outs}")
    else:
        lines.append("  chain        not recorded (registered outside a DVC workspace)")
    past = [e for e in history(name) if e["version"] == version]
    for e in past:
        lines.append(f"  {e['action']:<12} {e['at']} by {e['by']}: champion v{e['previous'] or '-'} -> v{e['version']} ({e['reason']})")
    return lines


def _ts(ms: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="seconds")
