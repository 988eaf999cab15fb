"""Training: schedule, WGAN-GP losses, the step (D, G, EMA), checkpoints and the loop."""
