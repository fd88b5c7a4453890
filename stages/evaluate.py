"""DVC stage `evaluate`: perplexity and multiple-choice accuracy of every model, per domain and slice, with tests."""

from fluxforge.pipeline.runner import main

main("evaluate")
