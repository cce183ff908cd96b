"""Multi-seed training of tiny transformers on the synthetic language and of group composition
models on group tasks, and checkpoints."""

from ._group_training import (
    GroupMLPConfig, GroupModelConfig, GroupTrainConfig, GroupTransformerConfig, TrainedGroupModel,
    build_group_model, load_group_model, save_group_model, train_group_seed,
    train_group_seeds,
)
from ._seeds import (
    TrainedModel, checkpoint_epochs, learning_rate, load_checkpoint, load_checkpoint_models, save_checkpoint,
    train_seed, train_seeds, training_batches, with_checkpoints,
)

__all__ = [
    "TrainedModel", "train_seed", "train_seeds", "training_batches", "learning_rate",
    "save_checkpoint", "load_checkpoint", "load_checkpoint_models", "with_checkpoints",
    "GroupTrainConfig", "GroupMLPConfig", "GroupTransformerConfig", "GroupModelConfig", "TrainedGroupModel",
    "build_group_model", "train_group_seed", "train_group_seeds", "checkpoint_epochs",
    "save_group_model", "load_group_model",
]
