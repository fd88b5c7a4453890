"""Continual pretraining: streams of tasks, replay planning, stability-gap strategies, merging, forgetting metrics."""
