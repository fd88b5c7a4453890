"""The lock that makes a champion change one critical section, for every promoter of a registered model.

A promotion reads the champion, gates the challenger against it and moves the alias. Two promoters
interleaving can both pass against the same old champion, so the whole sequence runs under one lock,
and the lock must live where every promoter looks, whichever host it runs on:

- a shared store (an ``http(s)://`` tracking server, whatever its database, or a database URI):
  :class:`RegistryLease`, a lock held in the registry itself. MLflow offers no compare-and-set on a
  tag (setting one is a blind upsert); what every backend does atomically is create a registered
  model under a unique name. So the lock is a registered model ``<name>.promotion-lock`` that exactly
  one creator gets; its holder deletes it on release.
- a store on this host's disk (``sqlite:///``, ``./mlruns``): a file lock beside it, the single-host fallback.

``LOCKS`` maps a URI scheme to its lock, so a backend with a better primitive (a PostgreSQL advisory
lock for ``postgresql://`` URIs, say) plugs in without touching the callers.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from fluxforge.errors import FluxForgeError
from fluxforge.io import file_lock
from fluxforge.secrets import redact

log = logging.getLogger(__name__)
LOCK_SUFFIX = ".promotion-lock"
LEASE_S = 120.0  # a critical section takes about a second; a holder silent this long has died
WAIT_S = 600.0  # then a waiter gives up with a message naming the holder


class LockError(FluxForgeError):
    """The promotion lock could not be taken or was lost; the message names the holder."""


@dataclass(frozen=True)
class Holder:
    token: str
    who: str  # user@host pid, for the message a waiter prints
    lease_s: float


class RegistryLease:
    """A lease lock held in the registry as the registered model ``<name>.promotion-lock``.

    A holder that dies leaves the lock behind. A waiter that has seen the same holder for longer than its
    lease (on the waiter's own clock, so hosts' clocks need not agree) breaks it by renaming it to
    ``<lock>.stale-<holder token>``: the rename is atomic, and a second waiter breaking the same holder
    collides with that name instead of breaking the next holder's lock. The renamed lock stays as a
    record that a holder died mid-promotion.
    """

    def __init__(self, name: str, tracking_uri: str, lease_s: float = LEASE_S, wait_s: float = WAIT_S) -> None:
        import mlflow

        self.client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        self.name, self.lock, self.lease_s, self.wait_s = name, f"{name}{LOCK_SUFFIX}", lease_s, wait_s
        self.token = uuid.uuid4().hex

    def __enter__(self) -> RegistryLease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        from mlflow.exceptions import MlflowException

        first_seen: dict[str, float] = {}
        delay, deadline = 0.02, time.monotonic() + self.wait_s
        tags = {"token": self.token, "who": f"{getpass.getuser()}@{socket.gethostname()} pid {os.getpid()}",
                "lease_s": str(self.lease_s)}
        while True:
            try:
                self.client.create_registered_model(self.lock, tags=tags, description=(
                    f"FluxForge promotion lock for {self.name}: exists while a promotion runs. "
                    "Safe to delete when no promotion is running."))
                return
            except MlflowException as err:
                # taken; or taken and released again before the store could say by whom (SQL stores re-read it)
                if err.error_code not in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
                    raise
            holder = self.holder()
            if holder is not None and time.monotonic() - first_seen.setdefault(holder.token, time.monotonic()) > holder.lease_s:
                self.break_stale(holder)
                continue
            if time.monotonic() > deadline:
                raise LockError(f"{self.name}: waited {self.wait_s:.0f} s for the promotion lock held by "
                                f"{holder.who if holder else 'an unknown process'}; if no promotion is running, "
                                f"delete the registered model {self.lock}")
            time.sleep(delay * random.uniform(0.5, 1.5))  # jitter: waiters do not retry in lockstep
            delay = min(delay * 2, 0.5)

    def holder(self) -> Holder | None:
        """Who holds the lock now (None: nobody, or a holder caught between create and its tags)."""
        from mlflow.exceptions import MlflowException

        try:
            tags = self.client.get_registered_model(self.lock).tags or {}
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        if "token" not in tags:
            return None
        try:
            lease = float(tags.get("lease_s", LEASE_S))
        except ValueError:
            lease = LEASE_S
        return Holder(tags["token"], tags.get("who", "an unknown process"), lease)

    def break_stale(self, holder: Holder) -> None:
        from mlflow.exceptions import MlflowException

        current = self.holder()
        if current is None or current.token != holder.token:
            return  # released or broken meanwhile
        try:
            self.client.rename_registered_model(self.lock, f"{self.lock}.stale-{holder.token}")
        except MlflowException as err:
            if err.error_code not in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
                raise
            return  # another waiter broke it first
        log.warning("%s: broke the promotion lock of %s, silent for more than %.0f s", self.name, holder.who,
                    holder.lease_s)

    def held(self) -> bool:
        holder = self.holder()
        return holder is not None and holder.token == self.token

    def release(self) -> None:
        if not self.held():
            raise LockError(f"{self.name}: the promotion lock was broken while this process held it (it ran longer "
                            f"than its {self.lease_s:.0f} s lease); check the champion history")
        self.client.delete_registered_model(self.lock)


def lock_path(tracking_uri: str) -> Path:
    """The lock file for a store on this host: beside a SQLite database, else per URI in the cache."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///"))
        return db.with_name(db.name + ".promote.lock")
    key = hashlib.sha256(tracking_uri.encode()).hexdigest()[:16]
    return Path.home() / ".cache" / "fluxforge" / "locks" / f"{key}.promote.lock"


def host_lock(name: str, tracking_uri: str) -> contextlib.AbstractContextManager[None]:  # noqa: ARG001 - one file per store
    return file_lock(lock_path(tracking_uri))


LockFactory = Callable[[str, str], contextlib.AbstractContextManager]
LOCKS: dict[str, LockFactory] = {"sqlite": host_lock, "file": host_lock, "": host_lock}


def scheme(tracking_uri: str) -> str:
    """``http``, ``sqlite``, ``postgresql`` (a driver suffix such as ``+psycopg2`` dropped); '' for a plain path."""
    head, sep, _ = tracking_uri.partition("://")
    return head.split("+", 1)[0].lower() if sep and len(head) > 1 else ""  # a Windows drive letter is a path


@contextlib.contextmanager
def promotion_lock(name: str, tracking_uri: str) -> Iterator[None]:
    """Hold the promotion lock for ``name`` in the store at ``tracking_uri`` for the block."""
    factory = LOCKS.get(scheme(tracking_uri), RegistryLease)
    log.debug("promotion lock for %s: %s on %s", name, getattr(factory, "__name__", factory), redact(tracking_uri))
    with factory(name, tracking_uri):
        yield
