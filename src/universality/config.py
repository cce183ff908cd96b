"""Typed experiment specs, loaded from TOML.

An experiment (`kind = "language"`, the default) is: a synthetic language (`language`), a model shape (`model`), how each seed is
trained (`train`), which activations are streamed (`collect`) and how they are compared
(`compare`). A group experiment (`kind = "groups"`) is: a group and word (`task`), the paper's
MLP or transformer (`model`, by `arch`), full-batch training (`train`), irrep analysis
(`analysis`) and `compare`. A run over pretrained models (`kind = "pretrained"`) is: existing models by path or
hub name (`models`), a token stream (`data`), `collect` and `compare`. Unknown keys are errors, so a typo never silently falls back to a default.

Everything that can be checked without data is checked here, before a run directory is touched:
types, finite floats, seeds in [0, 2^32), run names (`check_run_name`), the device, and sizes
within limits a 24 GiB machine holds (each limit is in the message that refuses it).

>>> cfg = ExperimentConfig(name="x", seeds=[0, 1])
>>> cfg.compare.threshold
0.5
"""

from __future__ import annotations

import contextvars
import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import pydantic
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from ._defaults import (EMERGENCE_THRESHOLD, KEY_THRESHOLD, KNN_NEIGHBOURS, SIMILARITY_NULLS, SIMILARITY_RIDGE,
                        THRESHOLD, UNIT_THRESHOLD)
from ._config_checks import (MEMORY_GIB, VALIDATING, Device, MemoryBudget, Pattern, RunName, Seed, StrictSection,
                             Threads, check_plain_values, describe, language_run_gib, read_toml)
from ._dynamics_config import CheckpointSeries, FamilyTrainingDynamicsConfig, TrainingDynamicsConfig
from ._sae_config import SaeConfig
from ._group_config import (GroupAnalysisConfig, GroupClaimsConfig, GroupMLPConfig, GroupModelConfig, GroupSteeringConfig,
                            GroupTaskConfig,
                            GroupTrainConfig, GroupTransformerConfig)
from .errors import UniversalityError, short_repr

__all__ = [
    "LanguageConfig", "ModelConfig", "TrainConfig", "IOIConfig", "CollectConfig", "CompareConfig", "ScaleConfig", "CalibrationConfig",
    "SimilarityConfig", "PosteriorConfig", "SaeConfig", "TrainingDynamicsConfig", "CheckpointSeries", "FamilyTrainingDynamicsConfig",
    "ExperimentConfig", "GroupTaskConfig", "GroupMLPConfig", "GroupTransformerConfig", "GroupModelConfig",
    "GroupTrainConfig", "GroupAnalysisConfig", "GroupClaimsConfig", "GroupExperimentConfig", "DataConfig", "PretrainedCollectConfig", "PretrainedExperimentConfig",
    "AnyExperimentConfig", "Seed", "Threads", "RunName",
    "load_config", "parse_config", "default_config_text",
]


class LanguageConfig(StrictSection):
    """A synthetic language with known latent structure (see `universality.tasks`)."""

    seq_len: int = Field(64, ge=8, le=4096)  # tokens per row, BOS included
    n_classes: int = Field(8, ge=2, le=1024)  # hidden Markov states, each with its own emission vocabulary
    tokens_per_class: int = Field(12, ge=1, le=1024)
    n_bracket_types: int = Field(3, ge=0, le=256)  # each type is an open and a close token
    position_period: int = Field(16, ge=2, le=4096)  # a position marker token every `position_period` tokens
    p_open: float = Field(0.06, ge=0, le=1)
    p_close: float = Field(0.25, ge=0, le=1)  # chance to close the innermost bracket, when one is open
    p_repeat: float = Field(0.5, ge=0, le=1)  # chance that a row repeats one of its earlier spans
    repeat_len: int = Field(8, ge=2, le=4096)
    grammar_seed: Seed = 0  # the language itself (transitions, emissions): shared by every model seed


class ModelConfig(StrictSection):
    """A tiny pre-LayerNorm decoder transformer (see `universality.models`)."""

    d_model: int = Field(64, ge=4, le=8192)
    n_layers: int = Field(2, ge=1, le=128)
    n_heads: int = Field(4, ge=1, le=256)
    d_mlp: int = Field(256, ge=1, le=32768)
    activation: Literal["relu", "gelu"] = "gelu"

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "ModelConfig":
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        return self


class IOIConfig(StrictSection):
    """The indirect-object task mixed into training (`tasks.IOITask`, after Wang et al. 2022)."""

    names_class: int = Field(0, ge=0, le=1023)  # the language's hidden class whose tokens serve as names
    templates: int = Field(8, ge=1, le=1024)  # distinct prompt templates, drawn from template_seed
    template_len: int = Field(10, ge=6, le=4096)  # tokens per prompt after BOS, the final position included
    template_seed: Seed = 0


class TrainConfig(StrictSection):
    """Next-token training of each seed; the seed sets the initialisation and, by `data`, the sample."""

    steps: int = Field(600, ge=1, le=10_000_000)
    batch_size: int = Field(32, ge=1, le=65536)  # rows per step
    lr: float = Field(3e-3, gt=0, le=10)
    weight_decay: float = Field(0.01, ge=0, le=100)
    warmup_steps: int = Field(50, ge=0, le=10_000_000)
    # "per_seed": every seed draws its own training rows (models trained on different samples);
    # "shared": every seed sees the same rows in the same order (only the initialisation differs).
    data: Literal["per_seed", "shared"] = "per_seed"
    data_seed: Seed = 1000  # the shared sample's seed when data = "shared"
    log_every: int = Field(20, ge=1, le=10_000_000)  # steps between points of the training curve
    # log-spaced steps whose state dict is kept beside the final weights, for [training_dynamics]
    # (train.checkpoint_epochs: 0, the initialisation, to `steps`); 0 keeps none
    checkpoints: int = Field(0, ge=0, le=1000)
    # the fraction of each batch's rows that are indirect-object prompts (`ioi`); 0 (the default) trains on
    # the language alone, and is left out of the trained model's fingerprint so older models stay valid
    ioi_fraction: float = Field(0.0, ge=0, le=1)
    ioi: IOIConfig = IOIConfig()
    # torch threads: "auto" = the idle cores this process may use. Not part of the trained model's
    # fingerprint: it changes only the rounding of float sums, not the model's definition.
    threads: Threads = "auto"


class CollectConfig(StrictSection):
    """Which activations are streamed, over which evaluation rows."""

    rows: int = Field(1024, ge=1, le=1 << 22)  # evaluation rows of `language.seq_len` tokens
    batch_rows: int = Field(128, ge=1, le=65536)
    unit_sets: list[Pattern] = Field(["blocks.*.mlp.hook_post"], min_length=1, max_length=256)  # names, patterns
    drop_bos: bool = True  # BOS activations are constant per model and distort correlations
    eval_seed: Seed = 123_456  # the evaluation sample, shared by every model


class CompareConfig(StrictSection):
    """Gurnee et al. 2024 universality: excess correlation over a random-rotation baseline."""

    threshold: float = Field(THRESHOLD, gt=0, le=1)
    rotations: int = Field(1, ge=1, le=1000)  # Haar rotations averaged in the baseline
    seed: Seed = 0  # rotation seed
    accumulate: Literal["float32", "float64"] = "float32"  # co-moment accumulators
    # the baseline's rotations: dense Haar (exact distribution; O(n^3) per unit set of width n) or a
    # structured fast rotation for wide unit sets (compare/_rotations.py states its agreement with Haar)
    rotation: Literal["auto", "haar", "fast"] = "auto"  # auto: haar up to 4096 units per unit set, fast above
    # largest activations (with their token contexts) kept per unit during the same pass, for the
    # report's unit pages; memory top_k x units per unit set
    top_k: int = Field(20, ge=1, le=1000)


class CalibrationConfig(StrictSection):
    """Calibrated universality beside the paper's rule (compare/_calibration.py): each unit's max
    correlation against the maxima of `rotations` seeded rotations, Benjamini-Hochberg at `alpha`.
    Computed from the state of a one-pass exact comparison (left out, with the report saying so,
    under a multi-pass plan or a sketch, whose cross-moments are reduced as they stream)."""

    enabled: bool = True
    rotations: int = Field(32, ge=2, le=1000)
    alpha: float = Field(0.01, gt=0, lt=1)


class SimilarityConfig(StrictSection):
    """Representation similarity of every unit set of one model with every unit set of another
    (universality.similarity): the state metrics from the state of a one-pass comparison, no further
    pass; debiased CKA, mutual k-NN and the token-shuffled nulls of every score from a seeded reservoir
    of token rows kept during that same pass (`similarity.Reservoir`, saved with the moments)."""

    enabled: bool = True
    metrics: list[Literal["cka", "cca", "svcca", "pwcca", "procrustes", "regression", "debiased_cka", "mutual_knn"]] = (
        Field(["cka", "cca", "svcca", "pwcca", "procrustes", "regression", "debiased_cka", "mutual_knn"],
              min_length=1, max_length=8))
    ridge: float = Field(SIMILARITY_RIDGE, ge=0, le=1)  # CCA, PWCCA, regression: S + ridge (tr S / n) I
    # token rows kept: "auto" = min(4096, the tokens streamed); a number larger than the stream is an error.
    # Memory: 4 bytes x rows x all units of all models (4096 rows of the demo's 4 x 1024 neurons: 64 MiB)
    reservoir: Literal["auto"] | Annotated[int, Field(ge=4, le=1 << 20)] = "auto"
    k: int = Field(KNN_NEIGHBOURS, ge=1, le=1024)  # mutual k-NN neighbours per row (Huh et al. 2024: 10)
    nulls: int = Field(SIMILARITY_NULLS, ge=0, le=100)  # token-shuffled partners per score; 0: null columns NaN
    seed: Seed = 0  # the reservoir's sample and the shuffles of the nulls


class PosteriorConfig(StrictSection):
    """Seeds as samples of one posterior (universality.posterior): pairwise KL of the models' predictive
    distributions on the evaluation data (next token; group runs: the product), seeds clustered by
    symmetric KL, the uniform mixture's log-loss and regret, units universal within each cluster."""

    enabled: bool = True
    # seeds closer than this symmetric KL (nats per position) share a cluster. 0.1 nats: seeds that far apart
    # are told apart by a likelihood ratio of e^5 in about 50 positions (one evaluation row), while seeds of one
    # solution sit below it (measured: the test language config 0.021-0.028, generalised S4 MLP seeds 0.002-0.035)
    threshold: float = Field(0.1, gt=0, le=100)
    linkage: Literal["single", "average", "complete"] = "average"  # average: not chained by one in-between seed


class ScaleConfig(StrictSection):
    """How the comparison fits the machine: a memory budget that cuts the co-moments into passes over
    the data (`moments.plan_passes`), and where they stream. The tables are the same under any budget."""

    # "auto": half of the device's available memory when the run starts; "none": one pass holding
    # everything; or a size such as "12GiB" (the resident Grams, one batch and the blocks of one pass)
    memory_budget: MemoryBudget = "auto"
    # passes after the first read the activations from disk instead of re-running the models: "auto"
    # (when the stream takes at most half the free disk), "none", or a directory (pipeline/_activation_cache.py)
    activation_cache: str = Field("auto", min_length=1, max_length=4096)
    # CUDA only: let the cross-moment GEMMs use TF32 tensor cores (about 7x an fp32 GPU's rate; inputs
    # rounded to 10 mantissa bits, so correlations move by about 1e-3: off unless you accept that)
    tf32: bool = False
    # "local": this process; "ray": `workers` Ray actors each stream a token shard of every pass (pip install
    # 'universality[ray]'; the budget applies per worker); `address`: an existing cluster ("host:port",
    # "ray://host:port", "auto"), unset: an embedded Ray on this machine
    backend: Literal["local", "ray"] = "local"
    address: str | None = Field(None, min_length=1, max_length=4096)
    workers: int = Field(2, ge=1, le=1024)
    # "exact": every pair over every token; "sketch": pass 1 exact on a seeded `subsample` (a fraction of
    # each batch), keeping each unit's `candidates` best partners per other model, pass 2 over every
    # token for those pairs only (compare/_sketch.py states its error and when it is unsafe)
    mode: Literal["exact", "sketch"] = "exact"
    subsample: float | None = Field(None, gt=0, le=1)
    candidates: int | None = Field(None, ge=1, le=4096)

    @model_validator(mode="after")
    def _address_needs_ray(self) -> "ScaleConfig":
        if self.address is not None and self.backend != "ray":
            raise ValueError('address is used only with backend = "ray"')
        return self

    @model_validator(mode="after")
    def _sketch_settings(self) -> "ScaleConfig":
        if self.mode == "exact" and (self.subsample is not None or self.candidates is not None):
            raise ValueError('subsample and candidates are used only with mode = "sketch"')
        if self.mode == "sketch" and self.backend != "local":
            raise ValueError('mode = "sketch" runs on backend = "local" only')
        return self


class _Seeds(StrictSection):
    """An experiment over models trained here, one per seed."""

    seeds: list[Seed] = Field([0, 1, 2, 3], min_length=2, max_length=64)

    @model_validator(mode="after")
    def _distinct_seeds(self) -> "_Seeds":
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        return self


class ExperimentConfig(_Seeds):
    """A whole run: `seeds` models of one shape, trained, streamed, compared and reported."""

    kind: Literal["language"] = "language"
    name: RunName = "experiment"
    device: Device = "cpu"
    language: LanguageConfig = LanguageConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    collect: CollectConfig = CollectConfig()
    compare: CompareConfig = CompareConfig()
    scale: ScaleConfig = ScaleConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    similarity: SimilarityConfig = SimilarityConfig()
    posterior: PosteriorConfig = PosteriorConfig()
    training_dynamics: TrainingDynamicsConfig = TrainingDynamicsConfig()
    sae: SaeConfig = SaeConfig()

    @model_validator(mode="after")
    def _fits_in_memory(self) -> "ExperimentConfig":
        needed = language_run_gib(self)
        if needed > MEMORY_GIB:
            raise ValueError(f"this run needs about {needed:.0f} GiB to train one seed or hold the moments of "
                             f"{len(self.seeds)} seeds; at most {MEMORY_GIB} GiB fit a 24 GiB machine: reduce "
                             "model (d_model, d_mlp, n_layers, n_heads), language (seq_len, n_classes, "
                             "tokens_per_class), train.batch_size, collect.batch_rows or seeds")
        return self


class GroupExperimentConfig(_Seeds):
    """A group-composition run: `seeds` models (of each architecture) trained on one group task, their
    irreps, their neurons compared."""

    kind: Literal["groups"] = "groups"
    name: RunName = "groups"
    task: GroupTaskConfig = GroupTaskConfig()
    # one architecture, or several ([[model]] tables): every seed of each, compared across all
    model: GroupModelConfig | Annotated[list[GroupModelConfig], Field(max_length=16)] = GroupMLPConfig()
    train: GroupTrainConfig = GroupTrainConfig()
    analysis: GroupAnalysisConfig = GroupAnalysisConfig()
    claims: GroupClaimsConfig = GroupClaimsConfig()
    steering: GroupSteeringConfig = GroupSteeringConfig()
    compare: CompareConfig = CompareConfig()
    scale: ScaleConfig = ScaleConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    similarity: SimilarityConfig = SimilarityConfig()
    posterior: PosteriorConfig = PosteriorConfig()
    training_dynamics: TrainingDynamicsConfig = TrainingDynamicsConfig()

    @property
    def architectures(self) -> list:
        """The model configs as a list (one or several architectures)."""
        return list(self.model) if isinstance(self.model, list) else [self.model]

    @model_validator(mode="after")
    def _distinct_models(self) -> "GroupExperimentConfig":
        if isinstance(self.model, list) and (not self.model or len({m.model_dump_json() for m in self.model})
                                             < len(self.model)):
            raise ValueError("model: give one [model] table, or several distinct [[model]] tables")
        return self


class DataConfig(StrictSection):
    """The token stream pretrained models are compared on: rows [rows, seq_len], each starting with BOS."""

    source: str = Field(min_length=1, max_length=4096)  # a text file (.txt), a token array (.npy) or a `datasets` directory saved with save_to_disk
    column: str = Field("text", min_length=1, max_length=200)  # the dataset column: text, or "input_ids"
    seq_len: int = Field(128, ge=2, le=1 << 16)
    rows: int = Field(512, ge=1, le=1 << 22)


class PretrainedCollectConfig(StrictSection):
    """Which activations of the loaded models are streamed, and which tokens are left out."""

    unit_sets: list[Pattern] = Field(["blocks.*.mlp.hook_post"], min_length=1, max_length=256)  # names or patterns
    batch_rows: int = Field(16, ge=1, le=65536)
    drop_bos: bool = True  # BOS / CLS activations are constant per model and distort correlations
    drop_pad: bool = True
    drop_newline: bool = False


class PretrainedExperimentConfig(StrictSection):
    """Existing models (local directories or hub names in the local cache), compared on one token stream."""

    kind: Literal["pretrained"] = "pretrained"
    name: RunName = "pretrained"
    # what `universality.load_model` accepts: local directories or hub names
    models: list[Annotated[str, Field(min_length=1, max_length=4096)]] = Field(min_length=2, max_length=64)
    device: Device = "cpu"
    data: DataConfig
    collect: PretrainedCollectConfig = PretrainedCollectConfig()
    compare: CompareConfig = CompareConfig()
    scale: ScaleConfig = ScaleConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    similarity: SimilarityConfig = SimilarityConfig()
    posterior: PosteriorConfig = PosteriorConfig()
    training_dynamics: FamilyTrainingDynamicsConfig = FamilyTrainingDynamicsConfig()
    # the neurons table (statistics, families, roles: one more forward pass); its family sums hold
    # feature values x neurons (GPT-2: 50,257 token ids x 36,864 neurons per model), so wide families leave it out
    neurons: bool = True
    # the indirect-object circuit of every model (decoders with an LM head): English IOI prompts built with their
    # tokenizer (`tasks.TextIOITask`), attribution patching, head roles matched across models (`circuits`)
    circuits: bool = False
    # this process's torch threads for the forward passes and the moment GEMMs (not Ray workers'): "auto" = the
    # idle cores it may use, resolved once when the run starts. Not in the run's fingerprint: it changes only rounding.
    threads: Threads = "auto"

    @model_validator(mode="after")
    def _distinct_models(self) -> "PretrainedExperimentConfig":
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"models must be distinct, got {self.models}")
        unknown = [s.model for s in self.training_dynamics.seeds if s.model not in self.models]
        if unknown:
            raise ValueError(f"training_dynamics.seeds: model {unknown[0]!r} is not one of models {self.models}")
        return self


AnyExperimentConfig = ExperimentConfig | GroupExperimentConfig | PretrainedExperimentConfig


def parse_config(data: dict, source: str = "config") -> AnyExperimentConfig:
    """Validate a plain dict (as read from TOML) into an `ExperimentConfig`.

    A `[provenance]` table (written into a run's resolved config.toml) is ignored, so a run's
    config can be run again as it is.
    """
    if not isinstance(data, dict):
        raise UniversalityError(f"{source}: a config is a table of keys, got {short_repr(data)}")
    data = {k: v for k, v in data.items() if k != "provenance"}
    kinds = {"language": ExperimentConfig, "groups": GroupExperimentConfig, "pretrained": PretrainedExperimentConfig}
    kind = data.get("kind", "language")
    if not isinstance(kind, str) or kind not in kinds:
        raise UniversalityError(f"{source}: unknown kind {short_repr(kind)}; choose one of: {', '.join(kinds)}")
    token = VALIDATING.set(True)
    try:
        config = kinds[kind].model_validate(data)
        check_plain_values(data, source)  # after the fields: a typo'd key is named as unknown first
        return config
    except pydantic.ValidationError as error:
        raise UniversalityError(describe(error, source, kinds[kind])) from None
    finally:
        VALIDATING.reset(token)


def default_config_text() -> str:
    """The embedded default experiment (`univ demo`) as TOML text."""
    return resources.files("universality.configs").joinpath("demo.toml").read_text()


def load_config(path: str | Path | None = None) -> AnyExperimentConfig:
    """Read and validate a TOML config (UTF-8, at most 1 MiB); `None` gives the embedded default."""
    if path is None:
        return parse_config(tomllib.loads(default_config_text()), "embedded demo config")
    data, shown = read_toml(path)
    return parse_config(data, shown)
