"""Orchestration: Prefect flows and deployments over the DVC DAG."""
