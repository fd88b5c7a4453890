"""DVC stage `report`: write reports/report.html."""

from fluxforge.pipeline.runner import main

main("report")
