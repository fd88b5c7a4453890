"""DVC stage `evaluate`: perplexity and multiple-choice accuracy of every model, per domain and slice, with tests."""

from fluxforge.pipeline.runner import main

if __name__ == "__main__":  # a process pool re-imports __main__ in its workers
    main("evaluate")
