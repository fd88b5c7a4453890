"""DVC stage `filter`: remove boilerplate lines, then drop documents failing the quality/repetition/toxicity rules."""

from fluxforge.pipeline.runner import main

if __name__ == "__main__":  # a process pool re-imports __main__ in its workers
    main("filter")
