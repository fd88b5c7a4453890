"""Section 6 of the report: what the register stage decided, with the gate's reason for each rule."""

from __future__ import annotations

from markupsafe import Markup

from fluxforge.eval.report.render import render


def registry(decision: dict) -> Markup:
    """The registered version, whether it became champion, and every gate rule's PASS/FAIL line."""
    return render("registry.html.j2", reg=decision)
