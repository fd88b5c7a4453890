"""``tracking``: where MLflow runs go."""

from __future__ import annotations

from fluxforge.config.base import Strict


class TrackingConfig(Strict):
    experiment: str = "fluxforge"
    tracking_uri: str = "sqlite:///mlflow.db"  # MLFLOW_TRACKING_URI overrides
