"""StyleGAN-NADA's text-only domain adaptation (Gal et al., SIGGRAPH 2022) of the toy diffusion
generator, in DiffusionCLIP's form (Kim et al., CVPR 2022). Step ``train_nada``.

Two copies of the toy generator's UNet: G_frozen (never changes) and G_train. Each step draws
``nada.batch_size`` noises and captions from the world's caption set; the frozen UNet takes the
DDIM steps (``nada.ddim_steps``, eta 0, classifier-free guidance at ``nada.guidance_scale``) where
ᾱ_t < ``nada.min_alpha_bar``, without gradient; from that x_t0 both copies finish the chain, and
the toy CLIP scores the change:

    ΔT = normalise(mean over templates and objects of E_T(target text) − E_T(source text))
    ΔI = E_I(G_train(x_t0, c)) − E_I(G_frozen(x_t0, c))     (unit embeddings, per sample)
    L  = mean over the batch of 1 − cos(ΔI, ΔT)   [+ l1_weight · |G_train − G_frozen|₁]

(|ΔI| counts as at least ``DELTA_FLOOR`` in the cosine: the copies start equal, ΔI = 0;
``nada.loss: global`` trains 1 − cos(E_I(G_train), E_T(target)) instead, the paper's ablation.)

Why no gradient at the first steps: the toy scheduler (squaredcos_cap_v2, trailing) starts every
sampler at t = 999, where ᾱ = 2.4e-9: x̂0 = (x − √(1−ᾱ) ε)/√ᾱ multiplies the noise prediction's
error by 2e4 and the scheduler clamps nearly all its pixels (``scripts/nada_checks.py``). A
gradient through that step is chaotic (a relative 1e-3 change of one unit's weights moves the
chain's output 5 to 50 times more than with that step frozen) and says nothing about the image. DiffusionCLIP never
differentiates there: its trained chain starts at t0 = 500 of a linear schedule, ᾱ = 0.078; the
same ᾱ here is t = 817, so the default trains the steps at 749, 499 and 249 and the frozen UNet
takes t = 999. By default x_t0 is not a DDIM-inverted real photo as in DiffusionCLIP: NADA is
text-only, and a sampler of the adapted generator starts from noise (``nada.start: inversion``
trains from inverted photos instead, DiffusionCLIP's way, with ``ddim_invert``). The shipped
generator is not a zero-terminal-SNR v-prediction one (the default run's images must stay its
images); a generator trained with ``toy_generator.model.rescale_betas_zero_snr`` and
``prediction_type: v_prediction`` defines x̂0 = −v at t = 999, and with ``nada.min_alpha_bar`` 0
the adapted UNet takes every step of its chain (docs/nada.md compares both).

The saved generator samples the same way: ``ToyGlideAdaptedPipeline`` carries both UNets and
``adapted_from`` (the largest t with ᾱ_t ≥ ``nada.min_alpha_bar``) and uses the frozen UNet above
it under any sampler, so a source naming it as its ``generator:`` samples as training did.

What it follows:

- the directional loss and the text direction: NADA's ``criteria/clip_loss.py``
  (``compute_text_direction``: template-wise differences of unit text embeddings, averaged, then
  normalised; ``clip_directional_loss``: per-sample unit image embeddings, the cosine with ΔT). The
  templates are the world's own wording of each domain (``toy_vocabulary.DOMAIN_TEMPLATES``, the photo
  captions' "a photo of ..."), around every colour × shape, so that the toy CLIP knows the words;
- fine-tuning the denoiser: DiffusionCLIP's ``clip_finetune``: the generative DDIM chain of the
  fine-tuned model from x_t0 with gradients through every step of it (no truncation and no
  gradient checkpointing: at 16 px a 3-step chain's activations are small), Adam on the trained
  weights, an optional L1 content term (its ``l1_loss_w``, 1 against its CLIP weight 3; its
  face-identity loss has no toy counterpart). Its lr 8e-6 is 0.08 of its ADM base models'
  training lr (1e-4) and 0.4 of DDPM's (2e-5); the toy generator trained at 2e-3, so 1.6e-4 to
  8e-4: ``nada.lr`` 2e-4. By default, unlike DiffusionCLIP, nothing is inverted: text-only, x_t0
  comes from Gaussian noise through the frozen UNet, as NADA samples z. With ``nada.start:
  inversion``, x_t0 is one of ``inversion_images`` real photos inverted once before training
  (DiffusionCLIP's precomputed latents, ``n_inv_step`` = ``inversion_steps``), with its caption and
  the chain's guidance. Either way the frozen copy's image from the same x_t0 is the source image
  (DiffusionCLIP compares with the photo itself, which the frozen chain redraws closely);
- adaptive layer choice: NADA's ``ZSSGAN.determine_opt_layers``, adapted to a UNet. NADA moves
  per-layer W+ codes a few SGD steps under the *global* loss 1 − cos(E_I(G), E_T(target)) and trains
  the k layers whose codes moved most. By default (``layer_score: weights``) a throw-away copy of
  G_train takes ``select_iters`` SGD steps of the global loss on all its units' weights, and each
  unit (``layer_unit``: every resnet, attention and resampler, or every down / mid / up block) is
  scored by its relative movement ‖Δθ‖ / ‖θ‖ (weights differ in scale between units, NADA's codes do
  not; SGD, not Adam, so that the movement follows the loss's gradient). ``layer_score: codes``
  scores as NADA does, by codes: a UNet's counterpart of a layer's w is the input every unit is
  conditioned by (a resnet's timestep-and-caption embedding, projected to a per-channel shift as
  StyleGAN's affine maps w to a style; an attention's caption states); each unit gets its own copy,
  the copies take the SGD steps, and a unit scores the mean |Δ| of its copy (``nada_layers.code_scores``;
  resamplers read none and are never chosen). The top ``k`` units are
  trained; every other weight (also conv_in / conv_out, time and caption embeddings, which NADA's
  mapping network and toRGB layers correspond to) stays frozen. NADA chooses again every step;
  ``reselect_every`` does so every N steps (0: once, the CPU default).

Outputs under ``nada.output_dir``: ``generator/``, the adapted pipeline as an ordinary
``ToyGlidePipeline`` folder (``recipe.yaml``: the resolved config; ``training.json``: the chosen
units, their scores and the loss curve), so that a source can name it as its ``generator``; and
``snapshots/step_NNNNN.safetensors``, the trained units' weights every ``eval_every`` steps, which
``evaluation/nada_quality.py`` measures.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from tqdm.auto import tqdm

from synrep.data import toy_vocabulary, toyworld
from synrep.diffusion.prediction import predicted_noise, predicted_original, prediction_type
from synrep.diffusion.toy.pipeline import ToyGlidePipeline, guided_noise
from synrep.fileio import atomic_dir, atomic_path, write_json
from synrep.pixels import signed_range
from synrep.recipes.nada_layers import conditioned, layer_units, select_layers, set_trainable, trained_state
from synrep.recipes.nada_loss import directional_loss, global_loss, text_direction, text_embedding, weighted_sum
from synrep.settings import ConfigError, InputError, save_resolved
from synrep.tracking import mlflow_run

# The world's photo captions' wording ("a photo of a red circle", TEMPLATES_PLAIN), with {x} the object
PHOTO_TEMPLATES = ["a photo of {x}", "a picture of {x}", "an image showing {x}"]
SNAPSHOT = "step_{:05d}.safetensors"


def domain_names(cfg: DictConfig) -> list[str]:
    return ["photo", *cfg.toyworld.domains]


def templates(cfg: DictConfig, which: str) -> list[str]:
    """The prompt templates of ``nada.source`` or ``nada.target`` (``which``), {x} the object."""
    own = cfg.nada[f"{which}_templates"]
    if own:
        return list(own)
    domain = cfg.nada[which]
    return list(PHOTO_TEMPLATES if domain == "photo" else toy_vocabulary.DOMAIN_TEMPLATES[domain])


def objects(cfg: DictConfig) -> list[str]:
    """Every colour × shape as a phrase ("a red circle"): the {x} of the templates."""
    tw = cfg.toyworld
    return [toy_vocabulary.with_articles(f"a {c} {toy_vocabulary.SHAPE_WORDS[s][0]}") for c in tw.colours for s in tw.shapes]


def prompts(template_list: list[str], things: list[str]) -> list[list[str]]:
    """One list per template: the template around every object."""
    return [[toy_vocabulary.with_articles(t.format(x=x)) for x in things] for t in template_list]


# ------------------------------------------------------------------------------------------
# The chain
# ------------------------------------------------------------------------------------------


def ddim_scheduler(pipe: ToyGlidePipeline, steps: int):
    """The pipeline's own DDIM scheduler (its clip_sample and spacing) set to ``steps`` steps."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    return scheduler


def adapted_from(scheduler, min_alpha_bar: float) -> int:
    """The largest training timestep t with ᾱ_t ≥ ``min_alpha_bar``: the adapted UNet predicts at
    t ≤ this, the frozen one above (``min_alpha_bar`` 0: every step is the adapted UNet's)."""
    alphas = scheduler.alphas_cumprod
    return int(torch.nonzero(alphas >= min_alpha_bar).max()) if min_alpha_bar > 0 else len(alphas) - 1


def noise_predictor(unet: nn.Module, cond, uncond, w: float):
    """``eps(x, t)``: ``unet``'s output (ε, or v for a v-prediction model) for ``x`` at ``t``,
    classifier-free guided at ``w`` (``uncond`` None: w = 1). ``cond`` / ``uncond``: (states, pooled)
    per image."""
    if uncond is not None:
        states, pooled = torch.cat([uncond[0], cond[0]]), torch.cat([uncond[1], cond[1]])
    else:
        states, pooled = cond

    def eps(x: torch.Tensor, t) -> torch.Tensor:
        model_in = torch.cat([x, x]) if uncond is not None else x
        out = unet(model_in, t, encoder_hidden_states=states, class_labels=pooled).sample
        return guided_noise(*out.chunk(2), w) if uncond is not None else out

    return eps


def ddim_steps(unet: nn.Module, scheduler, x: torch.Tensor, cond, uncond, w: float, timesteps) -> torch.Tensor:
    """``x`` after the deterministic DDIM steps (eta 0) at ``timesteps`` of ``unet``, classifier-free
    guided at ``w`` (``uncond`` None: w = 1); differentiable in ``unet``."""
    eps = noise_predictor(unet, cond, uncond, w)
    for t in timesteps:
        x = scheduler.step(eps(x, t), t, x, eta=0.0, return_dict=False)[0]
    return x


def ddim_invert(unet: nn.Module, scheduler, x0: torch.Tensor, cond, uncond, w: float, t_end: int,
                steps: int) -> torch.Tensor:
    """x at ``t_end`` from images ``x0`` in [-1, 1]: deterministic DDIM inversion (the DDIM update
    run forward in t, DiffusionCLIP's ``n_inv_step`` steps from 0 to t0), each step's noise predicted
    at its start and guided at ``w`` as the chain that reconstructs it, read as ε or v by the
    scheduler's prediction type; no gradient."""
    alphas = scheduler.alphas_cumprod
    prediction = prediction_type(scheduler)
    predict = noise_predictor(unet, cond, uncond, w)
    x = x0
    times = np.linspace(0, t_end, steps + 1).round().astype(int)
    with torch.no_grad():
        for t, t_next in zip(times[:-1], times[1:]):
            output = predict(x, int(t))
            a, a_next = alphas[t], alphas[t_next]
            x0_hat = predicted_original(prediction, output, x, a)
            eps = predicted_noise(prediction, output, x, a)
            x = a_next.sqrt() * x0_hat + (1 - a_next).sqrt() * eps
    return x


def inversion_pool(rng: np.random.Generator, rows: int, count: int) -> np.ndarray:
    """The sorted rows of the photos ``nada.start: inversion`` trains from (the first draw of the
    training's generator, seeded by ``nada.seed``)."""
    return np.sort(rng.choice(rows, min(count, rows), replace=False))


def ddim_chain(unet: nn.Module, scheduler, noise: torch.Tensor, cond, uncond, w: float,
               source: nn.Module | None = None, adapted_from_t: int | None = None) -> torch.Tensor:
    """Images [N, 3, H, W] in [0, 1] from ``noise`` through the DDIM chain of ``scheduler``:
    ``source`` (without gradient) takes the steps at t > ``adapted_from_t``, ``unet`` the rest
    (``source`` None: ``unet`` every step). ``cond`` / ``uncond``: (states, pooled) per image, as
    ``ToyGlidePipeline.encode_batch`` gives."""
    above, below = split_timesteps(scheduler, adapted_from_t if source is not None else None)
    x = noise
    if above:
        with torch.no_grad():
            x = ddim_steps(source, scheduler, x, cond, uncond, w, above)
    return to_unit(ddim_steps(unet, scheduler, x, cond, uncond, w, below))


def split_timesteps(scheduler, adapted_from_t: int | None) -> tuple[list, list]:
    """The scheduler's timesteps above ``adapted_from_t`` (the frozen UNet's) and at or below it."""
    steps = list(scheduler.timesteps)
    if adapted_from_t is None:
        return [], steps
    return [t for t in steps if t > adapted_from_t], [t for t in steps if t <= adapted_from_t]


def to_unit(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(-1, 1) + 1) / 2


class ToyGlideAdaptedPipeline(ToyGlidePipeline):
    """The adapted toy generator as it was trained: ``source_unet`` (the frozen generator's UNet)
    predicts the noise at timesteps above ``adapted_from``, ``unet`` (the adapted copy) at and
    below, whatever the sampler and its number of steps. Saved as an ordinary pipeline folder
    (model_index.json records ``adapted_from``; ``source_unet/`` the frozen weights), so that any
    consumer that loads it, e.g. a source's ``generator:``, samples as training did."""

    def __init__(self, unet, scheduler, text_encoder, tokenizer, source_unet, adapted_from: int = 999):
        super().__init__(unet=unet, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer)
        self.register_modules(source_unet=source_unet)
        self.register_to_config(adapted_from=int(adapted_from))

    def predict_noise(self, x: torch.Tensor, t, states: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        unet = self.unet if float(t) <= self.config.adapted_from else self.source_unet
        return unet(x, t, encoder_hidden_states=states, class_labels=pooled).sample


# ------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------


def train(cfg: DictConfig, pipe: ToyGlidePipeline, guides: list, captions: list[str], snapshot=None,
          progress: bool = True, photos: np.ndarray | None = None) -> tuple[nn.Module, dict]:
    """Adapt a copy of ``pipe.unet`` (which stays frozen) with the directional loss of the CLIPs
    ``guides`` (one per ``nada.clip_models``, weighted by ``nada.clip_model_weights``); returns the
    trained UNet and a summary (chosen units, scores, loss curve; its CLIP columns are the first CLIP's). ``snapshot(step, state)``, when
    given, receives the trained units' weights at step 0 and every ``nada.eval_every`` steps and at
    the end (``state``: as ``trained_state``). ``photos``: uint8 [N, H, W, 3], the real images of
    ``captions`` row for row, which ``nada.start: inversion`` starts from."""
    n = cfg.nada
    rng = np.random.default_rng(n.seed)
    gen = torch.Generator().manual_seed(n.seed)
    frozen = pipe.unet.eval()
    frozen.requires_grad_(False)
    unet = copy.deepcopy(frozen)
    units = layer_units(unet, n.layer_unit)
    names = list(units)
    if n.k > len(names):
        raise ConfigError(f"config key 'nada.k': {n.k} units asked, the UNet has {len(names)} "
                          f"({n.layer_unit} units: {', '.join(names)})")
    if n.layer_score == "codes":
        coded = [name for name in names if conditioned(units[name])]
        if n.k > len(coded):
            raise ConfigError(f"config key 'nada.k': {n.k} units asked, layer_score codes scores the {len(coded)} "
                              f"that read a conditioning input ({', '.join(coded)})")
    scheduler = ddim_scheduler(pipe, n.ddim_steps)
    t0 = adapted_from(scheduler, n.min_alpha_bar)
    above, below = split_timesteps(scheduler, t0)
    if not below:
        raise ConfigError(f"config key 'nada.min_alpha_bar': {n.min_alpha_bar} leaves none of the {n.ddim_steps} "
                          f"DDIM steps (t = {[int(t) for t in above]}) to the adapted UNet (t <= {t0})")
    source_prompts, target_prompts = prompts(templates(cfg, "source"), objects(cfg)), prompts(templates(cfg, "target"), objects(cfg))
    if len(guides) != len(n.clip_model_weights):
        raise ValueError(f"{len(guides)} CLIPs given for {len(n.clip_model_weights)} weights")
    # (CLIP, weight, its text direction, its target text) for each of NADA's CLIPs
    losses = [(guide, float(weight), text_direction(guide, source_prompts, target_prompts),
               text_embedding(guide, target_prompts)) for guide, weight in zip(guides, n.clip_model_weights)]
    use_cfg = n.guidance_scale != 1.0
    shape = (n.batch_size, frozen.config.in_channels, frozen.config.sample_size, frozen.config.sample_size)

    if n.start == "inversion":
        if photos is None or len(photos) != len(captions):
            raise ValueError("nada.start: inversion needs the captions' real photos, row for row")
        # DiffusionCLIP's precomputed latents: a fixed set of photos, each inverted once
        pool = inversion_pool(rng, len(captions), n.inversion_images)
        pool_captions = [captions[i] for i in pool]
        x0 = signed_range(np.asarray(photos)[pool])
        cond, uncond = pipe.encode_batch(pool_captions, 1, use_cfg)
        pool_x = ddim_invert(frozen, scheduler, x0, cond, uncond, n.guidance_scale, int(below[0]), n.inversion_steps)

    def draw():
        """A step's captions and x at the first adapted timestep, without gradient: ``noise``, the
        frozen UNet's DDIM steps above it from fresh noise (x̂0 is undefined at t = 999: see the
        module doc); ``inversion``, inverted photos of the pool."""
        if n.start == "inversion":
            pick = rng.integers(0, len(pool), n.batch_size)
            cond, uncond = pipe.encode_batch([pool_captions[i] for i in pick], 1, use_cfg)
            return pool_x[pick], cond, uncond
        batch = [captions[i] for i in rng.integers(0, len(captions), n.batch_size)]
        cond, uncond = pipe.encode_batch(batch, 1, use_cfg)
        with torch.no_grad():
            x = ddim_steps(frozen, scheduler, torch.randn(shape, generator=gen), cond, uncond, n.guidance_scale, above)
        return x, cond, uncond

    def finish(u: nn.Module, x, cond, uncond) -> torch.Tensor:
        return to_unit(ddim_steps(u, scheduler, x, cond, uncond, n.guidance_scale, below))

    def choose(step: int) -> tuple[list[str], dict[str, float]]:
        x, cond, uncond = draw()
        return select_layers(unet, names, n.k, lambda u: finish(u, x, cond, uncond),
                             [(g, w, tgt) for g, w, _, tgt in losses], n.select_iters, n.select_lr, n.layer_unit,
                             n.layer_score)

    chosen, scores = choose(0)
    selections = [{"step": 0, "chosen": chosen, "scores": scores}]
    set_trainable(unet, units, chosen)
    # One optimiser over every unit: a unit not chosen at a step has no gradient, so Adam skips it
    params = [p for name in names for p in units[name].parameters()]
    optimizer = torch.optim.Adam(params, lr=n.lr, betas=(0.0, 0.99))
    ever = set(chosen)
    if snapshot is not None:
        snapshot(0, trained_state(unet, units, sorted(ever)))
    curve = []
    bar = tqdm(range(1, n.steps + 1), desc="train NADA", unit="step", mininterval=5, disable=not progress)
    for step in bar:
        if n.reselect_every and step > 1 and (step - 1) % n.reselect_every == 0:
            chosen, scores = choose(step)
            selections.append({"step": step, "chosen": chosen, "scores": scores})
            set_trainable(unet, units, chosen)
            ever |= set(chosen)
        x, cond, uncond = draw()
        with torch.no_grad():
            frozen_images = finish(frozen, x, cond, uncond)
            frozen_embs = [guide.image_embeddings(frozen_images) for guide, *_ in losses]
        images = finish(unet, x, cond, uncond)
        embs = [guide.image_embeddings(images) for guide, *_ in losses]
        loss_dir = weighted_sum([(w, directional_loss(emb, frozen_emb, direction))
                                 for (_, w, direction, _), emb, frozen_emb in zip(losses, embs, frozen_embs)])
        loss_global = weighted_sum([(w, global_loss(emb, target)) for (_, w, _, target), emb in zip(losses, embs)])
        loss_clip = loss_global if n.loss == "global" else loss_dir
        loss_l1 = F.l1_loss(images, frozen_images)
        loss = loss_clip + n.l1_weight * loss_l1 if n.l1_weight else loss_clip
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            target, emb, frozen_emb = losses[0][3], embs[0].detach(), frozen_embs[0]
            curve.append({"step": step, "loss": loss.item(), "directional": loss_dir.item(), "l1": loss_l1.item(),
                          "global": loss_global.item(),
                          "clip_target": float((emb @ target).mean()),
                          "clip_target_frozen": float((frozen_emb @ target).mean())})
        bar.set_postfix(loss=f"{curve[-1]['directional']:.3f}")
        if snapshot is not None and (step % n.eval_every == 0 or step == n.steps):
            snapshot(step, trained_state(unet, units, sorted(ever)))
    unet.requires_grad_(False)
    summary = {"units": names, "layer_unit": n.layer_unit, "layer_score": n.layer_score, "chosen": chosen, "scores": scores,
               "adapted_from": t0, "frozen_timesteps": [int(t) for t in above],
               "trained_timesteps": [int(t) for t in below], "loss": n.loss, "start": n.start,
               "trained_units": sorted(ever), "selections": selections,
               "source_templates": templates(cfg, "source"), "target_templates": templates(cfg, "target"),
               "curve": curve}
    return unet.eval(), summary


def load_snapshot(unet: nn.Module, path: Path) -> nn.Module:
    """``unet`` with the trained units' weights of a snapshot file loaded (strictly: every key must exist)."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    own = unet.state_dict()
    missing = sorted(set(state) - set(own))
    if missing:
        raise InputError(f"{path}: weights {missing[:3]} are not the UNet's")
    unet.load_state_dict(state, strict=False)
    return unet


def snapshot_files(folder: Path) -> dict[int, Path]:
    """Step -> snapshot file of a ``snapshots/`` folder, in step order."""
    files = sorted(Path(folder).glob("step_*.safetensors"))
    return {int(p.stem.split("_")[1]): p for p in files}


def run(cfg: DictConfig) -> dict[str, Path]:
    """Adapt ``nada.generator`` from ``nada.source`` to ``nada.target``; save the pipeline and snapshots."""
    import mlflow
    from safetensors.torch import save_file

    from synrep.diffusion.clip_guidance import load_guide
    from synrep.diffusion.clip_model import check_clip_folder
    from synrep.diffusion.pipelines import model_folder

    torch.set_num_threads(cfg.threads)
    n = cfg.nada
    torch.manual_seed(n.seed)
    out = Path(n.output_dir)
    folder = model_folder(n.generator, "nada.generator")
    kind = json.loads((folder / "model_index.json").read_text()).get("_class_name")
    if kind != "ToyGlidePipeline":
        raise ConfigError(f"config key 'nada.generator': {folder} is a {kind}, not a ToyGlidePipeline (the toy generator)")
    pipe = ToyGlidePipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    guides = [load_guide(str(check_clip_folder(path, f"nada.clip_models[{i}]"))) for i, path in enumerate(n.clip_models)]
    split = toyworld.load_split(cfg, "train")
    captions = [str(c) for c in split["captions"]]
    start = time.time()
    with mlflow_run(cfg, "train_nada", sections=("nada",)) as run_info:
        with atomic_dir(out / "snapshots") as snaps:
            def snapshot(step: int, state: dict) -> None:
                with atomic_path(snaps / SNAPSHOT.format(step)) as tmp:
                    save_file(state, str(tmp))

            unet, summary = train(cfg, pipe, guides, captions, snapshot, photos=split["images"])
        seconds = time.time() - start
        summary.update({"steps": n.steps, "seconds": round(seconds, 1), "seconds_per_step": round(seconds / n.steps, 3),
                        "source": n.source, "target": n.target, "generator": str(n.generator),
                        "clip_models": [str(c) for c in n.clip_models],
                        "clip_model_weights": [float(w) for w in n.clip_model_weights], "mlflow_run_id": run_info.info.run_id})
        adapted = ToyGlideAdaptedPipeline(unet=unet, scheduler=pipe.scheduler, text_encoder=pipe.text_encoder,
                                          tokenizer=pipe.tokenizer, source_unet=pipe.unet,
                                          adapted_from=summary["adapted_from"])
        # pipeline, recipe and curve swapped in together: a killed job leaves no folder without them
        with atomic_dir(out / "generator") as tmp:
            adapted.save_pretrained(tmp, safe_serialization=True)
            save_resolved(cfg, tmp, "recipe.yaml")
            write_json(tmp / "training.json", summary)
        for row in summary["curve"]:
            mlflow.log_metrics({k: v for k, v in row.items() if k != "step"}, step=row["step"])
        mlflow.log_param("nada.chosen_units", ",".join(summary["chosen"]))
        mlflow.log_metric("seconds_per_step", summary["seconds_per_step"])
        mlflow.log_artifact(str(out / "generator" / "training.json"))
    print(f"NADA {n.source} -> {n.target}: trained {', '.join(summary['trained_units'])}; directional loss "
          f"{summary['curve'][0]['directional']:.3f} -> {summary['curve'][-1]['directional']:.3f} in {seconds:.0f}s")
    return {"model": out / "generator", "summary": out / "generator" / "training.json", "snapshots": out / "snapshots"}
