"""The numbers docs/nada.md states about the models behind StyleGAN-NADA on the toy world, computed.

    python scripts/nada_checks.py [config overrides...]   (e.g. experiment=toy_adaptation paths.data_dir=...)

Prints markdown tables (with date and machine). It writes nothing into a run's folders: where
``nada.domain_classifier`` holds no classifier of this config's recipe, it trains one for its own
tables and keeps it unsaved.

1. the frozen generator's DDIM chain of ``nada.ddim_steps`` steps at ``nada.guidance_scale``, per
   timestep: ᾱ_t, the gain 1/√ᾱ_t of x̂0 = (x − √(1−ᾱ) ε)/√ᾱ, the median |x̂0| before the
   scheduler's clamp to [−1, 1] and the share of its pixels clamped; which UNet takes the step
   under ``nada.min_alpha_bar``;
2. the chain's sensitivity: the RMS change of its output images when one unit's weights change by a
   relative 1e-3 (random signs), with every step by the changed UNet and with the steps above the
   switch by the frozen one (as ``train_nada`` trains);
3. the toy CLIP on real pairs from the source to each domain (the same attributes and jitter,
   rendered in both): the mean cos(ΔI, ΔT) under NADA's text direction and the mean |ΔI| (unit
   embeddings), so that the target's row can be read against the other domains';
4. with ``--classifier``: the domain classifier in ``nada.domain_classifier`` on held-out images:
   the share of each negative kind put in the reject class, and of each real domain's test images;
5. with ``--inverted-photos``: the adapted generator in ``nada.output_dir`` used as DiffusionCLIP
   uses its model: real train photos that ``nada.start: inversion`` did not train from, each
   DDIM-inverted by the frozen UNet to the first adapted step and finished by the frozen and by the
   adapted UNet; per finish, ``nada_quality``'s measurement against the frozen finish (the domain
   classifier's shares, the judge's colour and shape kept, cos(ΔI, ΔT));
6. with ``--pixels``: what the adapted generator in ``nada.output_dir`` changes in the pixels, against
   real test images of each domain: the background's brightness and the share of light ones (the
   2-pixel border, mostly background: an object reaches it only at its edge), the share of
   near-white pixels (paper) and of strongly coloured ones (the object's paint: filled in a photo, one pixel wide in a drawing), on
   ``nada_quality``'s captions and noises, frozen and adapted, the adapted ones also split by their
   frozen sample's background (dark or light); beside each, the domain classifier's reading; then the
   frozen and adapted samples counted by border brightness (the bins of ``BORDER_BINS``);
7. with ``--background``: where the frozen chain of ``nada.ddim_steps`` steps settles the
   background: per timestep, how well the border of the frozen UNet's x̂0 predicts the final sample's;
8. with ``--pixel-summary VARIANT=FILE ...``: saved ``--pixels`` tables of several runs (seeds), per
   variant the mean and 95 % interval of every column over its runs;
9. with ``--between``: the two changes that make a drawing of a photo (paper for the background, the
   object's outline for its fill), each alone and both, on real renders of the same draws, measured as
   ``nada_quality`` measures an adapted sample with the photo as its frozen sample, split by background;
10. with ``--sweep-summary LABEL=FILE ...``: the background sweeps of saved ``--between`` outputs
   (one a CLIP, say) side by side: per sweep, from dark and from light photos, its first peak (the
   first level whose score is above the next level's), the lowest score after it, and the first
   level after that low whose score passes the peak again; with ``--plot``, the sweeps as a figure;
11. with ``--world-borders``: the world's real train photos (under ``paths.data_dir``, as
   ``toyworld.dark_background`` and ``light_background`` drew them) counted by border brightness in
   steps of 0.05: which greys the CLIP trained on them has seen;
12. with ``--leverage``: each unit's first-order leverage on the background, on the training's
   chain (frozen above ``nada.min_alpha_bar``, the UNet being trained below) from seeded noise and
   train captions: the norm of grad(border brightness) * weights over the unit (how far the mean
   border of the dark-background samples, and of the light ones, can move per relative change of the
   unit's weights), beside how often the run in ``nada.output_dir``, when there is one, chose it;
13. with ``--brighten``: the adapted samples of the run in ``nada.output_dir`` with their own
   unpainted pixels brightened step by step: does the CLIP's direction reward brightening the
   background of the samples the training left, and would the domain classifier then read them as
   the target; ``--brighten-summary VARIANT=FILE ...`` sums saved outputs of several runs.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from machine import machine  # noqa: E402  (benchmarks/machine.py: the benchmark tables' machine line)

from synrep.config import load_config  # noqa: E402
from synrep.data import toyworld  # noqa: E402
from synrep.diffusion.clip_guidance import load_guide  # noqa: E402
from synrep.diffusion.prediction import predicted_original, prediction_type  # noqa: E402
from synrep.diffusion.toy.pipeline import ToyGlidePipeline, guided_noise  # noqa: E402
from synrep.fileio import write_figure  # noqa: E402
from synrep.pixels import signed_range, unit_range  # noqa: E402
from synrep.recipes import nada, nada_layers, nada_loss  # noqa: E402


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def x0_estimate(scheduler, output: torch.Tensor, x: torch.Tensor, t) -> torch.Tensor:
    """x̂0 before the scheduler's clamp, from the UNet's (guided) output at x_t."""
    return predicted_original(prediction_type(scheduler), output, x, scheduler.alphas_cumprod[int(t)])


def frozen_chain(cfg, pipe, captions, n: int, seed: int) -> tuple[list[tuple[int, torch.Tensor]], torch.Tensor]:
    """The frozen generator's DDIM chain of ``nada.ddim_steps`` steps at ``nada.guidance_scale`` from
    seeded noise, on the first ``n`` captions: ([(t, x̂0 before clamping)] per step, the final sample)."""
    scheduler = nada.ddim_scheduler(pipe, cfg.nada.ddim_steps)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, 3, pipe.unet.config.sample_size, pipe.unet.config.sample_size), generator=gen)
    cond, uncond = pipe.encode_batch(captions[:n], 1, True)
    states, pooled = torch.cat([uncond[0], cond[0]]), torch.cat([uncond[1], cond[1]])
    steps = []
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = guided_noise(*pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=states,
                                          class_labels=pooled).sample.chunk(2), cfg.nada.guidance_scale)
            steps.append((int(t), x0_estimate(scheduler, out, x, t)))
            x = scheduler.step(out, t, x, eta=0.0, return_dict=False)[0]
    return steps, x


def chain_table(cfg, pipe, captions, n: int) -> str:
    scheduler = nada.ddim_scheduler(pipe, cfg.nada.ddim_steps)
    t0 = nada.adapted_from(scheduler, cfg.nada.min_alpha_bar)
    rows = []
    for t, x0 in frozen_chain(cfg, pipe, captions, n, seed=0)[0]:
        a = scheduler.alphas_cumprod[t]
        rows.append([t, f"{float(a):.3g}", f"{float(a.rsqrt()):.3g}", f"{float(x0.abs().median()):.3g}",
                     f"{float((x0.abs() > 1).float().mean()):.3f}", "frozen" if t > t0 else "adapted"])
    return (f"DDIM chain, {cfg.nada.ddim_steps} steps, w = {cfg.nada.guidance_scale:g}, {n} train captions; "
            f"nada.min_alpha_bar = {cfg.nada.min_alpha_bar:g}: the adapted UNet at t <= {t0}\n\n"
            + table(["t", "ᾱ_t", "1/√ᾱ_t", "median abs(x̂0) before clamping", "share clamped", "UNet"], rows))


def background_table(cfg, pipe, captions, n: int) -> str:
    """Where the frozen chain settles the background: at each timestep of the training's DDIM
    chain, the border brightness of the frozen UNet's x̂0 (clamped, as the scheduler does) against
    the final sample's, and how often both fall on the same side of 0.45 (between the world's dark
    backgrounds, under 0.28, and its light ones, over 0.62). The adapted UNet can change the
    background only from its first step on; what x_t already fixes, it must undo."""
    scheduler = nada.ddim_scheduler(pipe, cfg.nada.ddim_steps)
    t0 = nada.adapted_from(scheduler, cfg.nada.min_alpha_bar)
    steps, x = frozen_chain(cfg, pipe, captions, n, seed=2)

    def border(images: torch.Tensor) -> np.ndarray:
        return border_brightness(np.asarray(nada.to_unit(images).permute(0, 2, 3, 1) * 255))

    final = border(x)
    times, borders = [t for t, _ in steps], [border(x0.clamp(-1, 1)) for _, x0 in steps]
    rows = []
    for t, at_t in zip(times, borders):
        a = float(scheduler.alphas_cumprod[t])
        rows.append([t, f"{a:.3g}", "frozen" if t > t0 else "adapted", f"{np.corrcoef(at_t, final)[0, 1]:.3f}",
                     f"{float(np.abs(at_t - final).mean()):.3f}", f"{float(((at_t > 0.45) == (final > 0.45)).mean()):.3f}"])
    return (f"Where the frozen DDIM chain ({cfg.nada.ddim_steps} steps, w = {cfg.nada.guidance_scale:g}, {n} train "
            f"captions) settles the background: the border brightness of x̂0 at each step against the final "
            f"sample's (share light at the end: {float((final > 0.45).mean()):.3f}); nada.min_alpha_bar = "
            f"{cfg.nada.min_alpha_bar:g}: the adapted UNet at t <= {t0}\n\n"
            + table(["t", "ᾱ_t", "UNet", "correlation with the final border", "mean abs difference",
                     "same side of 0.45"], rows))


def sensitivity_table(cfg, pipe, captions, n: int, seeds: int = 3) -> str:
    scheduler = nada.ddim_scheduler(pipe, cfg.nada.ddim_steps)
    t0 = nada.adapted_from(scheduler, cfg.nada.min_alpha_bar)
    units = nada_layers.layer_units(pipe.unet, cfg.nada.layer_unit)
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn((n, 3, pipe.unet.config.sample_size, pipe.unet.config.sample_size), generator=gen)
    cond, uncond = pipe.encode_batch(captions[:n], 1, True)
    w = cfg.nada.guidance_scale
    rows = []
    with torch.no_grad():
        base_all = nada.ddim_chain(pipe.unet, scheduler, noise, cond, uncond, w)
        base_split = nada.ddim_chain(pipe.unet, scheduler, noise, cond, uncond, w, source=pipe.unet, adapted_from_t=t0)
        for name in list(units)[:: max(1, len(units) // 6)]:
            changes = {"all": [], "split": []}
            for s in range(seeds):
                moved = copy.deepcopy(pipe.unet)
                g = torch.Generator().manual_seed(100 + s)
                for p in nada_layers.layer_units(moved, cfg.nada.layer_unit)[name].parameters():
                    p.mul_(1 + 1e-3 * (torch.randint(0, 2, p.shape, generator=g) * 2 - 1))
                out_all = nada.ddim_chain(moved, scheduler, noise, cond, uncond, w)
                out_split = nada.ddim_chain(moved, scheduler, noise, cond, uncond, w, source=pipe.unet, adapted_from_t=t0)
                changes["all"].append(float((out_all - base_all).pow(2).mean().sqrt()))
                changes["split"].append(float((out_split - base_split).pow(2).mean().sqrt()))
            rows.append([name, f"{np.mean(changes['all']):.2g}", f"{np.mean(changes['split']):.2g}"])
    return (f"RMS change of the chain's images ([0, 1]) when one unit's weights change by a relative 1e-3, "
            f"{n} noises, mean of {seeds} draws\n\n"
            + table(["unit", "every step by the changed UNet", f"steps above t = {t0} frozen"], rows))


def clip_pairs_table(cfg, guide, n: int) -> str:
    """cos(ΔI, ΔT) of NADA's text direction (source -> target) against the image direction from the
    source to every domain of the world, on real renders of the same attributes and jitter: how
    much the toy CLIP's direction tells the target domain from the others."""
    rng = np.random.default_rng([cfg.nada.seed, 7])
    attrs = toyworld.sample_attributes(cfg, n, rng)
    seeds = rng.integers(0, 2**63, n)
    objects = nada.objects(cfg)
    direction = nada_loss.text_direction(guide, nada.prompts(nada.templates(cfg, "source"), objects),
                                    nada.prompts(nada.templates(cfg, "target"), objects))

    def embed(domain: str) -> torch.Tensor:
        images = np.stack([toyworld.to_uint8(toyworld.render(a, cfg, np.random.default_rng(int(s)), domain))
                           for a, s in zip(attrs, seeds)])
        with torch.no_grad():
            return guide.image_embeddings(unit_range(images))

    source = embed(cfg.nada.source)
    dark = torch.tensor([a.background == 0 for a in attrs])
    rows = []
    for domain in ["photo", *cfg.toyworld.domains]:
        if domain == cfg.nada.source:
            continue
        delta = embed(domain) - source
        cos = (delta @ direction) / delta.norm(dim=-1)
        label = f"{cfg.nada.source} -> {domain}" + (" (the target)" if domain == cfg.nada.target else "")
        # the target also split by the source image's background: is the text direction followed
        # by real pairs from a dark background as much as from a light one?
        subsets = [("", slice(None))] + ([(", dark background", dark), (", light background", ~dark)]
                                          if domain == cfg.nada.target else [])
        for suffix, which in subsets:
            norm = delta[which].norm(dim=-1)
            rows.append([label + suffix, f"{float(cos[which].mean()):.3f}", f"{float(cos[which].std()):.3f}",
                         f"{float(norm.mean()):.3f}", f"{float(norm.std()):.3f}"])
    return (f"The toy CLIP on {n} real renders in each domain (same attributes and jitter), against NADA's text "
            f"direction {cfg.nada.source} -> {cfg.nada.target}\n\n"
            + table(["image pairs", "mean cos(ΔI, ΔT)", "sd", "mean abs(ΔI) (unit embeddings)", "sd"], rows))


def between_table(cfg, n: int, plot: str | None = None) -> str:
    """The two changes that make a drawing of a photo, one at a time (``toyworld.render``'s ``paper``
    and ``outline``), measured as ``nada_quality`` measures an adapted sample against its frozen
    one, with the photo of the same draws in the frozen sample's place: what the toy CLIP's direction,
    the domain classifier and the judge make of the images between the two domains."""
    from synrep.evaluation import domain_classifier as dc
    from synrep.evaluation import nada_quality
    from synrep.evaluation.attribute_classifier import judge

    if (cfg.nada.source, cfg.nada.target) != ("photo", "drawing"):
        raise SystemExit(f"nada_checks --between: the steps from a photo to a drawing, not from "
                         f"nada.source={cfg.nada.source!r} to nada.target={cfg.nada.target!r}")
    rng = np.random.default_rng([cfg.nada.seed, 8])
    attrs = toyworld.sample_attributes(cfg, n, rng)
    seeds = rng.integers(0, 2**63, n)
    dark = np.array([a.background == 0 for a in attrs])

    def rendered(**kw) -> np.ndarray:
        return np.stack([toyworld.to_uint8(toyworld.render(a, cfg, np.random.default_rng(int(s)), **kw))
                         for a, s in zip(attrs, seeds)])

    sets = {"photo (the reference)": rendered(), "the photo's fill on paper": rendered(paper=True),
            "its outline on the photo's background": rendered(outline=True),
            "drawing (both changes)": rendered(domain="drawing"), "negative": rendered(domain="negative")}
    domains, _, origin = dc.load_or_train(cfg, keep=False)
    classifiers = (domains, judge(cfg)[0])
    guide = load_guide(str(cfg.nada.clip_models[0]))
    direction = nada_quality.text_direction(cfg, guide)
    names = dc.domain_names(cfg)
    photos = nada_quality.reference(sets["photo (the reference)"], classifiers, guide)

    def against_photos(images: np.ndarray, which: np.ndarray) -> dict[str, float]:
        """nada_quality's scores of ``images[which]``, the photos of the same draws as the frozen samples."""
        reference = {"read": {k: v[which] for k, v in photos["read"].items()},
                     "embeddings": photos["embeddings"][torch.from_numpy(which)]}
        return nada_quality.scores(cfg, images[which], reference, classifiers, guide, direction,
                                   names.index(cfg.nada.target))

    rows = []
    for name, images in sets.items():
        for part, which in (("all", np.ones(n, bool)), ("dark", dark), ("light", ~dark)):
            got = against_photos(images, which)
            stats = pixel_stats(images[which])
            rows.append([name, part, int(which.sum()), f"{got['clip_direction']:.3f}",
                         *(f"{got[f'domain_{d}']:.3f}" for d in names), f"{got['kept_colour']:.3f}",
                         f"{got['kept_shape']:.3f}", f"{stats['near-white']:.3f}", f"{stats['coloured']:.3f}"])
    # the background alone, from black to white: is there a brightness between the photo's and paper
    # that the CLIP's direction does not reward, or that the classifier reads as another domain?
    levels = np.round(np.linspace(0, 1, 21), 2)
    sweep = []
    for level in levels:
        images = rendered(paper=float(level))
        sweep.append([f"{level:.2f}", against_photos(images, dark), against_photos(images, ~dark)])
    shown = ("clip_direction", f"domain_{cfg.nada.target}", "domain_negative", f"domain_{dc.REJECT}")
    sweep_rows = [[level, *(f"{got[key]:.3f}" for key in shown for got in (d, li))] for level, d, li in sweep]
    if plot:
        plot_between(sweep, levels, shown, plot, cfg.toyworld)
    return (f"Between a photo and a drawing: {n} real renders of the same attributes and draws, each measured as "
            f"nada_quality measures an adapted sample, against the photo (cos(dI, dT) of its CLIP embedding minus "
            f"the photo's with NADA's text direction; the domain classifier ({origin}); colour and shape kept: the "
            f"judge reads what it reads on the photo; near-white and coloured pixels as --pixels)\n\n"
            + table(["images", "background", "n", "cos(dI, dT)", *(f"read: {d}" for d in names), "colour kept",
                     "shape kept", "near-white", "coloured"], rows)
            + "\n\nThe photo's fill on a uniform background of each brightness (paper: 0.85-0.97), from dark and from "
            "light photos\n\n"
            + table(["background brightness",
                     *(f"{label}, from {bg}" for label in ("cos(dI, dT)", f"read: {cfg.nada.target}", "read: negative",
                                                           f"read: {dc.REJECT}") for bg in ("dark", "light"))],
                    sweep_rows))


def plot_between(sweep, levels, shown, path: str, world) -> None:
    """The background sweep of ``between_table``: cos(ΔI, ΔT) and the domain classifier's reading by
    the brightness of the background under the photo's fill, from dark and from light photos, with
    the world's bands of brightness shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), sharex=True)
    for ax in axes:
        # the world's backgrounds: dark photos, light photos, a drawing's paper (overlapping the light ones)
        for (lo, hi), label, grey in ((world.dark_background, "dark photos", "0.9"),
                                      (world.light_background, "light photos", "0.9"),
                                      ((0.85, 0.97), "paper", "0.8")):
            ax.axvspan(lo, hi, color=grey, zorder=0)
            x = 0.93 if label == "paper" else min((lo + hi) / 2, 0.7)  # the light label clear of paper's
            ax.text(x, 1.02, label, ha="center", va="bottom", fontsize=7, transform=ax.get_xaxis_transform())
    for side, style in ((1, "-"), (2, "--")):
        origin = "from dark photos" if side == 1 else "from light photos"
        axes[0].plot(levels, [row[side][shown[0]] for row in sweep], style, marker="o", color="k", label=origin)
        for key, colour in zip(shown[1:], ("tab:blue", "tab:red", "tab:gray")):
            axes[1].plot(levels, [row[side][key] for row in sweep], style, marker="o", color=colour,
                         label=f"{key.removeprefix('domain_')}, {origin}")
    axes[0].set(xlabel="background brightness under the photo's fill", ylabel="cos(ΔI, ΔT) from the photo")
    axes[0].axhline(0, color="0.5", lw=0.8)
    axes[1].set(xlabel="background brightness under the photo's fill", ylabel="share read by the domain classifier",
                ylim=(-0.02, 1.02))
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    write_figure(path, fig)


def classifier_table(cfg, n: int) -> str:
    from synrep.evaluation import domain_classifier as dc

    model, held_out, origin = dc.load_or_train(cfg, keep=False)
    names = dc.domain_names(cfg)
    reject = names.index(dc.REJECT)
    images, labels = dc.domain_data(cfg, "test")
    real = labels != reject
    rows = []
    for kind in dc.NEGATIVE_KINDS:
        made = dc.negatives(images[real], labels[real], n, seed=99, kinds=(kind,))
        rows.append([f"negative: {kind}", n, f"{float((dc.predict(model, made) == reject).mean()):.3f}"])
    predicted = dc.predict(model, images[real])
    for i, name in enumerate(names[:-1]):
        chosen = labels[real] == i
        rows.append([f"real {name} (test)", int(chosen.sum()), f"{float((predicted[chosen] == reject).mean()):.3f}"])
    return (f"The domain classifier ({origin}; held-out accuracy {held_out['accuracy']:.3f}): share put in "
            f"'{dc.REJECT}', held-out negatives of seed 99\n\n" + table(["images", "n", "rejected"], rows))


def inverted_photos_table(cfg, n: int) -> str:
    from synrep.evaluation import domain_classifier as dc
    from synrep.evaluation import nada_quality
    from synrep.evaluation.attribute_classifier import judge

    folder = Path(cfg.nada.output_dir) / "generator"
    pipe = nada.ToyGlideAdaptedPipeline.from_pretrained(folder)
    split = toyworld.load_split(cfg, "train")
    trained_from = nada.inversion_pool(np.random.default_rng(cfg.nada.seed), len(split["captions"]),
                                       cfg.nada.inversion_images)
    rows_left = np.setdiff1d(np.arange(len(split["captions"])), trained_from)
    picked = np.sort(np.random.default_rng(99).choice(rows_left, n, replace=False))
    photos = signed_range(split["images"][picked])
    cond, uncond = pipe.encode_batch([str(c) for c in split["captions"][picked]], 1, True)
    scheduler = nada.ddim_scheduler(pipe, cfg.nada.ddim_steps)
    _, below = nada.split_timesteps(scheduler, pipe.config.adapted_from)
    w = cfg.nada.guidance_scale
    with torch.no_grad():
        x_t0 = nada.ddim_invert(pipe.source_unet, scheduler, photos, cond, uncond, w, int(below[0]),
                                cfg.nada.inversion_steps)
        finishes = {name: nada.to_unit(nada.ddim_steps(unet, scheduler, x_t0, cond, uncond, w, below))
                    for name, unet in (("frozen UNet", pipe.source_unet), ("adapted UNet", pipe.unet))}
    domains, _, origin = dc.load_or_train(cfg, keep=False)
    classifiers = (domains, judge(cfg)[0])
    guide = load_guide(str(cfg.nada.clip_models[0]))
    as_uint8 = {k: (v.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8) for k, v in finishes.items()}
    frozen = nada_quality.reference(as_uint8["frozen UNet"], classifiers, guide)
    direction = nada_quality.text_direction(cfg, guide)
    names = dc.domain_names(cfg)
    rows = []
    for name, images in as_uint8.items():
        # the measurement nada_quality makes of samples from noise, against the frozen finish
        got = nada_quality.scores(cfg, images, frozen, classifiers, guide, direction, names.index(cfg.nada.target))
        l1 = float((finishes[name] - (photos + 1) / 2).abs().mean())
        rows.append([name, n, f"{l1:.3f}", *[f"{got[f'domain_{d}']:.3f}" for d in names],
                     f"{got['kept_colour']:.3f}", f"{got['kept_shape']:.3f}", f"{got['clip_direction']:.3f}"])
    return (f"Held-out train photos inverted to t = {int(below[0])} and finished ({folder}, trained with start "
            f"{json.loads((folder / 'training.json').read_text()).get('start', 'noise')}; domain classifier: "
            f"{origin}; kept: the judge's reading equals the frozen finish's)\n\n"
            + table(["finish", "n", "L1 to the photo", *names, "colour kept", "shape kept", "cos(dI, dT)"], rows))


PIXEL_STATS = ("border brightness", "light border", "near-white", "coloured")
BORDER_BINS = np.array([0.0, 0.28, 0.45, 0.65, 0.85, 1.0])
LIGHT_BORDER = 0.6  # a border above it is light: between the world's dark (< 0.28) and light (> 0.62) backgrounds


def border_frame(size: int) -> torch.Tensor:
    """bool [size, size]: an image's 2-pixel frame, where ``border_brightness`` reads the background."""
    frame = torch.ones((size, size), dtype=torch.bool)
    frame[2:-2, 2:-2] = False
    return frame


def border_brightness(images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, 3] -> [N]: the mean of each image's 2-pixel frame, mostly background (an
    object reaches it only at its edge)."""
    x = images.astype(np.float64) / 255.0
    return x[:, border_frame(x.shape[1]).numpy()].mean(axis=(1, 2))


def pixel_stats(images: np.ndarray) -> dict[str, float]:
    """uint8 [N, H, W, 3] -> the mean over images of (``PIXEL_STATS``): the border's brightness, whether
    it is light (> 0.6: the world draws backgrounds dark, under 0.28, or light, over 0.62; paper is
    0.85-0.97), the share of near-white pixels (every channel > 0.8) and of strongly coloured ones
    (max - min channel > 0.35)."""
    x = images.astype(np.float64) / 255.0
    border = border_brightness(images)
    values = (border.mean(), (border > LIGHT_BORDER).mean(), (x.min(axis=3) > 0.8).mean(),
              (x.max(axis=3) - x.min(axis=3) > 0.35).mean())
    return dict(zip(PIXEL_STATS, map(float, values)))


def frozen_and_adapted(cfg) -> dict[str, np.ndarray]:
    """uint8 samples of the frozen generator and of the adapted one in ``nada.output_dir``, as
    ``nada_quality`` samples them: its captions and noises, the generation sampler."""
    from synrep.diffusion.pipelines import load_pipeline
    from synrep.diffusion.sampling import sample_images
    from synrep.evaluation import nada_quality
    from synrep.generation.source_images import sampling_of
    from synrep.settings import to_dict

    g = cfg.generation
    captions, _, _, seeds = nada_quality.eval_set(cfg)
    sets = {}
    for name, source in (("frozen generator", cfg.nada.generator),
                         ("adapted generator", Path(cfg.nada.output_dir) / "generator")):
        pipe = load_pipeline(str(source), g.sampler, g.dtype, "cpu")
        pipe.set_progress_bar_config(disable=True)
        sets[name] = sample_images(pipe, captions, seeds, float(cfg.nada.guidance_scale), sampling_of(to_dict(g)),
                                   images_per_prompt=cfg.nada.eval_images_per_caption)
    return sets


def brightened(images: np.ndarray, delta: float) -> np.ndarray:
    """uint8 [N, H, W, 3]: each image's unpainted pixels (max - min channel < 0.2: background, not
    the object's paint) raised by ``delta`` (clipped at 1), the painted ones unchanged."""
    x = images.astype(np.float32) / 255.0
    unpainted = (x.max(axis=3) - x.min(axis=3) < 0.2)[..., None]
    return toyworld.to_uint8(x + delta * unpainted)


def brighten_summary(pairs: list[str]) -> str:
    """Saved ``--brighten`` outputs of several runs (``VARIANT=FILE``): per variant and half (from a
    dark, from a light background), the sample-weighted means at no brightening, at the delta of the
    lowest cos(ΔI, ΔT) and at the largest delta."""
    sums: dict[tuple[str, str], dict] = {}
    for variant, file in saved_outputs(pairs, "--brighten"):
        tables = read_tables(file)
        if len(tables) < 2 or "delta" not in tables[0][0]:
            raise SystemExit(f"nada_checks: {file}: not an output of --brighten")
        read_key = next(k for k in tables[0][0] if k.startswith("read: ")).rsplit(",", 1)[0]
        for half in ("dark", "light"):
            n = int(next(row["n"] for row in tables[1] if row["samples"] == half))
            entry = sums.setdefault((variant, half), {"n": 0, "runs": 0, "by_delta": {}})
            entry["n"] += n
            entry["runs"] += 1
            for row in tables[0]:
                got = entry["by_delta"].setdefault(row["delta"], np.zeros(3))
                got += n * np.array([float(row[f"{k}, {half}"]) for k in ("border", "cos(dI, dT)", read_key)])
    rows = []
    for (variant, half), entry in sums.items():
        means = {d: v / entry["n"] for d, v in entry["by_delta"].items()}
        first, last = min(means, key=float), max(means, key=float)
        low = min(means, key=lambda d: means[d][1])
        border, cos, read = zip(*(means[d] for d in (first, low, last)))
        at = [f"{c:.3f} (border {b:.2f}; {r:.3f})" for b, c, r in zip(border, cos, read)]
        rows.append([variant, half, entry["runs"], entry["n"], at[0], f"{low}: {at[1]}", f"{last}: {at[2]}"])
    return ("Saved --brighten outputs by variant: cos(dI, dT) (mean border brightness; share read as the target) with "
            "no brightening, at the delta of the lowest cos, and at the largest delta; means over the samples of "
            "the variant's runs\n\n"
            + table(["variant", "from a background", "runs", "n", "as sampled", "lowest", "brightest"], rows))


def brighten_table(cfg) -> str:
    """The adapted samples' own backgrounds brightened: for each sample, its pixels without paint
    (max - min channel < 0.2) raised by delta; cos(ΔI, ΔT) against its frozen sample and the domain
    classifier's reading at each delta, split by the frozen sample's background as --pixels splits."""
    from synrep.evaluation import domain_classifier as dc
    from synrep.evaluation import nada_quality

    sets = frozen_and_adapted(cfg)
    light = border_brightness(sets["frozen generator"]) > LIGHT_BORDER
    adapted = sets["adapted generator"]
    guide = load_guide(str(cfg.nada.clip_models[0]))
    direction = nada_quality.text_direction(cfg, guide)
    model, _, origin = dc.load_or_train(cfg, keep=False)
    target = dc.domain_names(cfg).index(cfg.nada.target)
    with torch.no_grad():
        frozen = guide.image_embeddings(unit_range(sets["frozen generator"]))
    deltas = np.round(np.arange(0, 0.65, 0.05), 2)
    cos, read, border = [], [], []
    for delta in deltas:
        images = brightened(adapted, delta)
        with torch.no_grad():
            cos.append(nada_quality.direction_cos(guide.image_embeddings(unit_range(images)), frozen, direction).numpy())
        read.append(dc.predict(model, images) == target)
        border.append(border_brightness(images))
    cos, read, border = np.stack(cos), np.stack(read), np.stack(border)  # [delta, sample]
    rows = [[f"{delta:.2f}", *(f"{v:.3f}" for half in (~light, light)
                               for v in (border[i, half].mean(), cos[i, half].mean(), read[i, half].mean()))]
            for i, delta in enumerate(deltas)]
    summary = []
    for label, half in (("dark", ~light), ("light", light)):
        best = cos[:, half].argmax(axis=0)
        summary.append([label, int(half.sum()), f"{float((cos[1, half] > cos[0, half]).mean()):.3f}",
                        f"{float((best > 0).mean()):.3f}", f"{float(np.median(deltas[best])):.2f}",
                        f"{float(read[best, np.flatnonzero(half)].mean()):.3f}"])
    return (f"The adapted samples ({cfg.nada.output_dir}) with their unpainted pixels (max - min channel < 0.2) "
            f"brightened by delta: mean border brightness, cos(dI, dT) against the frozen sample and the share the "
            f"domain classifier ({origin}) reads as {cfg.nada.target}, from a dark and from a light frozen "
            f"background\n\n"
            + table(["delta", *(f"{stat}, {half}" for half in ("dark", "light")
                                for stat in ("border", "cos(dI, dT)", f"read: {cfg.nada.target}"))], rows)
            + "\n\nPer sample: does a little brightening (0.05) raise cos(dI, dT), and which delta scores best\n\n"
            + table(["samples", "n", "0.05 raises cos", "best delta > 0", "median best delta",
                     f"read: {cfg.nada.target} at the best delta"], summary))


def pixels_table(cfg) -> str:
    from synrep.evaluation import domain_classifier as dc
    from synrep.evaluation import nada_quality

    folder = Path(cfg.nada.output_dir) / "generator"
    dark, light_range = cfg.toyworld.dark_background, cfg.toyworld.light_background
    sets = frozen_and_adapted(cfg)
    light = border_brightness(sets["frozen generator"]) > LIGHT_BORDER
    sets["adapted, from a dark background"] = sets["adapted generator"][~light]
    sets["adapted, from a light background"] = sets["adapted generator"][light]
    # how far each adapted sample went along the CLIP's text direction from its frozen sample
    guide = load_guide(str(cfg.nada.clip_models[0]))
    with torch.no_grad():
        cos = nada_quality.direction_cos(guide.image_embeddings(unit_range(sets["adapted generator"])),
                                         guide.image_embeddings(unit_range(sets["frozen generator"])),
                                         nada_quality.text_direction(cfg, guide)).numpy()
    along = {"adapted generator": cos, "adapted, from a dark background": cos[~light],
             "adapted, from a light background": cos[light]}
    sets["real photos (test)"] = toyworld.load_split(cfg, "test")["images"]
    domains = toyworld.load_split(cfg, "domains_test")
    for i, name in enumerate(cfg.toyworld.domains):
        sets[f"real {name} (test)"] = domains["images"][domains["domain"] == i]
    model, _, origin = dc.load_or_train(cfg, keep=False)
    names = dc.domain_names(cfg)
    rows = []
    for name, images in sets.items():
        read = dc.predict(model, images)
        rows.append([name, len(images), *(f"{v:.3f}" for v in pixel_stats(images).values()),
                     f"{float(along[name].mean()):.3f}" if name in along else "",
                     *(f"{float((read == i).mean()):.3f}" for i in range(len(names)))])
    # per sample: is the adapted samples' border brightness bimodal around the greys whose fill the
    # CLIP's direction scores below zero (--between's sweep: 0.45-0.65 from dark photos)?
    edges = BORDER_BINS
    counts = [[name, len(sets[name]), *np.histogram(border_brightness(sets[name]), bins=edges)[0].tolist()]
              for name in ("frozen generator", "adapted, from a dark background", "adapted, from a light background")]
    bins = [f"border {lo:.2f}-{hi:.2f}" for lo, hi in zip(edges[:-1], edges[1:])]
    return (f"Pixels of the adapted generator ({folder}) against real images (border = the 2-pixel frame, light "
            "border = its mean > 0.6, near-white = every channel > 0.8, coloured = max - min channel > 0.35; "
            "'from a dark/light background': the adapted samples whose frozen sample of the same noise has a "
            f"dark/light border; cos(dI, dT): of the adapted sample's CLIP embedding minus the frozen one's with NADA's "
            f"text direction), and the share of each the domain classifier ({origin}) reads as each domain\n\n"
            + table(["images", "n", *PIXEL_STATS, "cos(dI, dT)", *(f"read: {d}" for d in names)], rows)
            + f"\n\nSamples by border brightness (a dark photo's background is {dark[0]:g}-{dark[1]:g}, a light one's "
            f"{light_range[0]:g}-{light_range[1]:g}, paper 0.85-0.97)\n\n" + table(["samples", "n", *bins], counts))


def saved_outputs(pairs: list[str], flag: str) -> list[tuple[str, Path]]:
    """``LABEL=FILE`` arguments as (label, path), each FILE a saved output of ``flag``."""
    parsed = []
    for pair in pairs:
        label, sep, file = pair.partition("=")
        if not sep or not Path(file).is_file():
            raise SystemExit(f"nada_checks: {pair!r}: expected LABEL=FILE, FILE the saved output of {flag}")
        parsed.append((label, Path(file)))
    return parsed


def read_tables(path: Path) -> list[list[dict[str, str]]]:
    """The markdown tables in ``path`` (a saved output of this script), each as its rows as dicts."""
    tables, lines = [], path.read_text().splitlines() + [""]
    start = None
    for i, line in enumerate(lines):
        if line.startswith("| ") and start is None:
            start = i
        elif not line.startswith("| ") and start is not None:
            header = [c.strip() for c in lines[start].strip("|").split(" | ")]
            tables.append([dict(zip(header, (c.strip() for c in row.strip("|").split(" | "))))
                           for row in lines[start + 2:i]])
            start = None
    if not tables:
        raise SystemExit(f"nada_checks: {path}: no markdown table (save the output of --pixels there)")
    return tables


def pixel_summary(pairs: list[str]) -> str:
    """``--pixels`` tables of several runs (``VARIANT=FILE``, one file a seed) side by side: per
    variant and row, n summed over files and each other column's mean ± 95 % t-interval over them."""
    import polars as pl

    from synrep.tables import markdown_table, mean_ci

    rows, counts = [], []
    for variant, file in saved_outputs(pairs, "--pixels"):
        tables = read_tables(file)
        rows += [{"variant": variant, "file": str(file), **row} for row in tables[0]]
        # the samples by border brightness (saved tables from before it have none)
        counts += [{"variant": variant, **row} for row in tables[1]] if len(tables) > 1 else []
    df = pl.DataFrame(rows)
    columns = [c for c in df.columns if c not in ("variant", "file", "images", "n")]
    df = df.with_columns(pl.col("n").cast(pl.Int64),
                         *(pl.col(c).replace("", None).cast(pl.Float64) for c in columns))
    keys = ["variant", "images"]
    out = df.group_by(keys, maintain_order=True).agg(pl.len().alias("runs"), pl.col("n").sum())
    for column in columns:
        out = out.join(mean_ci(df, keys, column).select(*keys, pl.col("cell").alias(column)), on=keys, how="left",
                       maintain_order="left")
    summary = ("Pixels over runs (mean ± 95 % t-interval over the files of each variant; n: images summed)\n\n"
               + markdown_table(out))
    if not counts:
        return summary
    by_border = pl.DataFrame(counts)
    bins = [c for c in by_border.columns if c.startswith("border ")]
    by_border = (by_border.with_columns(*(pl.col(c).cast(pl.Int64) for c in ("n", *bins)))
                 .group_by(["variant", "samples"], maintain_order=True)
                 .agg(pl.len().alias("runs"), *(pl.col(c).sum() for c in ("n", *bins))))
    return (summary + "\n\nSamples by border brightness, summed over the files of each variant (of those that "
            "have the count)\n\n" + markdown_table(by_border))


def sweep_valley(levels: list[float], scores: list[float]) -> tuple[float, float, float, float, float | None]:
    """(peak level, peak score, lowest level after it, its score, first level after the low back above
    the peak, or None): the first local maximum along brightness and the valley behind it."""
    peak = next((i for i in range(len(scores) - 1) if scores[i] > scores[i + 1]), len(scores) - 1)
    low = min(range(peak, len(scores)), key=scores.__getitem__)
    back = next((levels[i] for i in range(low, len(scores)) if scores[i] > scores[peak]), None)
    return levels[peak], scores[peak], levels[low], scores[low], back


def sweep_summary(pairs: list[str], plot: str | None) -> str:
    """The background sweeps of saved ``--between`` outputs (``LABEL=FILE``): the valley of each
    from dark and from light photos, and with ``plot`` their cos(ΔI, ΔT) by brightness in one figure."""
    curves = {}
    for label, file in saved_outputs(pairs, "--between"):
        sweep = next((t for t in read_tables(file) if t and "background brightness" in t[0]), None)
        if sweep is None:
            raise SystemExit(f"nada_checks: {file}: no background sweep (save the output of --between there)")
        levels = [float(row["background brightness"]) for row in sweep]
        curves[label] = {side: (levels, [float(row[f"cos(dI, dT), from {side}"]) for row in sweep])
                         for side in ("dark", "light")}
    rows = []
    for label, sides in curves.items():
        for side, (levels, scores) in sides.items():
            peak_at, peak, low_at, low, back = sweep_valley(levels, scores)
            rows.append([label, side, f"{peak:.3f} at {peak_at:.2f}", f"{low:.3f} at {low_at:.2f}",
                         f"{peak - low:.3f}", "never" if back is None else f"{back:.2f}"])
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), sharey=True)
        for ax, side in zip(axes, ("dark", "light")):
            ax.axvspan(0.85, 0.97, color="0.85", zorder=0, label="a drawing's paper")
            ax.axhline(0, color="0.6", lw=0.8)
            for label, sides in curves.items():
                ax.plot(*sides[side], marker="o", ms=3, label=label)
            ax.set_title(f"the photo's fill on a uniform background, from {side} photos", fontsize=9)
            ax.set_xlabel("background brightness")
        axes[0].set_ylabel("cos(ΔI, ΔT) against the photo")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        write_figure(plot, fig)
    return ("The background sweeps of --between by CLIP: the first peak along brightness, the lowest score after it "
            "(the valley) and where the score first passes the peak again\n\n"
            + table(["sweep", "from photos", "first peak", "lowest after it", "depth", "back above the peak at"],
                    rows))


def border_leverage(cfg, pipe, captions, n: int) -> tuple[dict[str, dict[str, float]], torch.Tensor, int]:
    """({"dark"|"light": {unit: leverage}}, which samples have a dark border, the first adapted t):
    per unit, the L2 norm of grad(mean border brightness of the dark (light) samples) * weights, on
    the training's chain from seeded noise. A relative change d of the unit's weights (|d| = 1) moves
    that mean border by at most this much per unit of d, to first order."""
    scheduler = nada.ddim_scheduler(pipe, cfg.nada.ddim_steps)
    t0 = nada.adapted_from(scheduler, cfg.nada.min_alpha_bar)
    gen = torch.Generator().manual_seed(3)
    noise = torch.randn((n, 3, pipe.unet.config.sample_size, pipe.unet.config.sample_size), generator=gen)
    cond, uncond = pipe.encode_batch(captions[:n], 1, True)
    unet = copy.deepcopy(pipe.unet).requires_grad_(True)
    images = nada.ddim_chain(unet, scheduler, noise, cond, uncond, cfg.nada.guidance_scale, source=pipe.unet,
                             adapted_from_t=t0)
    border = images[:, :, border_frame(images.shape[-1])].mean(dim=(1, 2))  # border_brightness, differentiable
    dark = border.detach() < 0.45
    units = nada_layers.layer_units(unet, cfg.nada.layer_unit)
    leverage = {}
    for side, mask in (("dark", dark), ("light", ~dark)):
        unet.zero_grad(set_to_none=True)
        border[mask].mean().backward(retain_graph=True)
        with torch.no_grad():
            leverage[side] = {name: float(sum((p.grad * p).pow(2).sum() for p in unit.parameters() if p.grad is not None)
                                          ** 0.5) for name, unit in units.items()}
    return leverage, dark, t0


def leverage_table(cfg, pipe, captions, n: int) -> str:
    leverage, dark, t0 = border_leverage(cfg, pipe, captions, n)
    chosen, origin = {}, "no run"
    run_file = Path(cfg.nada.output_dir) / "generator" / "training.json"
    if run_file.is_file():
        selections = json.loads(run_file.read_text()).get("selections", [])
        for selection in selections:
            for name in selection["chosen"]:
                chosen[name] = chosen.get(name, 0) + 1
        origin = f"{run_file.parent}, {len(selections)} selections"
    top = {side: sorted(values, key=values.get, reverse=True)[:6] for side, values in leverage.items()}
    rows = [[name, f"{leverage['dark'][name]:.2e}", f"{leverage['light'][name]:.2e}",
             ", ".join(side for side in ("dark", "light") if name in top[side]), chosen.get(name, 0)]
            for name in leverage["dark"]]
    return (f"Each unit's leverage on the final samples' border brightness: the L2 norm over the unit of "
            f"grad * weights (the border's first-order change per relative change of the unit's weights), on the "
            f"chain with t > {t0} frozen, {len(dark)} noises and train captions ({int(dark.sum())} with a dark "
            f"border, under 0.45); 'top 6': among the six units of most leverage; 'chosen': selections of the unit "
            f"in the run ({origin})\n\n"
            + table(["unit", "leverage, dark samples", "leverage, light samples", "top 6", "chosen"], rows))


def world_borders_table(cfg) -> str:
    images = toyworld.load_split(cfg, "train")["images"]
    edges = np.round(np.linspace(0, 1, 21), 2)
    counts, _ = np.histogram(border_brightness(images), bins=edges)
    world = cfg.toyworld
    return (f"The world's train photos ({toyworld.world_dir(cfg)}, dark backgrounds {list(world.dark_background)}, "
            f"light {list(world.light_background)}) by border brightness\n\n"
            + table(["border brightness", "photos"],
                    [[f"{lo:.2f}-{hi:.2f}", int(c)] for lo, hi, c in zip(edges[:-1], edges[1:], counts)]))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classifier", action="store_true",
                        help="also the domain classifier (one trained now, not saved, where nada.domain_classifier "
                             "holds none of this config's recipe)")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--clip-only", action="store_true", help="only the toy CLIP's directions (3.)")
    parser.add_argument("--inverted-photos", action="store_true",
                        help="only the adapted generator in nada.output_dir on inverted held-out photos (5.)")
    parser.add_argument("--pixels", action="store_true",
                        help="only the adapted generator in nada.output_dir against real images, in pixels (6.)")
    parser.add_argument("--background", action="store_true",
                        help="only where the frozen chain settles the background (7.)")
    parser.add_argument("--between", action="store_true",
                        help="only the images between a photo and a drawing, one change at a time (9.)")
    parser.add_argument("--plot", metavar="PNG",
                        help="with --between or --sweep-summary: the background sweep(s) as a figure")
    parser.add_argument("--pixel-summary", nargs="+", metavar="VARIANT=FILE",
                        help="only the saved --pixels tables of several runs, per variant over its runs")
    parser.add_argument("--sweep-summary", nargs="+", metavar="LABEL=FILE",
                        help="only the background sweeps of saved --between outputs, side by side (10.)")
    parser.add_argument("--leverage", action="store_true",
                        help="only each unit's leverage on the background, beside the run's layer choice (12.)")
    parser.add_argument("--brighten", action="store_true",
                        help="only the adapted samples in nada.output_dir with their backgrounds brightened (13.)")
    parser.add_argument("--brighten-summary", nargs="+", metavar="VARIANT=FILE",
                        help="only saved --brighten outputs of several runs, per variant (13.)")
    parser.add_argument("--world-borders", action="store_true",
                        help="only the world's train photos counted by border brightness (11.)")
    args, overrides = parser.parse_known_args(argv)
    if args.brighten_summary:
        print(brighten_summary(args.brighten_summary))
        return
    if args.sweep_summary:
        print(sweep_summary(args.sweep_summary, args.plot))
        return
    if args.pixel_summary:
        print(pixel_summary(args.pixel_summary))
        return
    cfg = load_config(overrides)
    torch.set_num_threads(cfg.threads)
    print(f"# scripts/nada_checks.py, {datetime.datetime.now(datetime.timezone.utc):%H:%M} UTC, {machine()}, "
          f"{torch.get_num_threads()} thread(s)\n")
    if args.inverted_photos:
        print(inverted_photos_table(cfg, args.n))
        return
    if args.pixels:
        print(pixels_table(cfg))
        return
    if args.brighten:
        print(brighten_table(cfg))
        return
    if args.world_borders:
        print(world_borders_table(cfg))
        return
    if args.between:
        print(between_table(cfg, args.n, args.plot))
        return
    if args.leverage or args.background or not args.clip_only:
        pipe = ToyGlidePipeline.from_pretrained(cfg.nada.generator)
        pipe.unet.eval()
        captions = [str(c) for c in toyworld.load_split(cfg, "train")["captions"]]
    if args.leverage:
        print(leverage_table(cfg, pipe, captions, args.n))
        return
    if args.background:
        print(background_table(cfg, pipe, captions, args.n))
        return
    if not args.clip_only:
        print(chain_table(cfg, pipe, captions, args.n), end="\n\n")
        print(sensitivity_table(cfg, pipe, captions, min(args.n, 16)), end="\n\n")
    print(clip_pairs_table(cfg, load_guide(str(cfg.nada.clip_models[0])), 256), end="\n\n")
    if args.classifier and not args.clip_only:
        print(classifier_table(cfg, 120))


if __name__ == "__main__":
    main(sys.argv[1:])
