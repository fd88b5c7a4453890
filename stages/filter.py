"""DVC stage `filter`: remove boilerplate lines, then drop documents failing the quality/repetition/toxicity rules."""

from fluxforge.pipeline.runner import main

main("filter")
