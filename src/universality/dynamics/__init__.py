"""Universality over training: the same comparison at every checkpoint, each unit followed across steps,
and CKA between checkpoints (`_over_training`)."""

from ._over_training import TrainingUniversality, universality_over_training

__all__ = ["TrainingUniversality", "universality_over_training"]
