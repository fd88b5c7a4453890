"""Rendering of the report: one Jinja2 environment over the package's templates, every value HTML-escaped.

Autoescape is on for every template, so a name a user chose (a source, a model, a task, a rejection
reason) can never become markup. What is markup on purpose (a rendered section, a coloured change)
is a :class:`markupsafe.Markup` and passes through unchanged.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from fluxforge.errors import DataError

CHANGE_COLORS = {"better": "#1a7f37", "worse": "#cf222e", "same": "#222"}


@functools.cache
def environment() -> jinja2.Environment:
    """The templates in ``fluxforge/eval/report/templates`` (package data), autoescaped, strict about missing values."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("fluxforge.eval.report", "templates"), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters.update(fmt=format, num=num, signed=signed)
    return env


def render(template: str, **context: Any) -> Markup:
    """One template rendered with ``context``, as markup a parent template includes unescaped."""
    return Markup(environment().get_template(template).render(**context))


def not_run(what: str, stage: str, key: str, reason: str = "") -> Markup:
    """What a section shows when the stage that feeds it is off (and the reason the stage gave, if any)."""
    return render("not_run.html.j2", what=what, stage=stage, key=key, reason=reason)


def read_json(path: Path) -> dict:
    """A metrics file, or {} before the stage that writes it has run."""
    return json.loads(path.read_text()) if path.exists() else {}


def need(d: dict, key: str, where: str) -> Any:
    """``d[key]``, or a :class:`DataError` naming the file and the key (a malformed metrics file is not skipped)."""
    if not isinstance(d, dict) or key not in d:
        raise DataError(f"{where}: missing key '{key}'")
    return d[key]


def num(x: Any, spec: str = ".4f") -> str:
    """A number for a table cell; ``None``/NaN (undefined metrics are stored as null) shows as n/a."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return format(x, spec)


def signed(x: float, lower_is_better: bool, spec: str = "+.4f") -> Markup:
    """A signed change, green when it is an improvement and red when it is a regression."""
    better = x < 0 if lower_is_better else x > 0
    color = CHANGE_COLORS["better" if better else "worse" if x != 0 else "same"]
    return Markup('<span style="color:{}">{}</span>').format(color, format(x, spec))
