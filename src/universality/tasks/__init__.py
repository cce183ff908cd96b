"""Datasets with known ground truth: the synthetic language (`SyntheticLanguage`) and group
composition tasks (`composition_task`, `word_task`), and the indirect-object task in the language (`IOITask`)
and in English for a real tokenizer (`TextIOITask`)."""

from ._group_tasks import GroupTask, composition_task, parse_word, word_task
from ._synthetic_language import LanguageSample, SyntheticLanguage
from ._ioi import IOIPrompts, IOITask, ioi_metrics, logit_difference
from ._ioi_text import IOI_NAMES, IOI_TEMPLATES, TextIOITask

__all__ = ["SyntheticLanguage", "LanguageSample", "GroupTask", "composition_task", "word_task", "parse_word",
           "IOITask", "IOIPrompts", "ioi_metrics", "logit_difference", "TextIOITask", "IOI_TEMPLATES", "IOI_NAMES"]
