"""What ``fluxforge lineage NAME@ALIAS`` prints: a registered version traced back to the raw data.

Everything comes from the version's tags, written at registration (``registry.lineage_tags``),
so the answer is the same on any machine that can reach the registry, with or without the
DVC workspace that produced the model.
"""

from __future__ import annotations

from fluxforge.track.lineage import LineageError, not_rebuildable, recorded_chain
from fluxforge.track.promotion import history
from fluxforge.track.resolve import parse_models_uri, version_of


def _num(tags: dict, key: str, fmt: str) -> str:
    """A tag's number rounded for reading (the tag keeps full precision); the raw text if it is not a number."""
    value = tags.get(key)
    if value is None:
        return "-"
    try:
        return format(float(value), fmt)
    except ValueError:
        return value


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
    why_not = not_rebuildable(t)
    lines = [
        f"{name} v{version}" + (f"  [{', '.join(sorted(aliases))}]" if aliases else ""),
        f"  registered   {mv.creation_timestamp and _ts(mv.creation_timestamp)}  run {mv.run_id or '-'}",
        f"  gate         {t.get('gate', '-')}" + (f" (against champion v{t['gate.champion']})" if t.get("gate.champion") else ""),
        *[f"                 {r}" for r in t.get("gate.reasons", "").splitlines()],
        f"  evaluation   cyber acc {_num(t, 'eval.cyber_acc', '.3f')}  general acc {_num(t, 'eval.general_acc', '.3f')}  "
        f"general ppl {_num(t, 'eval.general_ppl', '.1f')}  ({t.get('eval.questions', '?')} questions, "
        f"eval set {t.get('eval.set_digest', '-')[:12]})",
        f"  code         git {t.get('git_commit', '-')[:12]}" + ("  (dirty working tree)" if t.get("git_dirty") == "true" else ""),
        f"  rebuild      not rebuildable: {why_not}" if why_not else f"  rebuild      fluxforge rebuild {name}/{version}",
        f"  model        {t.get('fluxforge.model_path', '-')}  {t.get('fluxforge.parameters', '-')} parameters",
        f"  compute      {t.get('fluxforge.cumulative_tokens', '-')} tokens, {_num(t, 'fluxforge.train_flops', '.3g')} FLOPs, "
        f"{_num(t, 'fluxforge.train_seconds', '.1f')} s of training along the chain",
    ]
    if t.get("fluxforge.teacher"):
        lines.append(f"  teacher      {t['fluxforge.teacher']}")
    if t.get("fluxforge.parent_version"):
        lines.append(f"  parent       {name} v{t['fluxforge.parent_version']}")
    try:
        chain = recorded_chain(t)
    except LineageError:
        chain = []
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
