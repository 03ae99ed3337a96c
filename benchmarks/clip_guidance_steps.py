"""What plain-CLIP guidance (on x̂0) does at each sampler step: the measurement behind
``guidance.min_alpha_bar`` (CLIP guidance skips steps with ᾱ_t below it).

x̂0 = (x_t − sqrt(1 − ᾱ_t) ε) / sqrt(ᾱ_t), so the gradient of CLIP's score that reaches x_t carries
a gain of about 1/sqrt(ᾱ_t). Per step of the toy generator's sampler (DPM-Solver++, 10 trailing
steps, as generation.*), over the sample-quality captions with guidance on every step
(min_alpha_bar 0): ᾱ_t, the gain, the share of x̂0's pixels that the clamp to [-1, 1] cuts (of the
model's ε on real test photos noised to t), and the change the guidance makes to ε, Δε = s·sqrt(1 − ᾱ_t)·∇:
its RMS, the share of entries it moves by more than 1 (ε's own standard deviation) and its maximum.
A step whose Δε moves many entries by more than ε's own spread, through an x̂0 that is mostly
clamped, is a random kick rather than guidance.

    python benchmarks/clip_guidance_steps.py [--scales 30 100] [--captions 32] [key=value ...]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from machine import machine  # benchmarks/machine.py


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", default="models/toy_generator")
    parser.add_argument("--clip", default="models/toy_clip")
    parser.add_argument("--scales", type=float, nargs="+", default=[30.0, 100.0])
    parser.add_argument("--captions", type=int, default=32)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. paths.data_dir=/tmp/data")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from synrep.config import load_config
    from synrep.data import toy_vocabulary, toyworld
    from synrep.diffusion.clip_guidance import clip_guided, load_guide
    from synrep.diffusion.pipelines import load_pipeline
    from synrep.evaluation.sample_quality import evaluation_captions
    from synrep.generation.sources import image_seed

    start = time.time()
    cfg = load_config(["threads=1", *args.overrides])
    g = cfg.generation
    pipe = load_pipeline(args.generator, g.sampler, g.dtype, "cpu")
    guide = load_guide(args.clip)
    captions, _ = evaluation_captions(cfg, args.captions, args.seed)
    seeds = [image_seed(args.seed, ci, 0) for ci in range(len(captions))]

    # the share of x̂0 that the clamp cuts at each step: real test photos noised to t, the model's ε
    test = toyworld.load_split(cfg, "test")
    photos = torch.from_numpy(test["images"][: len(captions)]).permute(0, 3, 1, 2).float() / 127.5 - 1
    rng = np.random.default_rng(args.seed)
    real_captions = [toy_vocabulary.caption_for(toy_vocabulary.Attributes(*(int(test[a][i]) for a in
                                                                ("shape", "colour", "size", "background"))), cfg, rng)
                     for i in range(len(captions))]
    alphas = pipe.scheduler.alphas_cumprod
    clamped = {}
    pipe.scheduler.set_timesteps(g.steps)
    for t in pipe.scheduler.timesteps:
        a = alphas[t]
        eps = torch.randn(photos.shape, generator=torch.Generator().manual_seed(int(t)))
        x_t = a.sqrt() * photos + (1 - a).sqrt() * eps
        states, pooled = pipe.encode_batch(real_captions, 1, False)[0]
        with torch.no_grad():
            eps_hat = pipe.predict_noise(x_t, t, states, pooled)
        x0_hat = (x_t - (1 - a).sqrt() * eps_hat) / a.sqrt()
        clamped[int(t)] = (float((x0_hat.abs() > 1).float().mean()), float(x0_hat.abs().median()))

    print(f"# benchmarks/clip_guidance_steps.py, {machine()}, torch {torch.__version__}")
    print(f"# {args.generator} ({type(pipe.scheduler).__name__} {g.steps} steps, "
          f"{pipe.scheduler.config.beta_schedule}, {pipe.scheduler.config.timestep_spacing}), guide {args.clip}, "
          f"w = 1, {len(captions)} captions x 1 image, every step guided\n")
    print("| s | t | ᾱ_t | gain 1/sqrt(ᾱ_t) | x̂0 clamped | median abs(x̂0) | RMS Δε | Δε > 1 | max abs(Δε) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for s in args.scales:
        trace: list = []
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        clip_guided(pipe, guide, captions, generators, g.steps, 1.0, s, min_alpha_bar=0.0, trace=trace)
        for step in trace:
            kick = step["kick"].abs()
            share, median = clamped[step["t"]]
            print(f"| {s:g} | {step['t']} | {step['alpha_bar']:.3g} | {step['alpha_bar'] ** -0.5:.3g} | {share:.3f} | "
                  f"{median:.3g} | {float(kick.pow(2).mean().sqrt()):.3g} | {float((kick > 1).float().mean()):.3f} | "
                  f"{float(kick.max()):.3g} |")
    print(f"\n{time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
