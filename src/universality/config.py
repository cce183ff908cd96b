"""Typed experiment specs, loaded from TOML.

An experiment is: a synthetic language (`language`), a model shape (`model`), how each seed is
trained (`train`), which activations are streamed (`collect`) and how they are compared
(`compare`). Unknown keys are errors, so a typo never silently falls back to a default.

>>> cfg = ExperimentConfig(name="x", seeds=[0, 1])
>>> cfg.compare.threshold
0.5
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import UniversalityError

__all__ = [
    "LanguageConfig", "ModelConfig", "TrainConfig", "CollectConfig", "CompareConfig",
    "ExperimentConfig", "load_config", "default_config_text",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LanguageConfig(_Strict):
    """A synthetic language with known latent structure (see `universality.tasks`)."""

    seq_len: int = Field(64, ge=8, le=4096)  # tokens per row, BOS included
    n_classes: int = Field(8, ge=2)  # hidden Markov states, each with its own emission vocabulary
    tokens_per_class: int = Field(12, ge=1)
    n_bracket_types: int = Field(3, ge=0)  # each type is an open and a close token
    position_period: int = Field(16, ge=2)  # a position marker token every `position_period` tokens
    p_open: float = Field(0.06, ge=0, le=1)
    p_close: float = Field(0.25, ge=0, le=1)  # chance to close the innermost bracket, when one is open
    p_repeat: float = Field(0.5, ge=0, le=1)  # chance that a row repeats one of its earlier spans
    repeat_len: int = Field(8, ge=2)
    grammar_seed: int = 0  # the language itself (transitions, emissions): shared by every model seed


class ModelConfig(_Strict):
    """A tiny pre-LayerNorm decoder transformer (see `universality.models`)."""

    d_model: int = Field(64, ge=4)
    n_layers: int = Field(2, ge=1)
    n_heads: int = Field(4, ge=1)
    d_mlp: int = Field(256, ge=1)
    activation: Literal["relu", "gelu"] = "gelu"

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "ModelConfig":
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        return self


class TrainConfig(_Strict):
    """Next-token training of each seed; the seed sets the initialisation and, by `data`, the sample."""

    steps: int = Field(600, ge=1)
    batch_size: int = Field(32, ge=1)  # rows per step
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(50, ge=0)
    # "per_seed": every seed draws its own training rows (models trained on different samples);
    # "shared": every seed sees the same rows in the same order (only the initialisation differs).
    data: Literal["per_seed", "shared"] = "per_seed"
    data_seed: int = 1000  # the shared sample's seed when data = "shared"
    log_every: int = Field(20, ge=1)  # steps between points of the training curve
    threads: int = Field(2, ge=1)  # torch threads; use 1 when another job shares 2 cores


class CollectConfig(_Strict):
    """Which activations are streamed, over which evaluation rows."""

    rows: int = Field(1024, ge=1)  # evaluation rows of `language.seq_len` tokens
    batch_rows: int = Field(128, ge=1)
    unit_sets: list[str] = ["blocks.*.mlp.hook_post"]  # names or shell patterns
    drop_bos: bool = True  # BOS activations are constant per model and distort correlations
    eval_seed: int = 123_456  # the evaluation sample, shared by every model


class CompareConfig(_Strict):
    """Gurnee et al. 2024 universality: excess correlation over a random-rotation baseline."""

    threshold: float = Field(0.5, gt=0, le=1)
    rotations: int = Field(1, ge=1)  # Haar rotations averaged in the baseline
    seed: int = 0  # rotation seed
    accumulate: Literal["float32", "float64"] = "float32"  # co-moment accumulators


class ExperimentConfig(_Strict):
    """A whole run: `seeds` models of one shape, trained, streamed, compared and reported."""

    name: str = Field("experiment", pattern=r"^[A-Za-z0-9_.-]+$")
    seeds: list[int] = Field([0, 1, 2, 3], min_length=2)
    device: str = "cpu"
    language: LanguageConfig = LanguageConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    collect: CollectConfig = CollectConfig()
    compare: CompareConfig = CompareConfig()

    @model_validator(mode="after")
    def _distinct_seeds(self) -> "ExperimentConfig":
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        return self


def _describe(error: pydantic.ValidationError, source: str) -> str:
    """The first validation problem as one line: where, what, and the valid choices."""
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        section: type[BaseModel] = ExperimentConfig
        for part in first["loc"][:-1]:
            section = section.model_fields[str(part)].annotation  # type: ignore[assignment]
        valid = ", ".join(section.model_fields)
        return f"{source}: unknown key '{where}'; valid keys here: {valid}"
    return f"{source}: '{where}' {first['msg'].lower()} (got {first.get('input')!r})"


def parse_config(data: dict, source: str = "config") -> ExperimentConfig:
    """Validate a plain dict (as read from TOML) into an `ExperimentConfig`.

    A `[provenance]` table (written into a run's resolved config.toml) is ignored, so a run's
    config can be run again as it is.
    """
    data = {k: v for k, v in data.items() if k != "provenance"}
    try:
        return ExperimentConfig.model_validate(data)
    except pydantic.ValidationError as error:
        raise UniversalityError(_describe(error, source)) from None


def default_config_text() -> str:
    """The embedded default experiment (`univ demo`) as TOML text."""
    return resources.files("universality.configs").joinpath("demo.toml").read_text()


def load_config(path: str | Path | None = None) -> ExperimentConfig:
    """Read and validate a TOML config; `None` gives the embedded default."""
    if path is None:
        return parse_config(tomllib.loads(default_config_text()), "embedded demo config")
    path = Path(path)
    if not path.is_file():
        raise UniversalityError(f"config file {str(path)!r} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise UniversalityError(f"{path}: not valid TOML ({error})") from None
    return parse_config(data, str(path))
