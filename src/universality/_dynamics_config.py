"""The `[training_dynamics]` sections (universality.dynamics): the trainer's kept checkpoints in
language and group runs, listed checkpoint directories in pretrained (family) runs."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from ._config_checks import StrictSection

__all__ = ["TrainingDynamicsConfig", "CheckpointSeries", "FamilyTrainingDynamicsConfig"]


class TrainingDynamicsConfig(StrictSection):
    """Universality over training (universality.dynamics): the seeds compared again at each checkpoint
    the trainer kept, one pass per checkpoint; off by default (one more pass per checkpoint)."""

    enabled: bool = False
    # "all": every checkpoint the trainer kept for every seed; or a list of steps (epochs in group runs),
    # each one of the trainer's log-spaced checkpoints
    checkpoints: Literal["all"] | Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=2, max_length=256)] = "all"


class CheckpointSeries(StrictSection):
    """One model's checkpoints over training, as model directories (what `universality.load_model`
    accepts) with the step each was saved at."""

    model: str = Field(min_length=1, max_length=4096)  # the run's model they lead to, as written in `models`
    steps: list[Annotated[int, Field(ge=0)]] = Field(min_length=2, max_length=256)  # ascending
    directories: list[Annotated[str, Field(min_length=1, max_length=4096)]] = Field(min_length=2, max_length=256)

    @model_validator(mode="after")
    def _one_directory_per_step(self) -> "CheckpointSeries":
        if len(self.directories) != len(self.steps):
            raise ValueError(f"give one directory per step: {len(self.steps)} steps, {len(self.directories)} "
                             "directories")
        if self.steps != sorted(set(self.steps)):
            raise ValueError(f"steps must be distinct and ascending, got {self.steps}")
        return self


class FamilyTrainingDynamicsConfig(TrainingDynamicsConfig):
    """Universality over training in a pretrained (family) run: each model's checkpoints listed as
    directories ([[training_dynamics.seeds]] tables), compared at every step all of them list (or the
    `checkpoints` chosen among those), one pass per step. Each checkpoint must have its model's unit
    sets and sizes (checked, loading each once, before anything is written)."""

    seeds: list[CheckpointSeries] = Field([], max_length=64)

    @model_validator(mode="after")
    def _two_distinct_series(self) -> "FamilyTrainingDynamicsConfig":
        models = [series.model for series in self.seeds]
        if self.enabled and len(set(models)) < 2:
            raise ValueError("list the checkpoints of at least 2 models ([[training_dynamics.seeds]] tables)")
        if len(set(models)) != len(models):
            raise ValueError(f"each model's checkpoints in one [[training_dynamics.seeds]] table, got {models}")
        return self
