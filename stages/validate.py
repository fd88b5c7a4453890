"""DVC stage `validate`: check the raw tables against their great-expectations contract; stop the DAG on failure."""

from fluxforge.pipeline.runner import main

if __name__ == "__main__":  # a process pool re-imports __main__ in its workers
    main("validate")
