"""DVC stage `tokenize`: train the BPE tokenizer and pack curated documents into per-slice token streams."""

from fluxforge.pipeline.runner import main

main("tokenize")
