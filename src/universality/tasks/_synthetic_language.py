"""A synthetic language whose latent structure is known, so analyses can be checked against it.

Every row is `seq_len` tokens. Position 0 is BOS; every later position that is a multiple of
`position_period` holds the position marker of its bucket; every other ("content") position
holds a bracket or a class token:

1. with probability `p_open`, an open bracket of a uniformly drawn type (pushed on a stack);
2. else, with probability `p_close` when a bracket is open, the close of the innermost one;
3. else a class token: the hidden Markov state advances one step (sparse random transition
   matrix) and emits one of its own `tokens_per_class` tokens (Zipf-like, random ranks).

Then, with probability `p_repeat`, a row copies a span of `repeat_len` content tokens to later
content positions (position markers stay where they are), so induction heads can form.

The grammar (transitions, emissions) comes from `config.grammar_seed` only: every model seed
sees the same language. `sample(rows, seed=...)` draws rows from it.

Vocabulary, in id order:

    id                                       name        kind
    0                                        "BOS"       BOS
    1 + c * tokens_per_class + t             "c{c}_t{t}" class token t of class c
    open_base + b                            "({b}"      open bracket of type b
    open_base + n_bracket_types + b          "){b}"      close bracket of type b
    marker_base + k                          "pos{k}"    position marker of bucket k = pos // period

Bucket 0 holds position 0, which is always BOS, so "pos0" is in the vocabulary but never emitted.

Labels, each `[rows, seq_len]` int64:

    "class"      hidden state for class tokens (0 .. n_classes-1); else a code per kind:
                 n_classes = BOS, n_classes + 1 = bracket, n_classes + 2 = position marker
    "position"   the position 0 .. seq_len-1
    "prev_token" the token at position - 1; -1 at position 0
    "depth"      bracket nesting depth after the token, recomputed from the tokens as written:
                 depth_t = max(0, depth_{t-1} + is_open_t - is_close_t), so "( a )" -> 1 1 0
    "in_repeat"  1 for tokens written by the repeated-span copy, else 0

>>> lang = SyntheticLanguage(LanguageConfig(seq_len=32, position_period=8, repeat_len=4))
>>> sample = lang.sample(5, seed=0)
>>> sample.tokens.shape, sorted(sample.labels)
(torch.Size([5, 32]), ['class', 'depth', 'in_repeat', 'position', 'prev_token'])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import LanguageConfig
from ..errors import UniversalityError

__all__ = ["SyntheticLanguage", "LanguageSample"]

ZIPF_EXPONENT = 1.0  # emission probability of the rank-r token is proportional to 1 / r**exponent


@dataclass
class LanguageSample:
    """Rows of the synthetic language with their ground-truth labels.

    tokens : LongTensor [rows, seq_len]
    labels : dict of LongTensor [rows, seq_len], keys "class", "position", "prev_token",
        "depth", "in_repeat" (see the module docstring for each code).
    """

    tokens: torch.Tensor
    labels: dict[str, torch.Tensor]


class SyntheticLanguage:
    """A hidden-Markov language with brackets, position markers and repeated spans.

    Attributes
    ----------
    config : LanguageConfig
    vocab_size : int
    bos : int, always 0
    token_names : list[str], one readable name per token id
    transitions : FloatTensor [n_classes, n_classes], row s = p(next hidden state | state s)
    emissions : FloatTensor [n_classes, tokens_per_class], row c = p(token t | class c)
    token_class : LongTensor [vocab_size], the "class" label code of each token id
    """

    def __init__(self, config: LanguageConfig):
        self.config = config
        _check_config(config)
        n_classes, per_class = config.n_classes, config.tokens_per_class
        self.n_buckets = math.ceil(config.seq_len / config.position_period)
        self.bos = 0
        self.open_base = 1 + n_classes * per_class
        self.close_base = self.open_base + config.n_bracket_types
        self.marker_base = self.close_base + config.n_bracket_types
        self.vocab_size = self.marker_base + self.n_buckets
        self.token_names = (
            ["BOS"]
            + [f"c{c}_t{t}" for c in range(n_classes) for t in range(per_class)]
            + [f"({b}" for b in range(config.n_bracket_types)]
            + [f"){b}" for b in range(config.n_bracket_types)]
            + [f"pos{k}" for k in range(self.n_buckets)]
        )
        self.token_class = torch.cat([
            torch.tensor([n_classes]),
            torch.arange(n_classes).repeat_interleave(per_class),
            torch.full((2 * config.n_bracket_types,), n_classes + 1),
            torch.full((self.n_buckets,), n_classes + 2),
        ])
        self.transitions, self.emissions = _grammar(config)

    def sample(self, rows: int, *, seed: int) -> LanguageSample:
        """Draw `rows` rows; the same seed gives the same rows.

        Returns a `LanguageSample` with tokens `[rows, seq_len]` and labels `[rows, seq_len]`.
        """
        if rows < 1:
            raise UniversalityError(f"rows must be at least 1, got {rows}")
        generator = torch.Generator().manual_seed(seed)
        tokens = self._generate(rows, generator)
        in_repeat = self._copy_spans(tokens, generator)
        labels = {
            "class": self.token_class[tokens],
            "position": torch.arange(self.config.seq_len).expand(rows, -1).clone(),
            "prev_token": torch.cat([torch.full((rows, 1), -1), tokens[:, :-1]], dim=1),
            "depth": self._depth(tokens),
            "in_repeat": in_repeat,
        }
        return LanguageSample(tokens=tokens, labels=labels)

    def content_positions(self) -> torch.Tensor:
        """LongTensor [n_content]: positions that hold brackets or class tokens (not BOS, not markers)."""
        positions = torch.arange(1, self.config.seq_len)
        return positions[positions % self.config.position_period != 0]

    def _generate(self, rows: int, generator: torch.Generator) -> torch.Tensor:
        """Tokens [rows, seq_len] from the grammar, before any span is repeated."""
        cfg = self.config
        seq_len, per_class, n_types = cfg.seq_len, cfg.tokens_per_class, cfg.n_bracket_types
        row = torch.arange(rows)
        tokens = torch.empty(rows, seq_len, dtype=torch.long)
        tokens[:, 0] = self.bos
        state = torch.randint(cfg.n_classes, (rows,), generator=generator)  # [rows]
        stack = torch.zeros(rows, seq_len, dtype=torch.long)  # [rows, max depth]: open types
        depth = torch.zeros(rows, dtype=torch.long)  # [rows]
        transition_cdf = self.transitions.cumsum(dim=1)  # [n_classes, n_classes]
        emission_cdf = self.emissions.cumsum(dim=1)  # [n_classes, tokens_per_class]
        for pos in range(1, seq_len):
            if pos % cfg.position_period == 0:
                tokens[:, pos] = self.marker_base + pos // cfg.position_period
                continue
            # the same draws at every content position, whichever branch a row takes
            u_open, u_close, u_next, u_emit = torch.rand(4, rows, generator=generator)
            open_type = torch.randint(max(n_types, 1), (rows,), generator=generator)
            is_open = (u_open < cfg.p_open) & (n_types > 0)
            is_close = ~is_open & (depth > 0) & (u_close < cfg.p_close)
            is_class = ~is_open & ~is_close
            # 3) class token: advance the hidden state, then emit from it
            state = torch.where(is_class, _draw(transition_cdf[state], u_next), state)
            class_token = 1 + state * per_class + _draw(emission_cdf[state], u_emit)
            # 1) / 2) brackets: push the opened type, pop the innermost for a close
            close_type = stack[row, (depth - 1).clamp(min=0)]
            stack[row[is_open], depth[is_open]] = open_type[is_open]
            depth = depth + is_open.long() - is_close.long()
            tokens[:, pos] = torch.where(
                is_open, self.open_base + open_type,
                torch.where(is_close, self.close_base + close_type, class_token))
        return tokens

    def _copy_spans(self, tokens: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Copy one earlier span of content tokens later in some rows (in place).

        1. content positions C (markers excluded); span = `repeat_len` consecutive entries of C;
        2. source start a ~ U[0, |C| - 2L], destination start b ~ U[a + L, |C| - L];
        3. tokens[C[b + i]] = tokens[C[a + i]] for i < L, in rows drawn with prob `p_repeat`.

        Returns in_repeat, LongTensor [rows, seq_len], 1 at the written positions.
        """
        rows, span = tokens.shape[0], self.config.repeat_len
        content = self.content_positions()  # [n_content]
        u_repeat, u_source, u_dest = torch.rand(3, rows, generator=generator)
        source = (u_source * (len(content) - 2 * span + 1)).long()  # [rows], a
        room = len(content) - span - (source + span) + 1  # [rows], choices for b
        dest = source + span + (u_dest * room).long()  # [rows], b
        offsets = torch.arange(span)
        repeating = torch.nonzero(u_repeat < self.config.p_repeat).squeeze(1)  # [repeating]
        source_pos = content[source[repeating, None] + offsets]  # [repeating, span]
        dest_pos = content[dest[repeating, None] + offsets]  # [repeating, span]
        tokens[repeating[:, None], dest_pos] = tokens[repeating[:, None], source_pos]
        in_repeat = torch.zeros_like(tokens)
        in_repeat[repeating[:, None], dest_pos] = 1
        return in_repeat

    def _depth(self, tokens: torch.Tensor) -> torch.Tensor:
        """Depth [rows, seq_len] after each token: opens minus closes, clamped at 0 at every step."""
        n_types = self.config.n_bracket_types
        step = ((tokens >= self.open_base) & (tokens < self.close_base)).long() - (
            (tokens >= self.close_base) & (tokens < self.close_base + n_types)).long()
        depth = torch.zeros_like(tokens)
        running = torch.zeros(tokens.shape[0], dtype=torch.long)
        for pos in range(tokens.shape[1]):
            running = (running + step[:, pos]).clamp(min=0)
            depth[:, pos] = running
        return depth


def _draw(cdf: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Index [rows] drawn from per-row distributions given by cdf [rows, k] and uniforms u [rows]."""
    index = torch.searchsorted(cdf, u[:, None]).squeeze(1)
    return index.clamp(max=cdf.shape[1] - 1)  # rounding can leave cdf[-1] just below u


def _grammar(config: LanguageConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Transitions [n_classes, n_classes] and emissions [n_classes, tokens_per_class] from grammar_seed.

    1. each state may move to about a third of the states (at least 2): state s + 1 (so the
       chain visits every state) plus random others, with Dirichlet(1) weights;
    2. each class emits its own tokens with Zipf-like weights 1 / rank, ranks permuted at random.
    """
    generator = torch.Generator().manual_seed(config.grammar_seed)
    n, per_class = config.n_classes, config.tokens_per_class
    successors = max(2, math.ceil(n / 3))
    allowed = torch.zeros(n, n, dtype=torch.bool)
    for state in range(n):
        allowed[state, (state + 1) % n] = True
        others = torch.randperm(n, generator=generator)[: successors - 1]
        allowed[state, others] = True
    weights = -torch.rand(n, n, generator=generator).log()  # Exponential(1): Dirichlet(1) after norm
    transitions = torch.where(allowed, weights, torch.zeros(()))
    transitions = transitions / transitions.sum(dim=1, keepdim=True)
    ranks = torch.stack([torch.randperm(per_class, generator=generator) for _ in range(n)])
    emissions = 1.0 / (ranks + 1.0) ** ZIPF_EXPONENT  # [n_classes, tokens_per_class]
    emissions = emissions / emissions.sum(dim=1, keepdim=True)
    return transitions, emissions


def _check_config(config: LanguageConfig) -> None:
    """Raise on combinations the per-field limits of `LanguageConfig` cannot catch."""
    n_markers = (config.seq_len - 1) // config.position_period
    n_content = config.seq_len - 1 - n_markers
    if n_content < 2 * config.repeat_len:
        raise UniversalityError(
            f"repeat_len {config.repeat_len} is too long: seq_len {config.seq_len} with "
            f"position_period {config.position_period} leaves {n_content} content positions, room "
            f"for two spans of at most {n_content // 2}; lower repeat_len or raise seq_len")
    if config.n_bracket_types > 0 and config.p_open >= 1:
        raise UniversalityError(
            f"p_open {config.p_open} leaves no class tokens; choose p_open < 1 "
            "(or n_bracket_types = 0 to turn brackets off)")
