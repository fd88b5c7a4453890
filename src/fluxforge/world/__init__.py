"""The embedded default corpus: a generated world with ground truth."""

from fluxforge.world.generate import HOSTS, generate_world

__all__ = ["HOSTS", "generate_world"]
