"""One HTML page a person reads after a run: data funnel, loss curves, technique studies, accuracy, significance,
continual stream, registry decision.

One module per section reads what the stages wrote and checks it; ``figures`` draws (matplotlib, embedded as
PNG); ``templates/`` hold the HTML (Jinja2, autoescaped: every name and reason from the data is escaped).
"""

from fluxforge.eval.report.page import build_report

__all__ = ["build_report"]
