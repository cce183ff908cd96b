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

from ._defaults import EMERGENCE_THRESHOLD, KEY_THRESHOLD, THRESHOLD, UNIT_THRESHOLD
from ._config_checks import (MEMORY_GIB, Device, Pattern, RunName, Seed, Threads, check_plain_values, describe,
                             language_run_gib, read_toml)
from .errors import UniversalityError, short_repr

__all__ = [
    "LanguageConfig", "ModelConfig", "TrainConfig", "CollectConfig", "CompareConfig", "ScaleConfig",
    "ExperimentConfig", "GroupTaskConfig", "GroupMLPConfig", "GroupTransformerConfig", "GroupModelConfig",
    "GroupTrainConfig", "GroupAnalysisConfig", "GroupClaimsConfig", "GroupExperimentConfig", "DataConfig", "PretrainedCollectConfig", "PretrainedExperimentConfig",
    "AnyExperimentConfig", "Seed", "Threads", "RunName",
    "load_config", "parse_config", "default_config_text",
]


_VALIDATING = contextvars.ContextVar("validating", default=False)  # pydantic calls each section's __init__


class _Strict(BaseModel):
    """Frozen, unknown keys forbidden; built directly in Python, a bad value raises one line."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def __init__(self, **data):
        if _VALIDATING.get():  # a section of a config being validated: the outermost call reports
            super().__init__(**data)
            return
        token = _VALIDATING.set(True)
        try:
            super().__init__(**data)
        except pydantic.ValidationError as error:
            raise UniversalityError(describe(error, type(self).__name__, type(self))) from None
        finally:
            _VALIDATING.reset(token)


class LanguageConfig(_Strict):
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


class ModelConfig(_Strict):
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


class TrainConfig(_Strict):
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
    # torch threads: "auto" = the idle cores this process may use. Not part of the trained model's
    # fingerprint: it changes only the rounding of float sums, not the model's definition.
    threads: Threads = "auto"


class CollectConfig(_Strict):
    """Which activations are streamed, over which evaluation rows."""

    rows: int = Field(1024, ge=1, le=1 << 22)  # evaluation rows of `language.seq_len` tokens
    batch_rows: int = Field(128, ge=1, le=65536)
    unit_sets: list[Pattern] = Field(["blocks.*.mlp.hook_post"], min_length=1, max_length=256)  # names, patterns
    drop_bos: bool = True  # BOS activations are constant per model and distort correlations
    eval_seed: Seed = 123_456  # the evaluation sample, shared by every model


class CompareConfig(_Strict):
    """Gurnee et al. 2024 universality: excess correlation over a random-rotation baseline."""

    threshold: float = Field(THRESHOLD, gt=0, le=1)
    rotations: int = Field(1, ge=1, le=1000)  # Haar rotations averaged in the baseline
    seed: Seed = 0  # rotation seed
    accumulate: Literal["float32", "float64"] = "float32"  # co-moment accumulators
    # the baseline's rotations: dense Haar (exact distribution; O(n^3) per unit set of width n) or a
    # structured fast rotation for wide unit sets (compare/_rotations.py states its agreement with Haar)
    rotation: Literal["haar", "fast"] = "haar"
    # largest activations (with their token contexts) kept per unit during the same pass, for the
    # report's unit pages; memory top_k x units per unit set
    top_k: int = Field(20, ge=1, le=1000)


def _budget(value):
    """`memory_budget`: "auto", "none", a size string ("12GiB") or a number of bytes (checked here)."""
    if value not in ("auto", "none"):
        from .moments import parse_bytes
        try:
            parse_bytes(value)
        except UniversalityError as error:
            raise ValueError(str(error)) from None
    return value


class ScaleConfig(_Strict):
    """How the comparison fits the machine: a memory budget that cuts the co-moments into passes over
    the data (`moments.plan_passes`), and where they stream. The tables are the same under any budget."""

    # "auto": half of the device's available memory when the run starts; "none": one pass holding
    # everything; or a size such as "12GiB" (the resident Grams, one batch and the blocks of one pass)
    memory_budget: Annotated[str | int, AfterValidator(_budget)] = "auto"
    # "local": this process; "ray": `workers` Ray actors each stream a token shard of every pass (pip install
    # 'universality[ray]'; the budget applies per worker); `address`: an existing cluster ("host:port",
    # "ray://host:port", "auto"), unset: an embedded Ray on this machine
    backend: Literal["local", "ray"] = "local"
    address: str | None = Field(None, min_length=1, max_length=4096)
    workers: int = Field(2, ge=1, le=1024)

    @model_validator(mode="after")
    def _address_needs_ray(self) -> "ScaleConfig":
        if self.address is not None and self.backend != "ray":
            raise ValueError('address is used only with backend = "ray"')
        return self


class _Seeds(_Strict):
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

    @model_validator(mode="after")
    def _fits_in_memory(self) -> "ExperimentConfig":
        needed = language_run_gib(self)
        if needed > MEMORY_GIB:
            raise ValueError(f"this run needs about {needed:.0f} GiB to train one seed or hold the moments of "
                             f"{len(self.seeds)} seeds; at most {MEMORY_GIB} GiB fit a 24 GiB machine: reduce "
                             "model (d_model, d_mlp, n_layers, n_heads), language (seq_len, n_classes, "
                             "tokens_per_class), train.batch_size, collect.batch_rows or seeds")
        return self


class _GroupConfig(_Strict):
    """Strict as well in types: no coercion of "1" to 1."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class GroupMLPConfig(_GroupConfig):
    """`GroupMLP` sizes (the paper's defaults)."""

    arch: Literal["mlp"] = "mlp"
    embed_dim: int = Field(256, ge=1, le=8192)
    hidden: int = Field(128, ge=1, le=8192)
    # "paper": the authors' randn / sqrt(fan) (embeddings std 1/sqrt(embed_dim)); "torch": PyTorch's
    # layer defaults (embeddings std 1), this package's init before issue 8. See `GroupMLP`.
    init: Literal["paper", "torch"] = "paper"


class GroupTransformerConfig(_GroupConfig):
    """`GroupTransformer` sizes (the paper's defaults)."""

    arch: Literal["transformer"] = "transformer"
    d_model: int = Field(128, ge=1, le=8192)
    n_heads: int = Field(4, ge=1, le=8192)
    d_head: int = Field(32, ge=1, le=8192)
    d_mlp: int = Field(512, ge=1, le=8192)
    # "paper": TransformerLens 0.2.0's N(0, (0.8/sqrt(d_model))^2) on every matrix, as the authors' code;
    # "nanda": N(0, 1/d_model), unembedding N(0, 1/order), this package's init before issue 8
    init: Literal["paper", "nanda"] = "paper"
    mlp_biases: Literal["frozen", "trained"] = "frozen"  # the paper freezes every bias at 0


GroupModelConfig = Annotated[GroupMLPConfig | GroupTransformerConfig, Field(discriminator="arch")]


class GroupTrainConfig(_GroupConfig):
    """Full-batch AdamW on one group task; the paper's optimiser settings are the defaults."""

    epochs: int = Field(20_000, ge=1, le=10_000_000)  # one full-batch step per epoch
    lr: float = Field(1e-3, gt=0, le=10)
    weight_decay: float = Field(1.0, ge=0, le=1000)  # large decay drives grokking (paper: 1)
    betas: tuple[float, float] = (0.9, 0.98)
    train_fraction: float = Field(0.6, gt=0, lt=1)  # the task must be split with this fraction
    checkpoints: int = Field(30, ge=0)  # log-spaced epochs with a saved state dict (fewer if they collide)
    log_every: int = Field(100, ge=1)  # epochs between curve points
    stop_at_test_accuracy: float | None = Field(None, gt=0, le=1)  # checked at logged epochs only
    extra_epochs: int = Field(0, ge=0)  # epochs run after `stop_at_test_accuracy` is reached
    grokfast: bool = False  # Grokfast-EMA gradient filter
    grokfast_alpha: float = Field(0.98, ge=0, lt=1)  # EMA decay
    grokfast_lambda: float = Field(2.0, ge=0)  # amplification of the EMA added to the gradient
    threads: Threads = "auto"  # torch threads: "auto" = the idle cores; not part of the model's fingerprint

    @field_validator("betas", mode="before")
    @classmethod
    def _list_to_tuple(cls, value):
        return tuple(value) if isinstance(value, list) else value  # JSON and TOML give lists

    @field_validator("betas")
    @classmethod
    def _betas_in_unit_interval(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= beta < 1 for beta in value):
            raise ValueError(f"both betas must be in [0, 1), got {value}")
        return value


class GroupTaskConfig(_Strict):
    """Which group and word: every pair (a, b) maps to word(a, b); "a b" is composition."""

    group: str = Field("S5", min_length=1, max_length=100)  # C12, D6 (order 12), S5, A5, C6xC2 ... see `universality.groups.make_group`
    word: str = Field("a b", min_length=1, max_length=100)  # letters a and b with optional ^k, e.g. "a b a^-1"; irreps are analysed for "a b"
    split_seed: Seed = 0  # the train/test split, shared by every seed


class GroupAnalysisConfig(_Strict):
    """Irrep analysis settings (Chughtai, Chan, Nanda 2023)."""

    key_threshold: float = Field(KEY_THRESHOLD, gt=0, lt=1)  # a key irrep's logit similarity (the paper's)
    unit_threshold: float = Field(UNIT_THRESHOLD, gt=0, le=1)  # share of a unit's variance that names its irrep
    # which element-indexed matrices the fve_* columns measure: "paper" = as the hidden layer sees them
    # (MLP: E_L W_L^T, E_R W_R^T and U; transformer: W_E and W_out-composed W_U, as the authors' code);
    # "raw" = the parameters as stored (E_L, E_R, U; W_E, W_U)
    fve_matrices: Literal["paper", "raw"] = "paper"
    # the restricted loss keeps only the key irreps' rho(ab) part of the hidden layer: "dropped" (the
    # paper) leaves out the hidden layer's mean over pairs, "kept" adds it back (this package before issue 8)
    restricted_hidden_mean: Literal["dropped", "kept"] = "dropped"
    # how the restricted / excluded hidden layers become logits: "direct" (the paper) = hidden @ W_out @ W_U,
    # leaving out the transformer's residual stream and attention; "forward" = patched into the whole forward
    # pass (before issue 8). Equal for the MLP.
    loss_readout: Literal["direct", "forward"] = "direct"
    # emergence epoch of each key irrep: "first_crossing" = the first checkpoint whose logit similarity
    # exceeds emergence_threshold, as the authors' determine_key_rep_order.py (0.05; the key cut 0.005 is
    # below what random S4 logits score, so every irrep would emerge at epoch 0-1); "stays_above" = the first
    # checkpoint from which it stays above emergence_threshold to the end (before issue 8, with 0.005)
    emergence_rule: Literal["first_crossing", "stays_above"] = "first_crossing"
    emergence_threshold: float = Field(EMERGENCE_THRESHOLD, gt=0, lt=1)


class GroupClaimsConfig(_Strict):
    """Which seeds the irrep and universality claims of a group run rest on."""

    # a seed whose final test accuracy is below this never generalised: flagged in the terminal and the
    # report, and left out of the irrep and universality claims unless include_ungeneralised
    generalised_accuracy: float = Field(0.99, gt=0, le=1)
    include_ungeneralised: bool = False


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
    compare: CompareConfig = CompareConfig()
    scale: ScaleConfig = ScaleConfig()

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


class DataConfig(_Strict):
    """The token stream pretrained models are compared on: rows [rows, seq_len], each starting with BOS."""

    source: str = Field(min_length=1, max_length=4096)  # a text file (.txt), a token array (.npy) or a `datasets` directory saved with save_to_disk
    column: str = Field("text", min_length=1, max_length=200)  # the dataset column: text, or "input_ids"
    seq_len: int = Field(128, ge=2, le=1 << 16)
    rows: int = Field(512, ge=1, le=1 << 22)


class PretrainedCollectConfig(_Strict):
    """Which activations of the loaded models are streamed, and which tokens are left out."""

    unit_sets: list[Pattern] = Field(["blocks.*.mlp.hook_post"], min_length=1, max_length=256)  # names or patterns
    batch_rows: int = Field(16, ge=1, le=65536)
    drop_bos: bool = True  # BOS / CLS activations are constant per model and distort correlations
    drop_pad: bool = True
    drop_newline: bool = False


class PretrainedExperimentConfig(_Strict):
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

    @model_validator(mode="after")
    def _distinct_models(self) -> "PretrainedExperimentConfig":
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"models must be distinct, got {self.models}")
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
    token = _VALIDATING.set(True)
    try:
        config = kinds[kind].model_validate(data)
        check_plain_values(data, source)  # after the fields: a typo'd key is named as unknown first
        return config
    except pydantic.ValidationError as error:
        raise UniversalityError(describe(error, source, kinds[kind])) from None
    finally:
        _VALIDATING.reset(token)


def default_config_text() -> str:
    """The embedded default experiment (`univ demo`) as TOML text."""
    return resources.files("universality.configs").joinpath("demo.toml").read_text()


def load_config(path: str | Path | None = None) -> AnyExperimentConfig:
    """Read and validate a TOML config (UTF-8, at most 1 MiB); `None` gives the embedded default."""
    if path is None:
        return parse_config(tomllib.loads(default_config_text()), "embedded demo config")
    data, shown = read_toml(path)
    return parse_config(data, shown)
