"""Token rows for existing models: LongTensor [rows, seq_len] from text files, `.npy` arrays or
`datasets` directories, each row starting with BOS; token filters (BOS, pad, newline) and the
check that every compared model reads the stream with one tokenizer."""

from ._sources import (bos_token_id_for, check_same_tokenizer, drop_token_ids, keep_mask, pack_rows,
                       tokens_from_dataset, tokens_from_numpy, tokens_from_text_files)

__all__ = ["tokens_from_dataset", "tokens_from_text_files", "tokens_from_numpy", "pack_rows", "bos_token_id_for",
           "drop_token_ids", "keep_mask", "check_same_tokenizer"]
