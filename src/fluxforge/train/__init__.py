"""Training: HF model building, the training loop, schedules and the mixture sampler."""
