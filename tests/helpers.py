"""Test helpers that are not fixtures."""

from __future__ import annotations


def tiny_clip_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A small CLIP BPE vocabulary: bytes-level letters, end-of-word letters, a few merges and
    the special tokens, enough to tokenise lower-case English captions."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab: dict[str, int] = {}
    for ch in letters + "0123456789,.-'":
        vocab.setdefault(ch, len(vocab))
    for ch in letters + "0123456789,.-'":
        vocab.setdefault(ch + "</w>", len(vocab))
    merges = [("r", "e"), ("re", "d</w>")]
    for token in ("re", "red</w>"):
        vocab.setdefault(token, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(special, len(vocab))
    return vocab, merges
