"""An indirect-object identification (IOI) task in the synthetic language, after Wang et al. 2022
("Interpretability in the wild: a circuit for indirect object identification in GPT-2 small").

The tokens of one hidden class of the language (`IOIConfig.names_class`) are the *names*; the tokens
of every other class are the *words*. A template is `template_len` slots drawn once from
`template_seed`: two name slots N1 < N2 near the start, one later slot S2, and words everywhere else
(the last slot, the final position "to", is a word). A prompt fills a template with two distinct
names: the subject S in N1 or N2 (the other holds the indirect object IO) and again in S2; the
answer, the token after the final position, is IO. The English analogue:

    When  Mary(N1) and John(N2) went to the store , John(S2) gave a drink to  -> Mary

Prompts come in both orders (ABBA: IO first; BABA: S first), half each. The corrupted prompt puts IO
in S2, so the other name is now the answer: the logit difference IO - S flips its sign (the
corruption of Nanda's attribution-patching demo).

| name                 | shape / type                 |                                                  |
|----------------------|------------------------------|--------------------------------------------------|
| `IOIPrompts.clean`   | [prompts, 1 + template_len]  | BOS, then the filled template                    |
| `.corrupt`           | [prompts, 1 + template_len]  | clean with S2 set to IO                          |
| `.io`, `.s`          | [prompts]                    | the two names' token ids                         |
| `.io_pos`, `.s1_pos`, `.s2_pos` | [prompts]         | their positions (the final position is `end` = last) |
| `training_rows`      | [rows, seq_len]              | BOS, then prompt, IO, prompt, IO, ... cut at seq_len |

>>> from universality.config import IOIConfig, LanguageConfig
>>> task = IOITask(SyntheticLanguage(LanguageConfig(seq_len=32, position_period=8, repeat_len=4)), IOIConfig())
>>> prompts = task.prompts(6, seed=0)
>>> prompts.clean.shape, bool((prompts.clean[range(6), prompts.s2_pos] == prompts.s).all())
(torch.Size([6, 11]), True)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import IOIConfig
from ..errors import UniversalityError
from ._synthetic_language import SyntheticLanguage

__all__ = ["IOITask", "IOIPrompts", "fill_templates", "logit_difference", "ioi_metrics"]


@dataclass(frozen=True)
class IOIPrompts:
    """A batch of IOI prompts with their corrupted twins and the positions of each name (module docstring)."""

    clean: torch.Tensor  # [prompts, pos]
    corrupt: torch.Tensor  # [prompts, pos]
    io: torch.Tensor  # [prompts]
    s: torch.Tensor  # [prompts]
    io_pos: torch.Tensor  # [prompts]
    s1_pos: torch.Tensor  # [prompts]
    s2_pos: torch.Tensor  # [prompts]
    template: torch.Tensor  # [prompts], the template index

    @property
    def end(self) -> int:
        """The final position, where IO is predicted."""
        return self.clean.shape[1] - 1

    def __len__(self) -> int:
        return self.clean.shape[0]


class IOITask:
    """IOI prompts in `language`, names = tokens of class `config.names_class` (or the token ids `names`).

    Attributes
    ----------
    names : LongTensor [n_names], the name tokens
    words : LongTensor [n_words], the other class tokens (brackets, markers and BOS are neither)
    templates : LongTensor [templates, template_len], words in place, -1 in the name slots
    slots : LongTensor [templates, 3], the template positions (after BOS, so 1-based) of N1, N2, S2
    """

    def __init__(self, language: SyntheticLanguage, config: IOIConfig = IOIConfig(), *,
                 names: list[int] | torch.Tensor | None = None):
        self.language, self.config = language, config
        lc = language.config
        class_tokens = torch.arange(1, 1 + lc.n_classes * lc.tokens_per_class)  # every class token id
        if names is None:
            if config.names_class >= lc.n_classes:
                raise UniversalityError(f"names_class {config.names_class} is not a class of the language, which has "
                                        f"{lc.n_classes} (0..{lc.n_classes - 1}); choose one of those")
            names = class_tokens[(class_tokens - 1) // lc.tokens_per_class == config.names_class]
        names = torch.as_tensor(names, dtype=torch.long).flatten().unique()
        if len(names) < 2 or int(names.min()) < 1 or int(names.max()) > int(class_tokens[-1]):
            shown = f"{names.tolist()}" if len(names) <= 6 else f"{len(names)} ids in [{int(names.min())}, {int(names.max())}]"
            raise UniversalityError(f"IOI names must be at least 2 class tokens of the language, ids in [1, "
                                    f"{int(class_tokens[-1])}], got {shown}; pick ids of one class or set names_class")
        self.names = names
        self.words = class_tokens[~torch.isin(class_tokens, names)]
        if len(self.words) == 0:
            raise UniversalityError("every class token is a name, so the templates have no words; "
                                    "leave at least one other class")
        if 1 + config.template_len + 1 > lc.seq_len:
            raise UniversalityError(f"template_len {config.template_len} does not fit seq_len {lc.seq_len} "
                                    f"(BOS + template + answer); use template_len <= {lc.seq_len - 2}")
        self.templates, self.slots = self._make_templates()

    def _make_templates(self) -> tuple[torch.Tensor, torch.Tensor]:
        """1. N1 in the first three slots, one word, then N2 ("A and B");
        2. S2 at least two slots after N2 and two before the end (the subject again, then a verb ...);
        3. words drawn uniformly (with replacement) for every other slot, the last one included."""
        length = self.config.template_len
        generator = torch.Generator().manual_seed(self.config.template_seed)
        templates = self.words[torch.randint(len(self.words), (self.config.templates, length), generator=generator)]
        slots = torch.empty(self.config.templates, 3, dtype=torch.long)
        for k in range(self.config.templates):
            n1 = int(torch.randint(min(3, length - 5), (1,), generator=generator))
            n2 = n1 + 2
            s2 = int(torch.randint(n2 + 2, length - 1, (1,), generator=generator))
            templates[k, [n1, n2, s2]] = -1
            slots[k] = torch.tensor([n1, n2, s2]) + 1  # + 1: BOS comes first
        return templates, slots

    def prompts(self, count: int, *, seed: int) -> IOIPrompts:
        """`count` prompts [count, 1 + template_len]: template, names and order drawn with `seed`."""
        return fill_templates(self.templates, self.slots, self.names, self.language.bos, count, seed=seed)

    def training_rows(self, rows: int, *, seed: int) -> torch.Tensor:
        """Rows [rows, seq_len] for next-token training: BOS, then prompts each followed by its answer,
        back to back, the last one cut at seq_len (so IO is a next-token target after every final position)."""
        per_row = -(-(self.language.config.seq_len - 1) // (self.config.template_len + 1))  # ceil
        prompts = self.prompts(rows * per_row, seed=seed)
        answered = torch.cat([prompts.clean[:, 1:], prompts.io[:, None]], dim=1)  # [rows * per_row, len + 1]
        body = answered.reshape(rows, -1)[:, : self.language.config.seq_len - 1]
        return torch.cat([torch.full((rows, 1), self.language.bos), body], dim=1)


def fill_templates(templates: torch.Tensor, slots: torch.Tensor, names: torch.Tensor, bos: int | None, count: int, *,
                   seed: int) -> IOIPrompts:
    """`count` prompts [count, (1 if bos is not None) + length] from templates [templates, length] (-1 in the name
    slots) whose N1, N2, S2 positions (counting BOS) are slots [templates, 3]: template, two distinct names
    [names] and the order (ABBA or BABA, half each) drawn with `seed`; the corrupted twin has IO in S2."""
    if count < 1:
        raise UniversalityError(f"count must be at least 1, got {count}")
    generator = torch.Generator().manual_seed(seed)
    template = torch.randint(len(templates), (count,), generator=generator)  # [count]
    pair = torch.rand(count, len(names), generator=generator).argsort(dim=1)[:, :2]  # two distinct names
    io, s = names[pair[:, 0]], names[pair[:, 1]]  # [count] each
    abba = torch.rand(count, generator=generator) < 0.5  # IO in N1, S in N2 (else BABA)
    chosen = slots[template]  # [count, 3]
    io_pos = torch.where(abba, chosen[:, 0], chosen[:, 1])
    s1_pos = torch.where(abba, chosen[:, 1], chosen[:, 0])
    s2_pos = chosen[:, 2]
    rows = torch.arange(count)
    clean = templates[template].clone()  # [count, length]
    if bos is not None:
        clean = torch.cat([torch.full((count, 1), bos), clean], dim=1)
    clean[rows, io_pos], clean[rows, s1_pos], clean[rows, s2_pos] = io, s, s
    corrupt = clean.clone()
    corrupt[rows, s2_pos] = io
    return IOIPrompts(clean, corrupt, io, s, io_pos, s1_pos, s2_pos, template)


def logit_difference(logits: torch.Tensor, prompts: IOIPrompts) -> torch.Tensor:
    """[prompts]: logit of IO minus logit of S at the final position, from logits [prompts, pos, vocab]."""
    final = logits[:, prompts.end]  # [prompts, vocab]
    rows = torch.arange(len(prompts))
    return final[rows, prompts.io.to(final.device)] - final[rows, prompts.s.to(final.device)]


@torch.no_grad()
def ioi_metrics(adapter, prompts: IOIPrompts) -> dict[str, float]:
    """The task scores of a model (any adapter with logits) on clean prompts:
    `accuracy` (IO is the top token over the whole vocabulary at the final position), `name_accuracy`
    (IO beats S), `logit_diff` (mean IO - S logit) and `logit_diff_corrupt` (the same on corrupted
    prompts, still IO - S: negative when the model follows the names)."""
    if adapter.vocab_size <= int(max(prompts.io.max(), prompts.s.max())):
        raise UniversalityError(f"{adapter.name} has {adapter.vocab_size} tokens, the IOI names reach id "
                                f"{int(max(prompts.io.max(), prompts.s.max()))}; build the task from the model's language")
    logits = adapter.logits(prompts.clean).float()  # [prompts, pos, vocab]
    diff = logit_difference(logits, prompts)
    top = logits[:, prompts.end].argmax(dim=-1).cpu()
    corrupt = logit_difference(adapter.logits(prompts.corrupt).float(), prompts)
    return {"accuracy": float((top == prompts.io).float().mean()), "name_accuracy": float((diff > 0).float().mean()),
            "logit_diff": float(diff.mean()), "logit_diff_corrupt": float(corrupt.mean())}
