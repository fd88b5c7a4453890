"""One retry style for everything that crosses a network or a process: DVC transfers and DVC stages.

Only failures that may pass (a store restarting, a lock held, a killed process) are retried, with
exponential backoff (``backoff * 2**(n-1)`` seconds before try n+1); a failure that would repeat itself
(bad params, bad credentials, a broken contract) is raised at once, because retrying it only delays the
message a person must read. tenacity does the bookkeeping; each retry is logged with its cause.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

log = logging.getLogger(__name__)


def retrying(tries: int, backoff: float, transient: Callable[[BaseException], bool], what: str) -> Retrying:
    """A tenacity loop: ``for attempt in retrying(...): with attempt: ...`` runs the block up to ``tries`` times."""
    if tries < 1:
        raise ValueError(f"tries must be 1 or more, not {tries}")

    def before_sleep(state: RetryCallState) -> None:
        err = state.outcome.exception() if state.outcome else None
        first = str(err).splitlines()[0] if err else "?"
        log.warning("%s failed (try %d of %d): %s; retrying in %.1f s", what, state.attempt_number, tries, first,
                    state.next_action.sleep if state.next_action else 0.0)

    return Retrying(stop=stop_after_attempt(tries), wait=wait_exponential(multiplier=backoff, min=0),
                    retry=retry_if_exception(transient), reraise=True, before_sleep=before_sleep,
                    sleep=lambda seconds: time.sleep(seconds))  # looked up per call: tests replace time.sleep
