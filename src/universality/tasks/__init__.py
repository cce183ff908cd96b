"""Datasets with known ground truth: the synthetic language (`SyntheticLanguage`) and group
composition tasks (`composition_task`, `word_task`)."""

from ._group_tasks import GroupTask, composition_task, parse_word, word_task
from ._synthetic_language import LanguageSample, SyntheticLanguage
from ._token_datasets import (bos_token_id_for, check_same_tokenizer, drop_token_ids, keep_mask, pack_rows,
                              tokens_from_dataset, tokens_from_numpy, tokens_from_text_files)

__all__ = ["SyntheticLanguage", "LanguageSample", "GroupTask", "composition_task", "word_task", "parse_word"]
__all__ += ["tokens_from_dataset", "tokens_from_text_files", "tokens_from_numpy", "pack_rows", "bos_token_id_for",
            "drop_token_ids", "keep_mask", "check_same_tokenizer"]  # token datasets for real models
