"""FluxForge: continual pretraining of language models as a DVC pipeline with MLflow lineage."""

__version__ = "0.1.0"

from fluxforge.runtime import openmp_defaults as _openmp_defaults

_openmp_defaults()  # before any module of ours imports torch (the OpenMP runtime reads it once, at load)
