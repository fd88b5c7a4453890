"""DVC stage `distill`: distil the final model into a smaller student with logit KD."""

from fluxforge.pipeline.runner import main

main("distill")
