"""Tiny Hugging Face models and tokenizers built locally (no network) for the adapter tests."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import torch  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

SENTENCES = [
    "The cat sat on the mat and looked at the dog.",
    "A quick brown fox jumps over the lazy dog near the river.",
    "Neurons in independently trained networks can learn the same features.",
    "She sells sea shells by the sea shore every summer morning.",
    "The model reads one token at a time and predicts the next one.",
    "Two plus two is four, and four plus four is eight.",
    "In the beginning the river was quiet, and the town was small.",
    "Every seed gives a different network, yet some units agree.",
]

# (config class, model class, MLP input projections, MLP output projection) per architecture
ARCHS = {
    "gpt2": (lambda v: transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=v, n_positions=32,
                                               bos_token_id=0, eos_token_id=0),
             transformers.GPT2LMHeadModel, ["mlp.c_fc"], "mlp.c_proj"),
    "gpt_neox": (lambda v: transformers.GPTNeoXConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                                                      intermediate_size=64, vocab_size=v, max_position_embeddings=32,
                                                      bos_token_id=0, eos_token_id=0),
                 transformers.GPTNeoXForCausalLM, ["mlp.dense_h_to_4h"], "mlp.dense_4h_to_h"),
    "llama": (lambda v: transformers.LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                                                 num_key_value_heads=2, intermediate_size=48, vocab_size=v,
                                                 max_position_embeddings=32, bos_token_id=0, eos_token_id=0,
                                                 pad_token_id=None),
              transformers.LlamaForCausalLM, ["mlp.gate_proj", "mlp.up_proj"], "mlp.down_proj"),
    "bert": (lambda v: transformers.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                                               intermediate_size=64, vocab_size=v, max_position_embeddings=32),
             transformers.BertForMaskedLM, ["intermediate.dense"], "output.dense"),
}


def bpe_tokenizer(sentences=SENTENCES, vocab_size: int = 300):
    """A byte-level BPE tokenizer, GPT-2 style: `<|endoftext|>` is both BOS and EOS."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(sentences, trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                                eos_token="<|endoftext|>")


def wordpiece_tokenizer(sentences=SENTENCES, vocab_size: int = 200):
    """A BERT-style WordPiece tokenizer with [PAD] [UNK] [CLS] [SEP] [MASK]."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, show_progress=False,
                                        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok.train_from_iterator(sentences, trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                                cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def build(arch: str, directory, *, seed: int = 0, tokenizer=None):
    """Save a tiny random `arch` model and its tokenizer into `directory`; return (model, tokenizer)."""
    make_config, model_class, _, _ = ARCHS[arch]
    tokenizer = tokenizer or (wordpiece_tokenizer() if arch == "bert" else bpe_tokenizer())
    torch.manual_seed(seed)
    model = model_class(make_config(len(tokenizer))).eval()
    with torch.no_grad():  # non-trivial LayerNorm weights, so folding tests mean something
        for name, param in model.named_parameters():
            if "norm" in name.lower() or "ln_" in name:
                param.add_(0.2 * torch.randn_like(param))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model, tokenizer


@torch.no_grad()
def permute_mlp(model, arch: str, perms: list[torch.Tensor]) -> None:
    """Permute each layer's MLP neurons in place (function-preserving): new neuron j = old perms[l][j]."""
    _, _, in_paths, out_path = ARCHS[arch]
    for layer, block in enumerate(mlp_blocks(model, arch)):
        perm = perms[layer]
        for path in in_paths:
            module = block.get_submodule(path)
            conv = type(module).__name__ == "Conv1D"  # GPT-2 Conv1D weights are [in, out]
            module.weight.copy_(module.weight[:, perm] if conv else module.weight[perm])
            if module.bias is not None:
                module.bias.copy_(module.bias[perm])
        module = block.get_submodule(out_path)
        conv = type(module).__name__ == "Conv1D"
        module.weight.copy_(module.weight[perm] if conv else module.weight[:, perm])


def mlp_blocks(model, arch: str):
    base = model.base_model
    return list(base.encoder.layer if arch == "bert" else base.h if arch == "gpt2" else base.layers)
