"""Multi-seed training of tiny transformers on the synthetic language, and checkpoints."""

from ._seeds import (
    TrainedModel, learning_rate, load_checkpoint, save_checkpoint, train_seed, train_seeds,
    training_batches,
)

__all__ = [
    "TrainedModel", "train_seed", "train_seeds", "training_batches", "learning_rate",
    "save_checkpoint", "load_checkpoint",
]
