"""One sparse autoencoder in one layout, whatever library wrote it.

Every format is converted on load to this orientation: `W_enc [latents, d_in]`, `b_enc [latents]`,
`W_dec [latents, d_in]` (row i is latent i's decoder direction), `b_dec [d_in]`.
"""

from dataclasses import dataclass, field

import torch

from ..errors import UniversalityError

__all__ = ["SAE", "ACTIVATIONS"]

# relu: ReLU with an L1 penalty in training; topk: the k largest pre-activations per token
# (Gao et al. 2024); batchtopk: the k x tokens largest over a batch in training, a global threshold
# at inference (Bussmann et al. 2024); jumprelu: pre-activation kept where above its latent's threshold.
ACTIVATIONS = ("relu", "topk", "batchtopk", "jumprelu")


@dataclass
class SAE:
    """Weights and activation rule of one SAE; `encode` [tokens, d_in] -> [tokens, latents].

    `threshold`: [latents] for jumprelu, a 0-dim tensor for batchtopk at inference, else None.
    `subtract_decoder_bias`: whether inputs are centred on `b_dec` before the encoder (SAELens
    `apply_b_dec_to_input`; sparsify and dictionary_learning always do).
    `metadata`: where it came from (format, hookpoint, training settings), kept as plain JSON data.
    """

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    activation: str = "relu"
    k: int | None = None
    threshold: torch.Tensor | None = None
    subtract_decoder_bias: bool = True
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def latents(self) -> int:
        return self.W_dec.shape[0]

    @property
    def d_in(self) -> int:
        return self.W_dec.shape[1]

    def validate(self) -> None:
        """Raise `UniversalityError` (one line) for inconsistent shapes, a bad rule or non-finite weights."""
        name = self.metadata.get("name", "SAE")
        if self.activation not in ACTIVATIONS:
            raise UniversalityError(f"{name}: activation {self.activation!r} is not one of {', '.join(ACTIVATIONS)}")
        if self.W_dec.ndim != 2 or self.W_dec.shape[0] == 0 or self.W_dec.shape[1] == 0:
            raise UniversalityError(f"{name}: W_dec must be [latents, d_in] with both > 0, "
                                    f"got {tuple(self.W_dec.shape)}")
        latents, d_in = self.W_dec.shape
        expected = {"W_enc": (latents, d_in), "b_enc": (latents,), "b_dec": (d_in,)}
        for key, shape in expected.items():
            if tuple(getattr(self, key).shape) != shape:
                raise UniversalityError(f"{name}: {key} has shape {tuple(getattr(self, key).shape)}, expected {shape} "
                                        f"for {latents} latents over d_in {d_in}")
        if self.activation in ("topk", "batchtopk") and not (self.k and 0 < self.k <= latents):
            raise UniversalityError(f"{name}: {self.activation} needs k in 1..{latents}, got {self.k}")
        if self.activation == "jumprelu" and (self.threshold is None or tuple(self.threshold.shape) != (latents,)):
            raise UniversalityError(f"{name}: jumprelu needs a threshold of shape ({latents},)")
        for key in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
            value = getattr(self, key)
            if value is not None and not bool(torch.isfinite(value).all()):
                raise UniversalityError(f"{name}: {key} has NaN or infinite values")

    def to(self, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> "SAE":
        """A copy with every tensor in `dtype` on `device`."""
        def move(t):
            return None if t is None else t.to(device=device, dtype=dtype)
        return SAE(move(self.W_enc), move(self.b_enc), move(self.W_dec), move(self.b_dec), self.activation, self.k,
                   move(self.threshold), self.subtract_decoder_bias, dict(self.metadata))

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """[tokens, d_in] -> [tokens, latents]: the encoder's affine map."""
        if self.subtract_decoder_bias:
            x = x - self.b_dec
        return torch.addmm(self.b_enc, x, self.W_enc.T)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[tokens, d_in] -> [tokens, latents] latent activations under the inference rule."""
        pre = self.pre_activations(x)
        if self.activation == "jumprelu":
            return pre * (pre > self.threshold)
        if self.activation == "batchtopk" and self.threshold is not None:
            return pre * (pre > self.threshold)
        pre = torch.relu(pre)
        if self.activation in ("topk", "batchtopk"):
            values, indices = pre.topk(self.k, dim=-1)
            return torch.zeros_like(pre).scatter_(-1, indices, values)
        return pre

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[tokens, latents] -> [tokens, d_in] reconstruction."""
        return torch.addmm(self.b_dec, latents, self.W_dec)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """[tokens, d_in] -> [tokens, d_in]: decode(encode(x))."""
        return self.decode(self.encode(x))
