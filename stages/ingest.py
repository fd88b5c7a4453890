"""DVC stage `ingest`: read every source in params into raw Parquet tables; malformed rows are rejected with a reason."""

from fluxforge.pipeline.runner import main

main("ingest")
