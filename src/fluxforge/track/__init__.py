"""Tracking: MLflow stage runs, lineage and the model registry with its promotion gate."""
