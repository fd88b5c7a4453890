"""DVC stage `world`: generate the embedded default corpus with its ground truth (fluxforge.world)."""

from fluxforge.pipeline.runner import main

main("world")
