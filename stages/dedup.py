"""DVC stage `dedup`: drop exact and MinHash near duplicates across all slices, keeping the earliest."""

from fluxforge.pipeline.runner import main

main("dedup")
