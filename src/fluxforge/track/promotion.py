"""Moving the ``champion`` alias: promote, roll back, and the history that makes rollback possible.

A promotion is two writes to the registry: the alias move (atomic in MLflow) and an
entry appended to the registered model's ``fluxforge.champion_history`` tag (a
read-modify-write). Two promotions interleaving could lose an entry or leave the
alias pointing at a version the history does not end with, so both writes happen
under one lock per registry store, and the alias is read back before the lock is
released. The lock is a ``flock`` next to a SQLite store (or under the user's cache
for a remote server), which serialises promotions from every process on the host;
promotions from several hosts to one remote server must share a lock, which the
Prefect refresh flow provides with a global concurrency limit (see infra/README.md).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import hashlib
import json
from pathlib import Path

from fluxforge.errors import FluxForgeError
from fluxforge.io import file_lock

HISTORY_TAG = "fluxforge.champion_history"
HISTORY_KEEP = 30  # MLflow caps a tag value at 5000 characters; ~120 per entry


class PromotionError(FluxForgeError):
    """A promotion or rollback that was refused; the message says why and what to do."""


def lock_path(tracking_uri: str) -> Path:
    """The lock file for a registry store: beside a SQLite database, else per URI in the cache."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///"))
        return db.with_name(db.name + ".promote.lock")
    key = hashlib.sha256(tracking_uri.encode()).hexdigest()[:16]
    return Path.home() / ".cache" / "fluxforge" / "locks" / f"{key}.promote.lock"


def registry_lock(tracking_uri: str) -> contextlib.AbstractContextManager[None]:
    return file_lock(lock_path(tracking_uri))


def _client():  # noqa: ANN202
    import mlflow

    return mlflow.MlflowClient()


def history(name: str) -> list[dict]:
    """Every champion change, oldest first: {version, previous, action, reason, at, by}."""
    from mlflow.exceptions import MlflowException

    try:
        tags = _client().get_registered_model(name).tags or {}
    except MlflowException as err:
        raise PromotionError(f"registered model '{name}' not found ({err.message})") from err
    return json.loads(tags.get(HISTORY_TAG, "[]"))


def current(name: str, alias: str = "champion") -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(_client().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def _move(name: str, version: str, action: str, reason: str) -> dict:
    """Set the alias and append to the history; the caller holds the lock."""
    client = _client()
    previous = current(name)
    client.set_registered_model_alias(name, "champion", version)
    entry = {"version": version, "previous": previous, "action": action, "reason": reason[:200],
             "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "by": getpass.getuser()}
    past = history(name)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps((past + [entry])[-HISTORY_KEEP:]))
    client.set_model_version_tag(name, version, "champion.since", entry["at"])
    if current(name) != version:  # someone moved the alias without the lock
        raise PromotionError(f"{name}: champion moved to v{current(name)} while promoting v{version}; "
                             "another process changed the registry without FluxForge's lock")
    return entry


def promote(name: str, version: str, reason: str = "manual", force: bool = False) -> dict:
    """Make ``version`` the champion; refuse a version whose gate failed unless ``force``."""
    import mlflow
    from mlflow.exceptions import MlflowException

    with registry_lock(mlflow.get_tracking_uri()):
        try:
            mv = _client().get_model_version(name, str(version))
        except MlflowException as err:
            raise PromotionError(f"{name} v{version}: no such version ({err.message})") from err
        gate = (mv.tags or {}).get("gate", "")
        if gate == "failed" and not force:
            why = (mv.tags or {}).get("gate.reasons", "")
            raise PromotionError(f"{name} v{version} failed its promotion gate:\n{why}\n"
                                 "Promote anyway with --force (the reason is recorded in the history).")
        if current(name) == str(version):
            return {"version": str(version), "previous": str(version), "action": "none", "reason": "already champion"}
        return _move(name, str(version), "promote", reason + (" (forced past a failed gate)" if gate == "failed" else ""))


def rollback(name: str, to: str | None = None, reason: str = "rollback") -> dict:
    """Give ``champion`` back to the version that held it before the current one (or to ``to``)."""
    import mlflow

    with registry_lock(mlflow.get_tracking_uri()):
        now = current(name)
        if to is None:
            # the champion before the promotion that made the current one: repeated rollbacks walk back
            past = [e for e in history(name) if e["version"] == now and e["action"] == "promote"]
            if not past or not past[-1]["previous"]:
                raise PromotionError(f"{name}: the history holds no champion before v{now}; name one with --to VERSION")
            to = past[-1]["previous"]
        if to == now:
            raise PromotionError(f"{name}: v{to} is already the champion")
        return _move(name, str(to), "rollback", reason)
