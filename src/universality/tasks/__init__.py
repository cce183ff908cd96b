"""Datasets with known ground truth: the synthetic language (`SyntheticLanguage`) and group
composition tasks (`composition_task`, `word_task`)."""

from ._group_tasks import GroupTask, composition_task, parse_word, word_task
from ._synthetic_language import LanguageSample, SyntheticLanguage

__all__ = ["SyntheticLanguage", "LanguageSample", "GroupTask", "composition_task", "word_task", "parse_word"]
