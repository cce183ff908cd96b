"""A reference circuit: a `TinyTransformer` whose weights implement Wang et al.'s (2022) indirect-object
circuit exactly, to check a head-role or patching method against heads whose roles are known.

Three layers of two heads, MLPs off; `IOI_REFERENCE_HEADS` names the circuit's heads:

| head | role                 | attention                                 | writes (OV)                        |
|------|----------------------|-------------------------------------------|------------------------------------|
| 0.0  | duplicate_token      | each token to its earlier copy (else BOS) | DUP: the copy's token (BOS: none)  |
| 0.1  | distractor           | uniform                                   | JUNK: the attended tokens          |
| 1.0  | distractor           | itself                                    | JUNK                               |
| 1.1  | s_inhibition         | the duplicated name, S2 (else BOS)        | INHIB: the name in DUP there       |
| 2.0  | name_mover           | every name, minus the ones in INHIB: IO   | OUT: the attended name             |
| 2.1  | distractor           | BOS                                       | JUNK                               |
| 2.1  | negative_name_mover, with `negative_name_mover=True` | as 2.0: IO | OUT: minus half the attended name |

The residual stream is one-hot in blocks of +-1 pairs (pair i of a block: +1 at 2 i, -1 at 2 i + 1), so every
vector written has mean 0 and a LayerNorm only rescales it:

| block | pairs   | holds                                                              |
|-------|---------|--------------------------------------------------------------------|
| CONST | 1       | RESIDUAL_SCALE, at every position: the LayerNorms' scale           |
| TOK   | vocab   | the token (embedding)                                              |
| POS   | n_ctx   | the position (positional embedding)                                |
| DUP   | vocab   | written by 0.0 at a duplicated token: its earlier copy's token     |
| INHIB | vocab   | written by 1.1: the duplicated name, to be inhibited               |
| OUT   | vocab   | written by 2.0: the answer, read by the unembedding                |
| JUNK  | vocab   | written by the distractors, read by nothing                        |

CONST dwarfs the rest (+-RESIDUAL_SCALE against a few units), so every LayerNorm divides by nearly
the same norm at every position; its scale, set to that norm, makes each LayerNorm the identity on the other
blocks to within 1e-3 (TinyTransformer has no switch to turn LayerNorm off).

>>> from universality.config import IOIConfig, LanguageConfig
>>> from universality.tasks import IOITask, SyntheticLanguage, ioi_metrics
>>> from universality.models import TinyAdapter
>>> language = SyntheticLanguage(LanguageConfig(seq_len=12, n_classes=2, tokens_per_class=3, n_bracket_types=0,
...                                             position_period=12, repeat_len=2))
>>> task = IOITask(language, IOIConfig(template_len=8))
>>> adapter = TinyAdapter(ioi_reference_model(task), bos_token_id=language.bos)
>>> ioi_metrics(adapter, task.prompts(32, seed=0))["accuracy"]
1.0
"""

from __future__ import annotations

import copy

import torch

from ..config import ModelConfig
from ..errors import UniversalityError
from ..models import TinyTransformer
from ..tasks import IOITask

__all__ = ["IOI_REFERENCE_HEADS", "ioi_reference_model", "set_head", "permute_heads"]

IOI_REFERENCE_HEADS = {"duplicate_token": (0, 0), "s_inhibition": (1, 1), "name_mover": (2, 0),
                       "negative_name_mover": (2, 1)}  # the last one only with negative_name_mover=True
RESIDUAL_SCALE = 100.0  # CONST's magnitude: the LayerNorms' norm moves by < 1e-3 with what the heads write
LOGIT_SCALE = 10.0  # the unembedding's gain: the answer's logit per unit of OUT
NEGATIVE_GAIN = 0.5  # the negative name mover writes -0.5 of the name, so the model still answers IO


def set_head(model: TinyTransformer, layer: int, head: int, *, W_Q: torch.Tensor, W_K: torch.Tensor,
             W_V: torch.Tensor, W_O: torch.Tensor, b_Q: torch.Tensor | None = None,
             b_K: torch.Tensor | None = None) -> None:
    """Write one head's weights, in place, in TransformerLens layout: W_Q, W_K, W_V [d_model, d_head],
    W_O [d_head, d_model], b_Q, b_K [d_head] (zero when None; b_V is set to zero)."""
    attn, d_model = model.blocks[layer].attn, model.config.d_model
    d_head = d_model // model.config.n_heads
    zero = torch.zeros(d_head)
    with torch.no_grad():
        for part, (w, b) in enumerate(((W_Q, b_Q), (W_K, b_K), (W_V, None))):
            rows = slice(part * d_model + head * d_head, part * d_model + (head + 1) * d_head)
            attn.qkv.weight[rows] = w.T  # nn.Linear stores [out, in]
            attn.qkv.bias[rows] = zero if b is None else b
        attn.out.weight[:, head * d_head:(head + 1) * d_head] = W_O.T


def permute_heads(model: TinyTransformer, order: list[int], *, layers: list[int] | None = None) -> TinyTransformer:
    """A copy of `model` computing the same function, whose head h in each of `layers` (all when None) is the
    original's head order[h]: each head's Q, K, V rows and W_O columns move together."""
    n_heads, d_model = model.config.n_heads, model.config.d_model
    if sorted(order) != list(range(n_heads)):
        raise UniversalityError(f"order must be a permutation of 0..{n_heads - 1} (one entry per head), got {order}")
    out, d_head = copy.deepcopy(model), d_model // n_heads
    index = torch.cat([torch.arange(h * d_head, (h + 1) * d_head) for h in order])  # [d_model]
    with torch.no_grad():
        for l in range(model.config.n_layers) if layers is None else layers:
            attn = out.blocks[l].attn
            attn.qkv.weight.copy_(attn.qkv.weight.view(3, d_model, d_model)[:, index].reshape(-1, d_model))
            attn.qkv.bias.copy_(attn.qkv.bias.view(3, d_model)[:, index].reshape(-1))
            attn.out.weight.copy_(attn.out.weight[:, index])
    return out


def _pairs(d_model: int, pairs: list[int]) -> torch.Tensor:
    """[len(pairs), d_model]: row i is +1 at 2 pairs[i], -1 at 2 pairs[i] + 1."""
    rows = torch.zeros(len(pairs), d_model)
    for i, pair in enumerate(pairs):
        rows[i, 2 * pair], rows[i, 2 * pair + 1] = 1.0, -1.0
    return rows


def ioi_reference_model(task: IOITask, *, n_ctx: int | None = None, sharpness: float = 20.0,
                        negative_name_mover: bool = False) -> TinyTransformer:
    """The reference IOI circuit (module docstring) for the names and vocabulary of `task`: a TinyTransformer
    of 3 layers, 2 heads of d_head = 1 + 5 vocab + n_ctx, d_model = 2 d_head, context n_ctx (the language's
    seq_len by default). `sharpness` is the attention logit of a matching key (of IO, for the name mover) over
    a neutral one: 20 gives patterns one-hot to 1e-4; 3 soft ones, through which gradients flow (attribution
    patching), and still the right answer; below about 2.5 (8-slot templates) S's two occurrences outweigh its
    soft inhibition and the model answers S."""
    vocab, bos, names = task.language.vocab_size, task.language.bos, task.names.tolist()
    n_ctx = task.language.config.seq_len if n_ctx is None else n_ctx
    if n_ctx < 2 + task.config.template_len:
        raise UniversalityError(f"n_ctx={n_ctx} is shorter than an IOI prompt and its answer "
                                f"({2 + task.config.template_len}); use n_ctx >= {2 + task.config.template_len}")
    # 1) the residual layout: the first pair of each block (module docstring)
    const, tok, pos = 0, 1, 1 + vocab
    dup = pos + n_ctx
    inhib, out, junk = dup + vocab, dup + 2 * vocab, dup + 3 * vocab
    d_head = junk + vocab  # a column per pair: a head has room to read any block
    d_model = 2 * d_head
    tokens, positions = list(range(vocab)), list(range(n_ctx))
    carried = [t for t in tokens if t != bos]  # what the heads' OVs copy: BOS, the sink, carries nothing
    model = TinyTransformer(ModelConfig(d_model=d_model, n_layers=3, n_heads=2, d_mlp=1, activation="relu"),
                            vocab_size=vocab, n_ctx=n_ctx)
    # 2) embeddings and unembedding; every other weight zero (MLPs write nothing), LayerNorms the identity
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        norm = RESIDUAL_SCALE * (2 / d_model) ** 0.5  # the residual's RMS: CONST's, to within 1e-3
        for ln in [model.ln_final] + [b.ln1 for b in model.blocks] + [b.ln2 for b in model.blocks]:
            ln.weight.fill_(norm)  # LN(x) = norm x / rms(x) ~ x
        model.embed.weight.copy_(_pairs(d_model, [tok + t for t in tokens]))  # [vocab, d_model]
        model.pos_embed.weight.copy_(_pairs(d_model, [pos + p for p in positions])  # [n_ctx, d_model]
                                     + RESIDUAL_SCALE * _pairs(d_model, [const]))
        model.unembed.weight.copy_(_pairs(d_model, [out + t for t in tokens]) * LOGIT_SCALE / 2)  # [vocab, d_model]
    # 3) the heads. A query carries gain = sharpness sqrt(d_head), so q . k / sqrt(d_head) = sharpness per unit
    gain = sharpness * d_head ** 0.5
    nothing = torch.zeros(d_model, d_head)

    def read(block: int, ids: list[int], columns: list[int] | None = None, scale: float = 1.0) -> torch.Tensor:
        """[d_model, d_head]: column columns[i] (default ids[i]) adds scale x for pair block + ids[i] holding x."""
        w = torch.zeros(d_model, d_head)
        w.index_add_(1, torch.tensor(ids if columns is None else columns), _pairs(d_model, [block + i for i in ids]).T)
        return w * scale / 2  # a pair holding x reads x . (+1, -1) = 2 x

    def write(ids: list[int], block: int, scale: float = 1.0) -> torch.Tensor:
        """[d_head, d_model]: column ids[i] writes scale per unit into pair block + ids[i] (a reader transposed)."""
        return read(block, ids, scale=2 * scale).T

    def bias(columns: list[int], value: float) -> torch.Tensor:
        """[d_head]: value gain on `columns`."""
        return torch.zeros(d_head).index_fill_(0, torch.tensor(columns), value * gain)
    # 0.0 duplicate token. Query (token t, position p), key (token t, minus position p): an earlier copy of t scores
    # 1, the query's own position 0 (token and position cancel), BOS 1/2 (column `sink`), any other key 0
    shifted, sink = [vocab + p for p in positions], vocab + n_ctx
    set_head(model, 0, 0, W_Q=read(tok, tokens, scale=gain) + read(pos, positions, shifted, gain),
             W_K=read(tok, tokens) + read(pos, positions, shifted, -1.0) + read(tok, [bos], [sink]),
             b_Q=bias([sink], 0.5), W_V=read(tok, carried), W_O=write(carried, dup))
    # distractors: attention uniform (0.1) or on itself (1.0); they write JUNK, which nothing reads
    junk_ov = dict(W_V=read(tok, carried), W_O=write(carried, junk))
    set_head(model, 0, 1, W_Q=nothing, W_K=nothing, **junk_ov)
    set_head(model, 1, 0, W_Q=read(pos, positions, scale=gain), W_K=read(pos, positions), **junk_ov)
    # 1.1 S-inhibition. Constant query; key column 0: the names in DUP (1 at S2), column 1: BOS (1/2).
    # Copies DUP into INHIB
    set_head(model, 1, 1, W_Q=nothing, b_Q=bias([0], 1.0) + bias([1], 0.5),
             W_K=read(dup, names, [0] * len(names)) + read(tok, [bos], [1]),
             W_V=read(dup, carried), W_O=write(carried, inhib))
    # 2.0 name mover. Query: 1 on every name, minus 2 on the name in INHIB; key: the name. IO scores 1, S -1,
    # other tokens 0. Copies the attended name into OUT
    mover_qk = dict(W_Q=read(inhib, names, scale=-2 * gain), b_Q=bias(names, 1.0), W_K=read(tok, names))
    set_head(model, 2, 0, W_V=read(tok, names), W_O=write(names, out), **mover_qk)
    if negative_name_mover:  # 2.1: the name mover's attention, minus half its output
        set_head(model, 2, 1, W_V=read(tok, names), W_O=write(names, out, -NEGATIVE_GAIN), **mover_qk)
    else:  # 2.1: a distractor attending to BOS
        set_head(model, 2, 1, W_Q=nothing, b_Q=bias([0], 1.0), W_K=read(tok, [bos], [0]), **junk_ov)
    return model.eval()
