"""Multi-seed training of tiny transformers on the synthetic language and of group composition
models on group tasks, and checkpoints."""

from ._group_training import (
    GroupMLPConfig, GroupModelConfig, GroupTrainConfig, GroupTransformerConfig, TrainedGroupModel,
    build_group_model, checkpoint_epochs, load_group_model, save_group_model, train_group_seed,
    train_group_seeds,
)
from ._seeds import (
    TrainedModel, learning_rate, load_checkpoint, save_checkpoint, train_seed, train_seeds,
    training_batches,
)

__all__ = [
    "TrainedModel", "train_seed", "train_seeds", "training_batches", "learning_rate",
    "save_checkpoint", "load_checkpoint",
    "GroupTrainConfig", "GroupMLPConfig", "GroupTransformerConfig", "GroupModelConfig", "TrainedGroupModel",
    "build_group_model", "train_group_seed", "train_group_seeds", "checkpoint_epochs",
    "save_group_model", "load_group_model",
]
