"""DVC stage `continual`: one continual task (argument: task key in params continual.tasks): new slices + replay."""

from fluxforge.pipeline.runner import main

if __name__ == "__main__":  # a process pool re-imports __main__ in its workers
    main("continual")
