"""DVC stage `register`: register the final model in MLflow as challenger; promote to champion if the gate passes."""

from fluxforge.pipeline.runner import main

if __name__ == "__main__":  # a process pool re-imports __main__ in its workers
    main("register")
