"""DVC stage `ingest`: read every source in params into raw Parquet tables; malformed rows are rejected with a reason."""

from fluxforge.pipeline.runner import main

if __name__ == "__main__":  # a process pool re-imports __main__ in its workers
    main("ingest")
