"""Stable Diffusion pipelines with random weights, built locally (no hub): the real diffusers and
transformers classes (UNet2DConditionModel, AutoencoderKL, CLIPTextModel, CLIPTokenizer) at a
chosen size, for tests and benchmarks of the code path that real SD weights take.

- ``tiny``: the tests' pipeline (64 px images, 8 px latents), seconds on a CPU;
- ``small``: an SD-like layout at a quarter of SD's width (128 px images), for CPU benchmarks;
- ``sd15``: SD v1.5's architecture (UNet 320-640-1280-1280 with 768-dim cross-attention, the
  ViT-L/14 text encoder's size, the 4-level VAE, 512 px): timing only, on a GPU.

The tokenizer is a tiny CLIP BPE vocabulary (lower-case letters, digits and a few merges): the text
encoder's cost does not depend on the vocabulary size.
"""

from __future__ import annotations

SHAPES = ("tiny", "small", "sd15")


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


def random_sd_pipeline(shape: str = "tiny", seed: int = 0):
    """A ``StableDiffusionPipeline`` of ``shape`` (see the module doc) with seeded random weights."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    if shape not in SHAPES:
        raise ValueError(f"unknown pipeline shape {shape!r}; one of {SHAPES}")
    torch.manual_seed(seed)
    vocab, merges = tiny_clip_bpe()
    if shape == "tiny":
        unet = dict(sample_size=8, layers_per_block=1, block_out_channels=(16, 32),
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
                    attention_head_dim=4, norm_num_groups=8)
        vae = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8, sample_size=16)
        text = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                    max_position_embeddings=16, projection_dim=16)
        max_length = 16
    else:
        scale = 4 if shape == "small" else 1
        widths = tuple(c // scale for c in (320, 640, 1280, 1280))
        hidden = 768 // scale
        unet = dict(sample_size=16 if shape == "small" else 64, layers_per_block=2, block_out_channels=widths,
                    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=hidden,
                    attention_head_dim=8, norm_num_groups=32 // scale if shape == "small" else 32)
        vae = dict(block_out_channels=tuple(c // scale for c in (128, 256, 512, 512)), layers_per_block=2,
                   norm_num_groups=32 // scale if shape == "small" else 32,
                   sample_size=128 if shape == "small" else 512)
        text = dict(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=12,
                    num_attention_heads=12 // scale if shape == "small" else 12, max_position_embeddings=77,
                    projection_dim=hidden)
        max_length = 77
    levels = len(vae["block_out_channels"])
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), bos_token_id=tokenizer.bos_token_id,
                                                eos_token_id=tokenizer.eos_token_id,
                                                pad_token_id=tokenizer.pad_token_id, **text))
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(
        unet=UNet2DConditionModel(in_channels=4, out_channels=4, **unet),
        vae=AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                          down_block_types=("DownEncoderBlock2D",) * levels,
                          up_block_types=("UpDecoderBlock2D",) * levels, **vae),
        text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
