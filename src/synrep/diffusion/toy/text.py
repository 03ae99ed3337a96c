"""Tokenizer and text encoder of the toy generator; both work offline.

The tokenizer is a word-level ``tokenizers`` model wrapped as a transformers
``PreTrainedTokenizerFast``, so a pipeline folder saves and loads it with the usual
``save_pretrained`` / ``from_pretrained``. The text encoder is a small ``CLIPTextModel``.
"""

from __future__ import annotations

from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
# CLIPTextModel pools at the EOS token; an eos id of 2 selects its legacy argmax path, so EOS is 3
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)


def build_tokenizer(words: list[str], max_length: int) -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in words:
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(WordLevel(vocab, unk_token=UNK))
    core.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()]
    )
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        model_max_length=max_length,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
    )


def build_text_encoder(tokenizer: PreTrainedTokenizerFast, hidden: int, layers: int, heads: int,
                       max_length: int) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        projection_dim=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=max_length,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return CLIPTextModel(config)


def tokenize(tokenizer, prompts: list[str]):
    """Token ids and attention mask, padded and truncated to the tokenizer's max length."""
    batch = tokenizer(
        prompts,
        padding="max_length",
        truncation=True,
        max_length=tokenizer.model_max_length,
        return_tensors="pt",
    )
    return batch.input_ids, batch.attention_mask
