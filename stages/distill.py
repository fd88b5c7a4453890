"""DVC stage `distill`: distil the final model into a smaller student with logit KD."""

from fluxforge.pipeline.runner import main

if __name__ == "__main__":  # a process pool re-imports __main__ in its workers
    main("distill")
