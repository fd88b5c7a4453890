"""DVC stage `stream`: a continual stream of tasks with replay (fixed or CMR-planned), strategies and merging (params `stream`)."""

from fluxforge.pipeline.runner import main

if __name__ == "__main__":  # a process pool re-imports __main__ in its workers
    main("stream")
