"""Indirect-object identification prompts in English for a real tokenizer (Wang et al. 2022, "Interpretability in
the wild"), as the same `IOIPrompts` the synthetic task gives, so every circuit function reads them unchanged.

A template is a sentence with three name slots, `{A}` and `{B}` (N1, N2) and `{S}` (S2), ending before the
answer, e.g. "When {A} and {B} went to the store, {S} gave a drink to" -> IO. Filled ABBA (IO in N1) or BABA
(S in N1), half each; the corrupted prompt puts IO in S2 (as `IOITask`), so the logit difference IO - S flips.

Names are the `names` whose " Name" is one token of the tokenizer in running text; the answer's token is that
token. Each template is tokenized with every name in every slot and must give the same token count and the
same tokens around the names (else a one-line error); a batch holds one length, so only the templates of the
most common length are kept (`templates_`).

| attribute        | shape / type                 |                                                      |
|------------------|------------------------------|------------------------------------------------------|
| `names_`         | [names]                      | the single-token names' token ids                    |
| `name_texts_`    | list[str]                    | the same names as text                               |
| `templates_`     | list[str]                    | the templates kept (one token length)                |
| `skeletons_`     | [templates, length]          | their tokens, -1 in the name slots (no BOS)          |
| `slots_`         | [templates, 3]               | positions of N1, N2, S2 in a prompt (BOS counted)    |

The tokenizer is a Hugging Face tokenizer (`tokenizer(texts, add_special_tokens=False)["input_ids"]`); BOS is
`bos_token_id` (default: the tokenizer's BOS, else its EOS, as GPT-2 prompts start with <|endoftext|>).
"""

from __future__ import annotations

from collections import Counter

import torch

from ..errors import UniversalityError
from ._ioi import IOIPrompts, fill_templates

__all__ = ["TextIOITask", "IOI_TEMPLATES", "IOI_NAMES"]

# one sentence shape, so that GPT-2-like tokenizers give every template one length (places and objects are
# common single-token words); Wang et al.'s BABA templates vary the shape as well
IOI_TEMPLATES = (
    "When {A} and {B} went to the store, {S} gave a drink to",
    "When {A} and {B} went to the park, {S} gave a ball to",
    "After {A} and {B} went to the school, {S} gave a book to",
    "When {A} and {B} went to the office, {S} gave a letter to",
    "After {A} and {B} went to the house, {S} gave a gift to",
    "When {A} and {B} went to the hospital, {S} gave a flower to",
    "After {A} and {B} went to the station, {S} gave a bag to",
    "When {A} and {B} went to the beach, {S} gave a hat to",
)

# the first names of Wang et al.'s IOI dataset
IOI_NAMES = (
    "Michael Christopher Jessica Matthew Ashley Jennifer Joshua Amanda Daniel David James Robert John Joseph Andrew "
    "Ryan Brandon Jason Justin Sarah William Jonathan Stephanie Brian Nicole Nicholas Anthony Heather Eric Elizabeth "
    "Adam Megan Melissa Kevin Steven Thomas Timothy Christina Kyle Rachel Laura Lauren Amber Brittany Danielle "
    "Richard Kimberly Jeffrey Amy Crystal Michelle Tiffany Jeremy Benjamin Mark Emily Aaron Charles Rebecca Jacob "
    "Stephen Patrick Sean Erin Jamie Kelly Samantha Nathan Sara Dustin Paul Angela Tyler Scott Katherine Andrea "
    "Gregory Erica Mary Travis Lisa Kenneth Bryan Lindsey Kristen Jose Alexander Jesse Katie Lindsay Shannon "
    "Vanessa Courtney Christine Alicia Cody Allison Bradley Samuel"
).split()

_CONTEXT = "and"  # a name is tokenized after this word, as it reads inside a template


class TextIOITask:
    """IOI prompts in English for `tokenizer` (module docstring).

    Parameters
    ----------
    tokenizer : a Hugging Face tokenizer
    bos_token_id : int or None, default=the tokenizer's BOS, else its EOS; None when it has neither
    templates : sequence of str with `{A}`, `{B}`, `{S}` once each, default=`IOI_TEMPLATES`
    names : sequence of str, default=`IOI_NAMES`

    >>> from tokenizers import Tokenizer, models, pre_tokenizers
    >>> from transformers import PreTrainedTokenizerFast
    >>> words = "<bos> <unk> When and went to the store , gave a drink Mary John Anna".split()
    >>> tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    >>> tok.pre_tokenizer = pre_tokenizers.Whitespace()
    >>> tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", unk_token="<unk>")
    >>> task = TextIOITask(tok, templates=IOI_TEMPLATES[:1])
    >>> prompts = task.prompts(4, seed=0)
    >>> task.name_texts_, task.tokenizer.decode(prompts.clean[0]), task.tokenizer.decode(prompts.io[0])
    (['John', 'Mary'], '<bos> When John and Mary went to the store , Mary gave a drink to', 'John')
    """

    def __init__(self, tokenizer, *, bos_token_id: int | None = None, templates=IOI_TEMPLATES, names=IOI_NAMES):
        self.tokenizer = tokenizer
        if bos_token_id is None:
            bos_token_id = next((i for i in (getattr(tokenizer, "bos_token_id", None),
                                             getattr(tokenizer, "eos_token_id", None)) if isinstance(i, int)), None)
        self.bos_token_id = bos_token_id
        self.name_texts_, self.names_ = self._single_token_names(list(names))
        shapes = {template: self._skeleton(template) for template in dict.fromkeys(templates)}
        length = Counter(len(skeleton) for skeleton, _ in shapes.values()).most_common(1)[0][0]
        self.templates_ = [template for template, (skeleton, _) in shapes.items() if len(skeleton) == length]
        self.skeletons_ = torch.tensor([shapes[t][0] for t in self.templates_])  # [templates, length]
        self.slots_ = torch.tensor([shapes[t][1] for t in self.templates_]) + (bos_token_id is not None)

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def _single_token_names(self, names: list[str]) -> tuple[list[str], torch.Tensor]:
        """The names that are one token after `_CONTEXT` ("and Mary" = "and" + one token), and those tokens."""
        context, unknown = self._ids([_CONTEXT])[0], getattr(self.tokenizer, "unk_token_id", None)
        kept, ids = [], []
        for name, tokens in zip(names, self._ids([f"{_CONTEXT} {name}" for name in names])):
            if len(tokens) == len(context) + 1 and tokens[:-1] == context and tokens[-1] not in (*ids, unknown):
                kept.append(name)
                ids.append(tokens[-1])
        if len(kept) < 2:
            shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            raise UniversalityError(f"the tokenizer has {len(kept)} single-token names among the {len(names)} given "
                                    f"({shown}); IOI needs at least 2: pass names= that its vocabulary holds whole")
        return kept, torch.tensor(ids)

    def _skeleton(self, template: str) -> tuple[list[int], list[int]]:
        """(tokens with -1 in the name slots, [N1, N2, S2] token positions) of `template`, the same for every name:
        filled with each name n as A and S and the next name as B, n must appear exactly at N1 and S2."""
        if not isinstance(template, str) or any(template.count(f"{{{k}}}") != 1 for k in "ABS"):
            raise UniversalityError(f"an IOI template holds {{A}}, {{B}} and {{S}} once each, got {template!r}")
        names, texts = self.name_texts_, self.name_texts_[1:] + self.name_texts_[:1]
        filled = self._ids([template.format(A=a, B=b, S=a) for a, b in zip(names, texts)])
        shapes = []
        for a, b, tokens in zip(self.names_.tolist(), self.names_.roll(-1).tolist(), filled):
            at_a = [i for i, t in enumerate(tokens) if t == a]
            at_b = [i for i, t in enumerate(tokens) if t == b]
            skeleton = [-1 if t in (a, b) else t for t in tokens]
            shapes.append((skeleton, [at_a[0], at_b[0], at_a[-1]]) if len(at_a) == 2 and len(at_b) == 1 else None)
        for name, shape in zip(names, shapes):
            if shape is None or shape != shapes[0]:
                got = "does not hold each name token where its slot is" if shape is None or shapes[0] is None \
                    else f"gives {len(shape[0])} tokens, not {len(shapes[0][0])} as with {names[0]!r}"
                raise UniversalityError(f"IOI template {template!r} filled with {name!r} {got}; the name merges "
                                        "with the text around it: edit the template or leave the name out")
        return shapes[0]

    def prompts(self, count: int, *, seed: int) -> IOIPrompts:
        """`count` prompts [count, (BOS) + length]: template, names and order drawn with `seed`."""
        return fill_templates(self.skeletons_, self.slots_, self.names_, self.bos_token_id, count, seed=seed)
