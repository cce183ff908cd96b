"""Datasets with known ground truth: the synthetic language (`SyntheticLanguage`)."""

from ._synthetic_language import LanguageSample, SyntheticLanguage

__all__ = ["SyntheticLanguage", "LanguageSample"]
