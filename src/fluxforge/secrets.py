"""Secrets never reach a log line, an error message or a tag: one place that masks them."""

from __future__ import annotations

import re
from collections.abc import Mapping

# a whole word of the variable's name (PGPASSWORD counts: password-ish words are never anything else), so that
# TOKENIZERS_PARALLELISM=false is not taken for a token and every "false" in a text masked
_SECRET_NAME = re.compile(r"SECRET|PASSW(OR)?D|CREDENTIAL|(?<![A-Z])(TOKEN|SESSION|API_?KEY|PRIVATE_KEY)(?![A-Z])",
                          re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(\w+://[^:/@\s]+:)[^@\s]+@")


def redact(text: str, env: Mapping[str, str] | None = None) -> str:
    """Mask the values of secret-looking variables in ``env`` and passwords inside URLs."""
    for name, value in (env or {}).items():
        if _SECRET_NAME.search(name) and len(value) >= 4:
            text = text.replace(value, "***")
    return _URL_PASSWORD.sub(r"\1***@", text)
