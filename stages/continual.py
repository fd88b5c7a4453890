"""DVC stage `continual`: one continual task (argument: task key in params continual.tasks): new slices + replay."""

from fluxforge.pipeline.runner import main

main("continual")
