"""Datasets with known ground truth: the synthetic language (`SyntheticLanguage`) and group
composition tasks (`composition_task`, `word_task`), and the indirect-object task in the language (`IOITask`)."""

from ._group_tasks import GroupTask, composition_task, parse_word, word_task
from ._synthetic_language import LanguageSample, SyntheticLanguage
from ._ioi import IOIPrompts, IOITask, ioi_metrics, logit_difference

__all__ = ["SyntheticLanguage", "LanguageSample", "GroupTask", "composition_task", "word_task", "parse_word",
           "IOITask", "IOIPrompts", "ioi_metrics", "logit_difference"]
