"""A person's own corpus for the source tests: a folder of .txt articles (general) and a .jsonl of advisories
(cyber) with text and url but no dates, as issue 22 describes. Written from fixed word pools with a seed, so
every document is distinct prose that passes the default filters (no two share a sentence part)."""

from __future__ import annotations

import json
import os
import random
from datetime import UTC, datetime
from pathlib import Path

ARTICLE_PARTS = (
    ["The harbour council", "A local historian", "The river ferry crew", "Our village library", "The mountain railway",
     "A young engineer", "The old lighthouse keeper", "The weekly market", "A team of volunteers", "The city orchestra",
     "The school choir", "A retired sailor"],
    ["restored", "described", "reopened", "celebrated", "studied", "repaired", "documented", "welcomed", "measured",
     "painted", "photographed", "mapped"],
    ["the stone bridge near the northern gate", "a collection of maps from the last century", "the narrow lanes of "
     "the old town", "the wooden boats in the eastern dock", "the garden behind the town hall", "a row of cottages by "
     "the canal", "the clock tower above the square", "the orchards along the valley road", "the chapel on the hill",
     "the mill beside the weir", "the tram line to the coast", "the reading room of the guild house"],
    ["after a long and rainy winter.", "with help from the regional museum.", "before the summer festival began.",
     "while visitors watched from the quay.", "during a quiet week in autumn.", "for the first time in decades.",
     "with careful notes on every detail.", "as the evening light faded.", "despite a shortage of funds.",
     "together with students from the college.", "under the eye of a patient mentor.", "to the delight of residents."],
)
ADVISORY_PARTS = (
    ["A heap overflow in the image decoder", "An authentication bypass in the admin console", "A path traversal flaw "
     "in the backup service", "A race condition in the session cache", "An integer underflow in the packet parser",
     "A missing permission check in the export API", "A format string bug in the logging module", "An unsafe "
     "deserialization path in the plugin loader", "A cross-site scripting flaw in the help pages", "A use after free "
     "in the font renderer", "A weak default key in the update agent", "An SQL injection in the report builder"],
    ["allows remote attackers to", "lets authenticated users", "permits local users to", "could allow an attacker to",
     "enables a crafted client to", "may let unprivileged processes"],
    ["execute arbitrary code on the appliance", "read configuration files outside the web root", "escalate privileges "
     "to the service account", "crash the daemon and deny service", "tamper with stored audit records", "replace "
     "firmware images without a signature check", "steal session tokens from other users", "bypass the rate limiter "
     "entirely"],
    ["through a specially crafted request.", "when verbose logging is switched on.", "if the legacy protocol is "
     "enabled.", "by uploading a malformed archive.", "after a failed login attempt.", "via an oversized header field."],
)


def prose(parts: tuple[list[str], ...], rng: random.Random, sentences: int) -> str:
    """``sentences`` sentences, each part drawn without replacement, so no phrase repeats within a document."""
    columns = [rng.sample(options, min(sentences, len(options))) for options in parts]
    return " ".join(" ".join(col[i % len(col)] for col in columns) for i in range(sentences))


def set_date(path: Path, day: str) -> None:
    """Give a file the modification date ``day`` (what `source add` proposes as a dateless file's date)."""
    ts = datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp()
    os.utime(path, (ts, ts))


def write_corpus(root: Path, articles: int = 6, advisories: int = 8, day: str = "2022-06-01") -> tuple[Path, Path]:
    """``root``/articles/*.txt and ``root``/cves.jsonl, every file dated ``day``; returns both paths."""
    rng = random.Random(22)
    folder = root / "articles"
    folder.mkdir(parents=True)
    for i in range(articles):
        f = folder / f"article-{i:02d}.txt"
        f.write_text(prose(ARTICLE_PARTS, rng, 8) + "\n")
        set_date(f, day)
    cves = root / "cves.jsonl"
    cves.write_text("".join(json.dumps({"text": prose(ADVISORY_PARTS, rng, 6), "url": f"https://advisories.example/CVE-2022-{1000 + i}"}) + "\n"
                            for i in range(advisories)))
    set_date(cves, day)
    return folder, cves
