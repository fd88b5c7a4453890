"""DVC stage `tokenize`: train the BPE tokenizer and pack curated documents into per-slice token streams."""

from fluxforge.pipeline.runner import main

if __name__ == "__main__":  # a process pool re-imports __main__ in its workers
    main("tokenize")
