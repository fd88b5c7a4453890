"""URL block list as datatrove's ``URLFilter``: blocked hosts, banned words, soft-banned words."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from fluxforge.config import URLBlocklistConfig, builds
from fluxforge.data.filters.batch import Batch, Pieces
from fluxforge.data.filters.step import FilterError, Step, Verdict, first_reason, no_reasons

BLOCKLIST = Path(__file__).parents[1] / "assets" / "url_blocklist.txt"


def load_url_blocklist(path: Path | str | None = None) -> dict[str, set[str]]:
    """Shipped block list: lines ``domain NAME`` / ``word WORD`` / ``soft WORD`` (``#`` comments)."""
    p = Path(path) if path else BLOCKLIST
    out: dict[str, set[str]] = {"domain": set(), "word": set(), "soft": set()}
    for i, line in enumerate(p.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        kind, _, value = line.partition(" ")
        if kind not in out or not value.strip():
            raise FilterError(f"{p}:{i}: expected 'domain|word|soft VALUE', got {line!r}")
        out[kind].add(value.strip().lower())
    return out


@builds(URLBlocklistConfig)
@dataclass
class URLBlocklist(Step):
    """Drop docs whose URL host (or a parent domain) is blocked, whose URL holds a banned word, or
    >= ``soft_word_threshold`` soft-banned words (datatrove ``URLFilter``; words split on non-alphanumerics).
    """

    cfg: URLBlocklistConfig = field(default_factory=URLBlocklistConfig)
    name: str = "url_blocklist"
    needs: ClassVar[tuple[str, ...]] = ("url",)

    def __post_init__(self) -> None:
        lists = load_url_blocklist() if self.cfg.use_shipped_list else {"domain": set(), "word": set(), "soft": set()}
        self.domains = lists["domain"] | {d.lower().removeprefix("www.") for d in self.cfg.domains}
        self.words = lists["word"] | {w.lower() for w in self.cfg.banned_words}
        self.soft = lists["soft"] | {w.lower() for w in self.cfg.soft_banned_words}

    def __call__(self, b: Batch) -> Verdict:
        u = pd.Series(b.column("url"), dtype=object).fillna("").astype(str).str.strip().str.lower().reset_index(drop=True)
        r = no_reasons(len(u))
        host = u.str.extract(r"^(?:[a-z][a-z0-9+.-]*:)?//(?:[^@/?#]*@)?([^/:?#]+)", expand=False).fillna("")
        host = host.str.rstrip(".")
        blocked = np.zeros(len(u), bool)
        while (host != "").any():  # the host, then each parent domain
            blocked |= host.isin(self.domains).to_numpy(dtype=bool)
            host = host.str.replace(r"^[^.]*\.?", "", regex=True)
        first_reason(r, blocked, f"{self.name}:domain")
        words = Pieces.from_lists(u.str.findall(r"[a-z0-9]+"))
        if len(words.text):
            first_reason(r, words.per_doc(words.text.isin(self.words).to_numpy(dtype=bool)) > 0, f"{self.name}:banned_word")
            soft = pd.DataFrame({"d": words.doc, "t": words.text})[words.text.isin(self.soft).to_numpy(dtype=bool)]
            n_soft = np.bincount(soft.drop_duplicates()["d"].to_numpy(dtype=np.int64), minlength=len(u))
            first_reason(r, n_soft >= self.cfg.soft_word_threshold, f"{self.name}:soft_banned_words")
        return Verdict(r)

