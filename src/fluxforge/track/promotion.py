"""Moving the ``champion`` alias: promote, roll back, and the history that makes rollback possible.

A champion change reads the champion, decides, moves the alias (atomic in MLflow) and appends an
entry to the registered model's history. All of it happens inside :func:`champion_section`, which
holds the model's promotion lock (``fluxforge.track.locks``: in the registry itself for a shared
store, so promoters on different hosts exclude each other too), and the alias and history are read
back before the lock is released.

The history is one registered-model tag per entry, ``fluxforge.champion_history.<seq>``: appending
writes a new key instead of rewriting a growing value (registered-model tags hold 5000 characters),
and a writer that finds its sequence number taken knows another promoter ran at the same time.
Registries written before kept the whole history as JSON in ``fluxforge.champion_history``; it is
read as the first entries.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
from collections.abc import Iterator
from contextlib import contextmanager

from fluxforge.errors import FluxForgeError
from fluxforge.track.locks import promotion_lock

HISTORY_TAG = "fluxforge.champion_history"  # the legacy single-tag history, read only
ENTRY_PREFIX = HISTORY_TAG + "."


class PromotionError(FluxForgeError):
    """A promotion or rollback that was refused; the message says why and what to do."""


def _client(tracking_uri: str | None = None):  # noqa: ANN202
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking_uri)


def _state(client, name: str) -> tuple[str | None, list[dict]]:  # noqa: ANN001
    """The champion and the history, from one read of the registered model (its aliases and tags)."""
    from mlflow.exceptions import MlflowException

    try:
        rm = client.get_registered_model(name)
    except MlflowException as err:
        raise PromotionError(f"registered model '{name}' not found ({err.message})") from err
    tags, champion = rm.tags or {}, (rm.aliases or {}).get("champion")
    legacy = json.loads(tags.get(HISTORY_TAG, "[]"))
    entries = [json.loads(v) for k, v in sorted(tags.items()) if k.startswith(ENTRY_PREFIX)]
    return (str(champion) if champion is not None else None), [{**e, "seq": i} for i, e in enumerate(legacy, 1)] + entries


def history(name: str, tracking_uri: str | None = None) -> list[dict]:
    """Every champion change, oldest first: {seq, version, previous, action, reason, at, by}."""
    return _state(_client(tracking_uri), name)[1]


def current(name: str, alias: str = "champion", tracking_uri: str | None = None) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(_client(tracking_uri).get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


class ChampionSection:
    """The champion of one registered model, while this process holds its promotion lock."""

    def __init__(self, name: str, tracking_uri: str) -> None:
        self.name, self.uri, self.client = name, tracking_uri, _client(tracking_uri)

    def current(self) -> str | None:
        return _state(self.client, self.name)[0]

    def history(self) -> list[dict]:
        return _state(self.client, self.name)[1]

    def move(self, version: str, action: str, reason: str) -> dict:
        """Point ``champion`` at ``version`` and append the history entry; verify both before returning."""
        previous, past = _state(self.client, self.name)
        seq = (past[-1]["seq"] if past else 0) + 1
        entry = {"seq": seq, "version": version, "previous": previous, "action": action, "reason": reason[:200],
                 "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "by": getpass.getuser()}
        self.client.set_registered_model_alias(self.name, "champion", version)
        self.client.set_registered_model_tag(self.name, f"{ENTRY_PREFIX}{seq:06d}", json.dumps(entry))
        now, after = _state(self.client, self.name)
        if now != version or after[-1] != entry:
            raise PromotionError(f"{self.name}: the registry changed while v{version} was being promoted (champion is "
                                 f"v{now}, last history entry {after[-1]}); another process moved it without the lock")
        return entry


@contextmanager
def champion_section(name: str, tracking_uri: str | None = None) -> Iterator[ChampionSection]:
    """Read, decide and move the champion of ``name`` as one critical section."""
    import mlflow

    uri = tracking_uri or mlflow.get_tracking_uri()
    with promotion_lock(name, uri):
        yield ChampionSection(name, uri)


def promote(name: str, version: str, reason: str = "manual", force: bool = False) -> dict:
    """Make ``version`` the champion; refuse a version whose gate failed unless ``force``."""
    from mlflow.exceptions import MlflowException

    version = str(version)
    with champion_section(name) as section:
        try:
            mv = section.client.get_model_version(name, version)
        except MlflowException as err:
            raise PromotionError(f"{name} v{version}: no such version ({err.message})") from err
        gate = (mv.tags or {}).get("gate", "")
        if gate == "failed" and not force:
            why = (mv.tags or {}).get("gate.reasons", "")
            raise PromotionError(f"{name} v{version} failed its promotion gate:\n{why}\n"
                                 "Promote anyway with --force (the reason is recorded in the history).")
        if section.current() == version:
            return {"version": version, "previous": version, "action": "none", "reason": "already champion"}
        return section.move(version, "promote", reason + (" (forced past a failed gate)" if gate == "failed" else ""))


def rollback(name: str, to: str | None = None, reason: str = "rollback") -> dict:
    """Give ``champion`` back to the version that held it before the current one (or to ``to``)."""
    with champion_section(name) as section:
        now = section.current()
        if to is None:
            # the champion before the promotion that made the current one: repeated rollbacks walk back
            past = [e for e in section.history() if e["version"] == now and e["action"] == "promote"]
            if not past or not past[-1]["previous"]:
                raise PromotionError(f"{name}: the history holds no champion before v{now}; name one with --to VERSION")
            to = past[-1]["previous"]
        if to == now:
            raise PromotionError(f"{name}: v{to} is already the champion")
        return section.move(str(to), "rollback", reason)
