"""diffusers' unCLIP pipelines (Karlo's architecture: ``UnCLIPPipeline`` and
``UnCLIPImageVariationPipeline``) with small random weights, built locally (no hub), so that tests
run the code path that real unCLIP weights take (``toy.unclip.unclip_images`` / ``variation_images``).

The components follow diffusers' own fast tests of these pipelines (``tests/pipelines/unclip/``):
a ``PriorTransformer``, ``UnCLIPTextProjModel``, a decoder ``UNet2DConditionModel`` with
``class_embed_type="identity"`` that predicts mean and variance (``learned_range``), two
super-resolution ``UNet2DModel``s and ``UnCLIPScheduler``s, with transformers' CLIP text (and, for
variations, vision) towers, shrunk further: 8 px decoder images, 16 px after super-resolution
(the toy world's size), a 16-wide CLIP and ``random_sd``'s tiny BPE vocabulary.
"""

from __future__ import annotations

CLIP_WIDTH = 16  # CLIP's hidden size = its embedding size, as UnCLIPTextProjModel needs
DECODER_SIZE = 8
IMAGE_SIZE = 16  # after super-resolution


def _components(seed: int) -> dict:
    import torch
    from diffusers import PriorTransformer, UnCLIPScheduler, UNet2DConditionModel, UNet2DModel
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    from synrep.diffusion.random_sd import tiny_clip_bpe

    vocab, merges = tiny_clip_bpe()
    max_length = 16
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=CLIP_WIDTH, projection_dim=CLIP_WIDTH, intermediate_size=32,
        num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=8, num_layers=1, embedding_dim=CLIP_WIDTH,
                             num_embeddings=max_length)
    # Karlo's prior denormalises its sample with the CLIP embeddings' statistics: random ones here
    with torch.no_grad():
        prior.clip_mean.normal_(0, 0.1)
        prior.clip_std.uniform_(0.5, 1.5)
    block = 16
    text_proj = UnCLIPTextProjModel(clip_embeddings_dim=CLIP_WIDTH, time_embed_dim=4 * block, cross_attention_dim=32)
    decoder = UNet2DConditionModel(
        sample_size=DECODER_SIZE, in_channels=3, out_channels=6,  # mean and variance
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", block_out_channels=(block, 2 * block), layers_per_block=1,
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8, resnet_time_scale_shift="scale_shift",
        class_embed_type="identity")
    super_res = dict(sample_size=IMAGE_SIZE, layers_per_block=1, block_out_channels=(block, 2 * block),
                     down_block_types=("ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D"),
                     up_block_types=("ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"), norm_num_groups=8,
                     in_channels=6, out_channels=3)
    super_res_first = UNet2DModel(**super_res)
    super_res_last = UNet2DModel(**super_res)
    return {
        "prior": prior, "decoder": decoder, "text_proj": text_proj, "text_encoder": text_encoder,
        "tokenizer": tokenizer, "super_res_first": super_res_first, "super_res_last": super_res_last,
        "prior_scheduler": UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample",
                                           num_train_timesteps=1000, clip_sample_range=5.0),
        "decoder_scheduler": UnCLIPScheduler(variance_type="learned_range", prediction_type="epsilon",
                                             num_train_timesteps=1000),
        "super_res_scheduler": UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="epsilon",
                                               num_train_timesteps=1000),
    }


def random_unclip_pipeline(seed: int = 0):
    """An ``UnCLIPPipeline`` (prior, decoder, super-resolution) with seeded random weights."""
    from diffusers import UnCLIPPipeline

    pipe = UnCLIPPipeline(**_components(seed))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def random_unclip_variation_pipeline(seed: int = 0):
    """An ``UnCLIPImageVariationPipeline`` (CLIP image encoder, decoder, super-resolution) with seeded
    random weights; the same decoder as ``random_unclip_pipeline(seed)``."""
    import torch
    from diffusers import UnCLIPImageVariationPipeline
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    components = _components(seed)
    for name in ("prior", "prior_scheduler"):
        components.pop(name)
    torch.manual_seed(seed + 1)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=CLIP_WIDTH, projection_dim=CLIP_WIDTH, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=4))
    feature_extractor = CLIPImageProcessor(crop_size=IMAGE_SIZE, size=IMAGE_SIZE)
    pipe = UnCLIPImageVariationPipeline(image_encoder=image_encoder.eval(), feature_extractor=feature_extractor,
                                        **components)
    pipe.set_progress_bar_config(disable=True)
    return pipe
