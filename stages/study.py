"""DVC stage `study`: MeCo, curriculum + averaging and G_stack growth against plain pretraining (params `study`)."""

from fluxforge.pipeline.runner import main

if __name__ == "__main__":  # a process pool re-imports __main__ in its workers
    main("study")
