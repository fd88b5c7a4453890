"""DVC stage `pretrain`: train the base model from its config on the pretraining slices."""

from fluxforge.pipeline.runner import main

if __name__ == "__main__":  # a process pool re-imports __main__ in its workers
    main("pretrain")
