"""Prefect flows over the DVC DAG: Prefect decides when and where, dvc.yaml decides what."""
