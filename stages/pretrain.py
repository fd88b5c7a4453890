"""DVC stage `pretrain`: train the base model from its config on the pretraining slices."""

from fluxforge.pipeline.runner import main

main("pretrain")
