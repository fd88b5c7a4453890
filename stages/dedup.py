"""DVC stage `dedup`: drop exact and MinHash near duplicates across all slices, keeping the earliest."""

from fluxforge.pipeline.runner import main

if __name__ == "__main__":  # a process pool re-imports __main__ in its workers
    main("dedup")
