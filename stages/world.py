"""DVC stage `world`: generate the embedded default corpus with its ground truth (fluxforge.world)."""

from fluxforge.pipeline.runner import main

if __name__ == "__main__":  # a process pool re-imports __main__ in its workers
    main("world")
