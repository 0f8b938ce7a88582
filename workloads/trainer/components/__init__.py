"""Swappable parts of the trainer: optimizer, schedule, checkpoints, metrics, signals."""
