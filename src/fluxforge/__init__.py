"""FluxForge: continual pretraining of language models as a DVC pipeline with MLflow lineage."""

__version__ = "0.1.0"
