"""DVC stage `register`: register the final model in MLflow as challenger; promote to champion if the gate passes."""

from fluxforge.pipeline.runner import main

main("register")
