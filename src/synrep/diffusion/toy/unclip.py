"""DALL-E 2 / unCLIP at toy scale, and one entry point for it and for diffusers' real unCLIP pipelines.

unCLIP (Ramesh et al. 2022) makes an image from a caption in two stages over CLIP's joint space: a
*prior* maps the caption to a CLIP image embedding, and a *decoder* inverts the CLIP image encoder,
seeing that embedding (projected into the timestep embedding and into four extra context tokens)
and the caption. Because the decoder is stochastic, an image's own CLIP embedding decoded with new
noise gives *variations* of it.

``ToyUnCLIPPipeline`` is that model for the toy world, built from diffusers' parts:

- ``prior`` (``PriorTransformer``) with ``prior_scheduler`` (``UnCLIPScheduler``): predicts the
  clean CLIP image embedding (prediction type ``sample``, as unCLIP's prior) of the toy CLIP, in the
  space normalised by the train embeddings' mean and std (the prior's ``clip_mean`` / ``clip_std``;
  ``post_process_latents`` undoes it), from the caption's CLIP text embedding (``proj_embedding``)
  and the CLIP text tower's token states (``encoder_hidden_states``: open_clip's ``ln_final``
  output, read by a forward hook, through CLIP's own ``text_projection`` so that they live in the
  embedding space). ``UnCLIPScheduler`` is the scheduler of diffusers' unCLIP and Kandinsky priors:
  it steps a ``sample``-predicting model between any two timesteps (``prev_timestep``), so that the
  prior samples in a few strided steps, and it clamps the predicted embedding to
  ``clip_sample_range`` standard deviations. Its steps must be >= 2 (its timestep spacing divides
  by steps - 1).
- ``text_proj`` (``UnCLIPTextProjModel``): the CLIP image embedding to four extra context tokens and
  to an additive embedding, exactly as unCLIP; it holds the learnt null embedding that stands for
  "no image embedding" (classifier-free guidance).
- ``unet``, ``text_encoder``, ``tokenizer``, ``scheduler``: the toy generator's (``ToyGlidePipeline``),
  fine-tuned into the decoder; the decoder still reads the caption through the toy text encoder, as
  unCLIP's decoder reads it through GLIDE's.

The wiring keeps the toy generator's weights a good initialisation (``build_toy_unclip``): the UNet
keeps its ``class_embed_type="projection"`` (an MLP from the pooled caption embedding into the
timestep embedding), and ``text_proj``'s additive embedding enters in that MLP's input space:
``text_proj`` adds ``embedding_proj(pooled caption) + project(image embedding)``; with
``embedding_proj`` the identity and ``project`` zero, the MLP sees the pooled caption, as before.
``text_proj`` also maps the caption's token states through a linear layer and a LayerNorm before
the extra tokens are prepended: it is fed the text encoder's states *before* its final LayerNorm,
with the linear layer the identity and its LayerNorm a copy of the text encoder's, so that the
cross-attention sees the toy generator's caption tokens exactly. The extra tokens start at zero.
At initialisation the decoder is thus the toy generator with four zero tokens in its context, and
the image embedding has no effect until fine-tuning (``train_unclip``) teaches it one.
``class_embed_type="identity"`` (unCLIP's UNet) would have discarded the trained projection MLP.

Classifier-free guidance of the decoder at scale w is unCLIP's: between (caption + image embedding)
and (empty caption + null embedding); training drops each at random. The prior's guidance is
between the caption and the empty caption (both through CLIP), as in diffusers' ``UnCLIPPipeline``.

Hand-written here (what no library provides): the two sampling loops of ``ToyUnCLIPPipeline``
(diffusers' unCLIP pipelines take transformers' CLIP models and a super-resolution stage, while the
toy CLIP is open_clip's and the toy decoder is pixel-space at full size; the loops are theirs, with
the project's decoder sampler, e.g. DPM-Solver++ from ``pipelines.make_scheduler``), the token-state
hook on open_clip's text tower, and the dispatch of ``unclip_images`` / ``variation_images`` over
the toy pipeline and diffusers' ``UnCLIPPipeline`` / ``UnCLIPImageVariationPipeline``. For the
diffusers pipelines, decoding a given embedding *with a caption* (the ``use_prior=False`` ablation
and captioned variations) runs diffusers' own decoder and super-resolution loops
(``UnCLIPImageVariationPipeline.__call__``) in a subclass that only changes the caption it encodes.

Train and ship the toy model (``synrep.recipes.toy_unclip``)::

    python -m synrep train_unclip toy_unclip.output_dir=models/toy_unclip
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline, PriorTransformer, UnCLIPImageVariationPipeline, UnCLIPPipeline, UnCLIPScheduler
from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel
from diffusers.utils.torch_utils import randn_tensor

from synrep.diffusion.toy.pipeline import guided_noise, pixel_output, step_kwargs
from synrep.diffusion.toy.text import tokenize
from synrep.pixels import unit_range
from synrep.settings import InputError

# unCLIP's decoder: "projecting CLIP embeddings into four extra tokens of context"
EXTRA_CONTEXT_TOKENS = 4
# Steps of diffusers' unCLIP super-resolution stage (its pipelines' default); the toy model has none
SUPER_RES_STEPS = 7


class ClipText(NamedTuple):
    """What CLIP's text tower gives the prior, per caption: the embedding [B, D] (L2-normalised), the
    token states [B, T, D] in the embedding space, and the mask of real tokens [B, T]."""

    embeds: torch.Tensor
    states: torch.Tensor
    mask: torch.Tensor

    def expand(self, batch: int) -> "ClipText":
        return ClipText(*(x.expand(batch, *x.shape[1:]) for x in self))

    def cat(self, other: "ClipText") -> "ClipText":
        return ClipText(*(torch.cat([a, b]) for a, b in zip(self, other)))


@torch.no_grad()
def clip_text(clip, prompts: list[str]) -> ClipText:
    """The toy CLIP's (``ClipGuide``) text embedding, token states and token mask of ``prompts``.

    open_clip returns only the pooled embedding; the per-token states are its ``ln_final`` output,
    caught by a forward hook and projected by CLIP's ``text_projection`` (as the pooled token is).
    """
    model = clip.model
    device = next(model.parameters()).device
    tokens = clip.tokenizer(prompts).to(device)
    caught: dict[str, torch.Tensor] = {}
    hook = model.ln_final.register_forward_hook(lambda _module, _inputs, output: caught.update(states=output))
    try:
        embeds = model.encode_text(tokens, normalize=True)
    finally:
        hook.remove()
    projection = model.text_projection
    states = caught["states"]
    states = projection(states) if isinstance(projection, torch.nn.Linear) else states @ projection
    return ClipText(embeds, states, tokens != getattr(model, "pad_id", 0))


def image_embeddings(clip, images: np.ndarray, batch: int = 512) -> torch.Tensor:
    """L2-normalised CLIP image embeddings [N, D] of uint8 images [N, H, W, 3]."""
    device = next(clip.model.parameters()).device
    x = unit_range(torch.from_numpy(np.ascontiguousarray(images)).to(device))
    with torch.no_grad():
        return torch.cat([clip.image_embeddings(x[i:i + batch]) for i in range(0, len(x), batch)])


def caption_features(text_encoder, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The toy text encoder's token states *before* its final LayerNorm (``text_proj`` applies a copy
    of that LayerNorm, see the module doc) and its pooled embedding."""
    out = text_encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    return out.hidden_states[-1], out.pooler_output


class ToyUnCLIPPipeline(DiffusionPipeline):
    """The toy unCLIP: prior (caption -> CLIP image embedding) and decoder (embedding + caption -> image)."""

    model_cpu_offload_seq = "text_encoder->text_proj->unet"

    def __init__(self, prior, prior_scheduler, text_proj, unet, scheduler, text_encoder, tokenizer):
        super().__init__()
        self.register_modules(prior=prior, prior_scheduler=prior_scheduler, text_proj=text_proj, unet=unet,
                              scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer)
        if text_proj is not None:
            # diffusers records UnCLIPTextProjModel as ["diffusers", ...], which its loader cannot resolve
            # (the class lives in the deprecated unclip pipeline's folder): record its module instead,
            # which the loader finds among the imported modules (this one imports it)
            self.register_to_config(text_proj=(type(text_proj).__module__, type(text_proj).__name__))

    @torch.no_grad()
    def encode_caption(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = tokenize(self.tokenizer, prompts)
        states, pooled = caption_features(self.text_encoder, ids.to(self.device), mask.to(self.device))
        return states.to(self.unet.dtype), pooled.to(self.unet.dtype)

    def decoder_inputs(self, states: torch.Tensor, pooled: torch.Tensor, embeddings: torch.Tensor,
                       use_cfg: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(cross-attention context, the class projection's input) from ``text_proj``. With ``use_cfg``,
        ``states`` / ``pooled`` hold the empty caption's rows first, and ``text_proj`` puts its null
        embedding in front of ``embeddings`` (diffusers' unCLIP convention)."""
        return self.text_proj(image_embeddings=embeddings, prompt_embeds=pooled, text_encoder_hidden_states=states,
                              do_classifier_free_guidance=use_cfg)

    def predict_noise(self, x: torch.Tensor, t, context: torch.Tensor, added: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, encoder_hidden_states=context, class_labels=added).sample

    @torch.no_grad()
    def sample_prior(self, text: ClipText, negative_text: ClipText | None, generator, num_inference_steps: int,
                     guidance_scale: float, samples: int = 1) -> torch.Tensor:
        """CLIP image embeddings [B, D] (L2-normalised, as the decoder was trained on) for the captions'
        CLIP text outputs; ``negative_text``: the empty caption's, for guidance scale != 1.

        ``samples`` > 1: DALL-E 2's rerank, that many draws per caption, keeping the one with the
        highest dot product with the caption's text embedding z_t. The first draw comes from
        ``generator`` as with one sample; the others from generators seeded off it (``rerank_generators``),
        so that ``generator`` ends where one sample leaves it and the decoder's noise is unchanged."""
        best = self._sample_prior(text, negative_text, generator, num_inference_steps, guidance_scale)
        if samples > 1:
            z_t = F.normalize(text.embeds.to(best.device, best.dtype), dim=-1)
            best_score = (best * z_t).sum(-1)
            for j in range(1, samples):
                other = self._sample_prior(text, negative_text, rerank_generators(generator, j), num_inference_steps,
                                           guidance_scale)
                score = (other * z_t).sum(-1)
                better = score > best_score
                best = torch.where(better[:, None], other, best)
                best_score = torch.where(better, score, best_score)
        return best

    def _sample_prior(self, text: ClipText, negative_text: ClipText | None, generator, num_inference_steps: int,
                      guidance_scale: float) -> torch.Tensor:
        if num_inference_steps < 2:
            raise InputError(f"prior steps must be >= 2 (UnCLIPScheduler), got {num_inference_steps}")
        batch = len(text.embeds)
        use_cfg = guidance_scale != 1.0
        if use_cfg:
            if negative_text is None:
                raise ValueError("prior guidance needs negative_text_model_output (the empty caption's CLIP text outputs)")
            text = negative_text.expand(batch).cat(text)
        device, dtype = self.device, self.prior.dtype
        text = ClipText(text.embeds.to(device, dtype), text.states.to(device, dtype), text.mask.to(device))
        scheduler = self.prior_scheduler
        scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = scheduler.timesteps
        latents = randn_tensor((batch, self.prior.config.embedding_dim), generator=generator, device=device,
                               dtype=dtype) * scheduler.init_noise_sigma
        for i, t in enumerate(timesteps):
            model_in = torch.cat([latents, latents]) if use_cfg else latents
            predicted = self.prior(model_in, timestep=t, proj_embedding=text.embeds, encoder_hidden_states=text.states,
                                   attention_mask=text.mask).predicted_image_embedding
            if use_cfg:
                uncond, cond = predicted.chunk(2)
                predicted = uncond + guidance_scale * (cond - uncond)
            prev = timesteps[i + 1] if i + 1 < len(timesteps) else None
            latents = scheduler.step(predicted, timestep=t, sample=latents, prev_timestep=prev,
                                     generator=generator).prev_sample
        return F.normalize(self.prior.post_process_latents(latents), dim=-1)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        image_embeddings: torch.Tensor | None = None,
        text_model_output: ClipText | None = None,
        negative_text_model_output: ClipText | None = None,
        num_inference_steps: int = 10,
        guidance_scale: float = 2.0,
        prior_num_inference_steps: int = 25,
        prior_guidance_scale: float = 1.0,
        prior_samples: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "np",
        return_dict: bool = True,
    ):
        """One image per prompt. ``image_embeddings`` [B, D] (CLIP, L2-normalised) skip the prior;
        otherwise the prior samples them from ``text_model_output`` (``clip_text`` of the prompts).
        An empty prompt with an image's embedding is a variation of that image."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        batch = len(prompts)
        if image_embeddings is None:
            if text_model_output is None:
                raise ValueError("ToyUnCLIPPipeline needs image_embeddings or text_model_output (the prompts' CLIP "
                                 "text outputs: unclip.clip_text(clip, prompts))")
            image_embeddings = self.sample_prior(text_model_output, negative_text_model_output, generator,
                                                 prior_num_inference_steps, prior_guidance_scale, prior_samples)
        if len(image_embeddings) != batch:
            raise ValueError(f"{len(image_embeddings)} image embeddings for {batch} prompts")
        device, dtype = self.device, self.unet.dtype
        embeddings = image_embeddings.to(device, dtype)

        # w = 1 is the plain conditional model: no unconditional pass
        use_cfg = guidance_scale != 1.0
        states, pooled = self.encode_caption(prompts)
        if use_cfg:
            empty_states, empty_pooled = self.encode_caption([""])
            states = torch.cat([empty_states.expand(batch, -1, -1), states])
            pooled = torch.cat([empty_pooled.expand(batch, -1), pooled])
        context, added = self.decoder_inputs(states, pooled, embeddings, use_cfg)

        size = self.unet.config.sample_size
        x = randn_tensor((batch, self.unet.config.in_channels, size, size), generator=generator, device=device,
                         dtype=dtype)
        x = x * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        extra = step_kwargs(self.scheduler, eta, generator)
        for t in self.progress_bar(self.scheduler.timesteps):
            model_in = self.scheduler.scale_model_input(torch.cat([x, x]) if use_cfg else x, t)
            eps = self.predict_noise(model_in, t, context, added)
            if use_cfg:
                eps = guided_noise(*eps.chunk(2), guidance_scale)
            x = self.scheduler.step(eps, t, x, **extra, return_dict=False)[0]

        return pixel_output(self, x, output_type, return_dict)


def build_toy_unclip(glide, clip_embed_dim: int, clip_context_length: int, prior_layers: int = 4,
                     prior_heads: int = 2, prior_head_dim: int = 32,
                     extra_context_tokens: int = EXTRA_CONTEXT_TOKENS) -> ToyUnCLIPPipeline:
    """A toy unCLIP whose decoder starts as ``glide`` (a ``ToyGlidePipeline``; its modules are shared,
    not copied), with a new prior and ``text_proj`` initialised as the module doc says."""
    unet, text_encoder = glide.unet, glide.text_encoder
    hidden = text_encoder.config.hidden_size
    if unet.config.class_embed_type != "projection" or unet.config.projection_class_embeddings_input_dim != hidden:
        raise InputError("the toy unCLIP's decoder needs a toy generator whose UNet projects the pooled caption "
                         "(class_embed_type 'projection'); this one does not")
    if hidden != clip_embed_dim:
        # UnCLIPTextProjModel takes the image embedding, the pooled caption and the caption's tokens in
        # one width (in unCLIP all three are CLIP's)
        raise InputError(f"the toy generator's text width ({hidden}, toy_generator.model.text_hidden_size) must equal "
                         f"the CLIP embedding width ({clip_embed_dim}, toy_clip.model.embed_dim)")
    text_proj = UnCLIPTextProjModel(clip_extra_context_tokens=extra_context_tokens, clip_embeddings_dim=hidden,
                                    time_embed_dim=hidden, cross_attention_dim=unet.config.cross_attention_dim)
    final_norm = getattr(text_encoder, "text_model", text_encoder).final_layer_norm
    with torch.no_grad():
        eye = torch.eye(hidden)
        text_proj.embedding_proj.weight.copy_(eye)
        text_proj.embedding_proj.bias.zero_()
        text_proj.encoder_hidden_states_proj.weight.copy_(eye)
        text_proj.encoder_hidden_states_proj.bias.zero_()
        text_proj.text_encoder_hidden_states_norm.load_state_dict(final_norm.state_dict())
        for layer in (text_proj.clip_image_embeddings_project_to_time_embeddings, text_proj.clip_extra_context_tokens_proj):
            layer.weight.zero_()
            layer.bias.zero_()
    prior = PriorTransformer(num_attention_heads=prior_heads, attention_head_dim=prior_head_dim, num_layers=prior_layers,
                             embedding_dim=clip_embed_dim, num_embeddings=clip_context_length, additional_embeddings=4,
                             norm_in_type="layer", embedding_proj_norm_type="layer")
    with torch.no_grad():  # the normalisation is set from the data by training; identity until then
        prior.clip_std.fill_(1.0)
    # the clamp of the predicted (normalised) embedding, as diffusers' unCLIP prior scheduler
    prior_scheduler = UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample",
                                      num_train_timesteps=1000, clip_sample_range=5.0)
    return ToyUnCLIPPipeline(prior=prior, prior_scheduler=prior_scheduler, text_proj=text_proj, unet=unet,
                             scheduler=glide.scheduler, text_encoder=text_encoder, tokenizer=glide.tokenizer)


def load_toy_unclip(path, sampler: str | None = "dpmsolver", device: str = "cpu") -> ToyUnCLIPPipeline:
    """A saved ``ToyUnCLIPPipeline`` with the project's decoder sampler (``pipelines.make_scheduler``;
    None keeps the saved DDIM)."""
    from pathlib import Path

    from synrep.diffusion.pipelines import make_scheduler

    folder = Path(path)
    if not (folder / "model_index.json").exists():
        raise FileNotFoundError(f"{folder / 'model_index.json'} not found: not a toy unCLIP folder "
                                "(`python -m synrep train_unclip`)")
    pipe = ToyUnCLIPPipeline.from_pretrained(folder)
    if sampler:
        pipe.scheduler = make_scheduler(sampler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


# ----------------------------------------------------------------------------------------------
# diffusers' unCLIP pipelines
# ----------------------------------------------------------------------------------------------


class CaptionedUnCLIPDecoder(UnCLIPImageVariationPipeline):
    """diffusers' unCLIP decoder and super-resolution stages (``UnCLIPImageVariationPipeline``) that
    decode given image embeddings (or images) with ``captions`` instead of the empty caption, the
    captions encoded as ``UnCLIPPipeline`` encodes a prompt; ``captions`` None: the empty caption,
    i.e. the variation pipeline itself."""

    captions: list[str] | None = None

    @classmethod
    def sharing(cls, pipe, captions: list[str] | None) -> "CaptionedUnCLIPDecoder":
        """One sharing ``pipe``'s modules (an ``UnCLIPPipeline`` or ``UnCLIPImageVariationPipeline``)."""
        import inspect
        import logging

        names = [n for n in inspect.signature(UnCLIPImageVariationPipeline.__init__).parameters if n != "self"]
        # diffusers warns that the unCLIP pipelines are deprecated when one is made; the caller's own
        # pipeline already said so, and this one would be named in the warning
        quiet = logging.getLogger("diffusers.pipelines.pipeline_utils")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            decoder = cls(**{n: pipe.components.get(n) for n in names})
        finally:
            quiet.setLevel(level)
        decoder.captions = captions
        decoder.set_progress_bar_config(disable=True)
        return decoder.to(pipe.device)

    def _encode_prompt(self, prompt, device, num_images_per_prompt, do_classifier_free_guidance):
        if self.captions is None:
            return super()._encode_prompt(prompt, device, num_images_per_prompt, do_classifier_free_guidance)
        return UnCLIPPipeline._encode_prompt(self, self.captions, device, num_images_per_prompt,
                                             do_classifier_free_guidance)

    def _encode_image(self, image, device, num_images_per_prompt, image_embeddings=None):
        # the variation pipeline reads its image encoder's dtype even when given embeddings, and
        # UnCLIPPipeline has no image encoder
        if image_embeddings is not None:
            return image_embeddings.repeat_interleave(num_images_per_prompt, dim=0)
        return super()._encode_image(image, device, num_images_per_prompt)


@torch.no_grad()
def _diffusers_text_embeddings(pipe, prompts: list[str]) -> torch.Tensor:
    """The CLIP text embeddings (``text_embeds``) of ``prompts``, as diffusers' unCLIP prior receives them."""
    embeds, _, _ = UnCLIPPipeline._encode_prompt(pipe, prompts, pipe.device, 1, False)
    return embeds


def _decode_diffusers(pipe, generators, w: float, steps: int, captions: list[str] | None, **inputs) -> np.ndarray:
    decoder = CaptionedUnCLIPDecoder.sharing(pipe, captions)
    return decoder(generator=generators, decoder_num_inference_steps=steps, super_res_num_inference_steps=SUPER_RES_STEPS,
                   decoder_guidance_scale=float(w), output_type="np", **inputs).images


def rerank_generators(generator, draw: int):
    """Generators for the prior's extra draw ``draw`` (>= 1) of the rerank: each seeded from its
    image's generator seed and the draw, leaving that generator untouched."""
    def fork(g: torch.Generator) -> torch.Generator:
        seed = np.random.SeedSequence([g.initial_seed(), draw]).generate_state(1, np.uint64)[0]
        return torch.Generator(device=g.device).manual_seed(int(seed))

    if isinstance(generator, list):
        return [fork(g) for g in generator]
    if generator is None:
        raise ValueError("the prior's rerank needs seeded generators (one per image)")
    return fork(generator)


def _check_batch(what: str, n: int, generators: list, prompts: list[str] | None = None) -> None:
    if len(generators) != n:
        raise ValueError(f"{len(generators)} generators for {n} {what}: one generator per image")
    if prompts is not None and len(prompts) != n:
        raise ValueError(f"{len(prompts)} prompts for {n} {what}")


# ----------------------------------------------------------------------------------------------
# What the rest of the project calls
# ----------------------------------------------------------------------------------------------


def unclip_images(pipe, clip, prompts: list[str], generators: list[torch.Generator], w: float, steps: int,
                  prior_steps: int = 25, prior_w: float = 1.0, use_prior: bool = True,
                  prior_samples: int = 1) -> np.ndarray:
    """Caption -> (prior -> CLIP image embedding) -> decoder: float [N, H, W, 3] in [0, 1], image i
    from ``generators[i]``. ``w``: the decoder's guidance scale; ``prior_w``: the prior's.
    ``use_prior=False`` decodes from the caption's CLIP *text* embedding instead (DALL-E 2's ablation).
    ``prior_samples`` > 1: DALL-E 2's rerank of prior draws by z_i . z_t (toy unCLIP only).

    ``pipe``: a ``ToyUnCLIPPipeline`` (``clip``: the toy CLIP's ``ClipGuide``), or diffusers'
    ``UnCLIPPipeline`` / ``UnCLIPImageVariationPipeline`` (their own CLIP; ``clip`` unused; the
    variation pipeline has no prior, so only ``use_prior=False``).
    """
    prompts = list(prompts)
    _check_batch("prompts", len(prompts), generators)
    if isinstance(pipe, ToyUnCLIPPipeline):
        if clip is None:
            raise ValueError("the toy unCLIP needs the toy CLIP: clip=clip_guidance.load_guide('models/toy_clip')")
        text = clip_text(clip, prompts)
        if not use_prior:
            return pipe(prompts, image_embeddings=text.embeds, num_inference_steps=steps, guidance_scale=float(w),
                        generator=generators).images
        negative = clip_text(clip, [""]) if prior_w != 1.0 else None
        return pipe(prompts, text_model_output=text, negative_text_model_output=negative, num_inference_steps=steps,
                    guidance_scale=float(w), prior_num_inference_steps=prior_steps,
                    prior_guidance_scale=float(prior_w), prior_samples=prior_samples, generator=generators).images
    if isinstance(pipe, (UnCLIPPipeline, UnCLIPImageVariationPipeline)):
        if not use_prior:
            return _decode_diffusers(pipe, generators, w, steps, prompts,
                                     image_embeddings=_diffusers_text_embeddings(pipe, prompts))
        if not isinstance(pipe, UnCLIPPipeline):
            raise TypeError("UnCLIPImageVariationPipeline has no prior: use UnCLIPPipeline, or use_prior=False")
        if prior_samples != 1:
            # diffusers' UnCLIPPipeline samples its prior inside __call__, with no hook to rerank it
            raise InputError(f"unclip.prior_samples {prior_samples}: the prior's rerank runs on the toy unCLIP only; "
                             "set it to 1 for diffusers' UnCLIPPipeline")
        return pipe(prompt=prompts, generator=generators, prior_num_inference_steps=prior_steps,
                    decoder_num_inference_steps=steps, super_res_num_inference_steps=SUPER_RES_STEPS,
                    prior_guidance_scale=float(prior_w), decoder_guidance_scale=float(w), output_type="np").images
    raise TypeError(f"unclip_images runs ToyUnCLIPPipeline, UnCLIPPipeline and UnCLIPImageVariationPipeline, "
                    f"not {type(pipe).__name__}")


def variation_images(pipe, clip, images: np.ndarray, generators: list[torch.Generator], w: float, steps: int,
                     prompts: list[str] | None = None) -> np.ndarray:
    """Real uint8 images [N, H, W, 3] -> their CLIP image embeddings -> decoder with new noise: float
    [N, H, W, 3] in [0, 1], image i from ``generators[i]``. The decoder sees the empty caption, or
    ``prompts`` when given. ``pipe``: a ``ToyUnCLIPPipeline`` (``clip``: the toy CLIP) or diffusers'
    ``UnCLIPImageVariationPipeline`` (its own CLIP image encoder)."""
    from PIL import Image

    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"variation_images takes uint8 images [N, H, W, 3], got {images.dtype} {images.shape}")
    _check_batch("images", len(images), generators, prompts)
    if isinstance(pipe, ToyUnCLIPPipeline):
        if clip is None:
            raise ValueError("the toy unCLIP needs the toy CLIP: clip=clip_guidance.load_guide('models/toy_clip')")
        return pipe(list(prompts) if prompts is not None else [""] * len(images),
                    image_embeddings=image_embeddings(clip, images), num_inference_steps=steps,
                    guidance_scale=float(w), generator=generators).images
    if isinstance(pipe, UnCLIPImageVariationPipeline):
        return _decode_diffusers(pipe, generators, w, steps, list(prompts) if prompts is not None else None,
                                 image=[Image.fromarray(im) for im in images])
    raise TypeError(f"variation_images runs ToyUnCLIPPipeline and UnCLIPImageVariationPipeline (an image encoder), "
                    f"not {type(pipe).__name__}")
