"""The group-composition sections of a config (`kind = "groups"`): the task, the paper's MLP or
transformer, full-batch training, the irrep analysis and the claims the report makes."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, field_validator, model_serializer

from ._config_checks import Seed, StrictSection, Threads
from ._defaults import EMERGENCE_THRESHOLD, KEY_THRESHOLD, UNIT_THRESHOLD

__all__ = ["GroupSteeringConfig", "GroupTaskConfig", "GroupMLPConfig", "GroupTransformerConfig", "GroupModelConfig", "GroupTrainConfig",
           "GroupAnalysisConfig", "GroupClaimsConfig"]


class _GroupConfig(StrictSection):
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
    # Zhong et al. 2023's attention rate: pattern = rate softmax + (1 - rate) ones; 1 = softmax attention (the
    # "Clock" side), 0 = constant attention (the "Pizza" side). See `GroupTransformer`.
    attention_rate: float = Field(1.0, ge=0, le=1)

    @model_serializer(mode="wrap")
    def _omit_default_rate(self, handler):
        """Leave `attention_rate` out of dumps at its default 1, so a config without it dumps (and so
        fingerprints) as before the setting existed: saved runs stay valid and are not retrained."""
        data = handler(self)
        if self.attention_rate == 1.0 and isinstance(data, dict):
            data.pop("attention_rate", None)
        return data


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


class GroupTaskConfig(StrictSection):
    """Which group and word: every pair (a, b) maps to word(a, b); "a b" is composition."""

    group: str = Field("S5", min_length=1, max_length=100)  # C12, D6 (order 12), S5, A5, C6xC2 ... see `universality.groups.make_group`
    word: str = Field("a b", min_length=1, max_length=100)  # letters a and b with optional ^k, e.g. "a b a^-1"; irreps are analysed for "a b"
    split_seed: Seed = 0  # the train/test split, shared by every seed


class GroupAnalysisConfig(StrictSection):
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


class GroupClaimsConfig(StrictSection):
    """Which seeds the irrep and universality claims of a group run rest on."""

    # a seed whose final test accuracy is below this never generalised: flagged in the terminal and the
    # report, and left out of the irrep and universality claims unless include_ungeneralised
    generalised_accuracy: float = Field(0.99, gt=0, le=1)
    include_ungeneralised: bool = False


class GroupSteeringConfig(StrictSection):
    """Steering along the learned representations of GroupMLP seeds on "a b" (universality.steering): the
    ground-truth irreps rotation against mean-difference and single steering vectors, per-target affine maps
    and a learned nonlinear f, each measured on the test pairs; learned methods also transferred across seeds.
    Off by default (the nonlinear fit trains a small MLP per seed)."""

    enabled: bool = False
    per_pair: int | None = Field(4, ge=1, le=100_000)  # targets c' per test pair (seeded); None: every c' != c
    nonlinear_steps: int = Field(400, ge=1, le=1_000_000)  # training steps of the nonlinear f
    transfer: bool = True  # each learned method fitted on one seed, applied to the others after unit matching
    seed: Seed = 0

