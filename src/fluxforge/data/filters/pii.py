"""PII: regex redaction of emails/IPs/phones as datatrove's ``PIIFormatter`` and dolma's ``pii_regex``
taggers (placeholders in dolma's style). A transform: it rewrites texts and never drops a document.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from fluxforge.config import PIIConfig, builds
from fluxforge.data.filters.batch import Batch
from fluxforge.data.filters.step import Step, Verdict, no_reasons

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}\b")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.])(?:{_OCTET}\.){{3}}{_OCTET}(?!\w|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")  # validated by ipaddress
_PHONE = re.compile(
    r"(?<![\w+])(?:"
    r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?|\d{1,4}[ .-])\d{2,4}(?:[ .-]\d{2,4}){1,2}"  # +44 20 7946 0958
    r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}"  # (415) 555-0134
    r"|\d{3}[.-]\d{3}[.-]\d{4}"  # 415-555-0134
    r")(?![\w-])"
)


# A dotted quad right after a version cue ("version 4.1.1.24", "through 1.4.1.5", "8.10.4, 8.10.5.1"),
# or followed by a build number ("1.0.0.7(4456)"), is a version, not an address: advisories are full of
# them, and redacting them (43 of 1000 CTI-Bench CVE descriptions) destroys the content a cyber corpus is for.
_VERSION_CUE = re.compile(
    r"(?:\b(?:versions?(?:\s+from)?|ver\.?|v|through|before|prior to|up to|including|firmware|build|release)[\s,:]*"
    r"|(?<![\d.])\d+\.\d+(?:\.\d+)?[\s,]*(?:(?:and|or)[\s,]*)?)$",  # a list of versions; not one after an IP
    re.IGNORECASE,
)


_VERSION_AFTER = re.compile(
    r"\(|\.[a-z]|\s*(?:through\s*\d+\.\d+|(?:to|-)\s*\d+\.\d+(?!\.\d+\.\d+\b)|and (?:later|earlier|before|prior)\b)",
    re.IGNORECASE)


def looks_like_version(m: re.Match) -> bool:
    """Is this IPv4-shaped match a software version, by the words around it ("through 1.4.1.5",
    "1.0.0.7(4456)", "7.6.1.3 through 7.6.1.5")? A product name directly followed by a 4-part version with
    no such cue ("CuteFTP 8.3.4.1.") stays indistinguishable from an address and is redacted: switch
    ``pii.ips`` off for advisory corpora, where addresses are indicators of compromise anyway."""
    before = m.string[max(0, m.start() - 30):m.start()]
    return bool(_VERSION_CUE.search(before) or _VERSION_AFTER.match(m.string, m.end()))


@builds(PIIConfig)
@dataclass
class PIIRedactor(Step):
    """Replace emails, IPv4/IPv6 addresses and phone numbers by placeholders (never drops a doc).

    IPs are validated with :mod:`ipaddress`; with ``ip_public_only`` only global ones are replaced
    (datatrove's ``PIIFormatter`` choice). Phones: international (+CC), ``(NNN) NNN-NNNN`` and
    ``NNN-NNN-NNNN`` forms, which plain numbers, dates and CVE ids do not match.
    """

    cfg: PIIConfig = field(default_factory=PIIConfig)
    name: str = "pii"

    def __call__(self, b: Batch) -> Verdict:
        c = self.cfg
        t = pd.Series(b.texts, dtype=object)
        before = t.copy()
        counts = {"pii_emails": 0, "pii_ips": 0, "pii_phones": 0}

        def sub(pattern: re.Pattern, key: str, placeholder: str, valid: Callable[[re.Match], bool] | None = None) -> None:
            nonlocal t

            def repl(m: re.Match) -> str:
                if valid is not None and not valid(m):
                    return m.group(0)
                counts[key] += 1
                return placeholder

            t = t.str.replace(pattern, repl, regex=True)

        def ip_ok(s: str) -> bool:
            try:
                ip = ipaddress.ip_address(s)
            except ValueError:
                return False
            return ip.is_global or not c.ip_public_only

        def ipv6_ok(m: re.Match) -> bool:
            return ip_ok(m.group(0))

        def ipv4_ok(m: re.Match) -> bool:
            return ip_ok(m.group(0)) and not looks_like_version(m)

        if c.emails:
            sub(_EMAIL, "pii_emails", c.email_placeholder)
        if c.ips:
            sub(_IPV6, "pii_ips", c.ip_placeholder, ipv6_ok)
            sub(_IPV4, "pii_ips", c.ip_placeholder, ipv4_ok)
        if c.phones:
            sub(_PHONE, "pii_phones", c.phone_placeholder)
        counts["pii_docs_redacted"] = int((t != before).sum())
        return Verdict(no_reasons(b.n), t, stats=counts)

