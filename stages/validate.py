"""DVC stage `validate`: check the raw tables against their great-expectations contract; stop the DAG on failure."""

from fluxforge.pipeline.runner import main

main("validate")
