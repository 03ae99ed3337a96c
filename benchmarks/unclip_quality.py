"""Caption match of the toy DALL-E 2 / unCLIP (``models/toy_unclip``), read by the judge (the shipped
attribute classifier), beside the toy generator it was fine-tuned from:

- unCLIP: caption -> prior -> CLIP image embedding -> decoder, at decoder guidance w (prior guidance
  ``--prior-w``);
- no prior: the caption's CLIP *text* embedding decoded directly (DALL-E 2's ablation);
- variations: real test photos -> their CLIP image embedding -> decoder with the empty caption;
  "match" is the variation's attribute equal to the source photo's.

Same evaluation captions and noise seeds as ``sample_quality`` (32 captions x 4 images a row);
diversity is the mean pairwise RMS pixel distance between the images of one caption (of one source
photo for variations). Also the prior's own check (Ramesh et al. 2022): on held-out test photos
with captions written from their attributes, the cosine of the prior's embedding with the photo's
CLIP image embedding, beside that of the caption's text embedding, and of DALL-E 2's reranked
prior (two draws, the one with the higher z_i . z_t kept).

    python benchmarks/unclip_quality.py [--model models/toy_unclip] [--captions 32] [--per-caption 4] [--prior-only]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def to_uint8(images: np.ndarray) -> np.ndarray:
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


def match(judge, images: np.ndarray, wanted: dict[str, np.ndarray]) -> dict[str, float]:
    from synrep.evaluation.attribute_classifier import predict

    predicted = predict(judge, to_uint8(images))
    out = {}
    for attr, target in wanted.items():
        scored = target >= 0  # captions that leave an attribute out are not scored on it
        out[attr] = float((predicted[attr][scored] == target[scored]).mean()) if scored.any() else float("nan")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/toy_unclip")
    parser.add_argument("--generator", default="models/toy_generator")
    parser.add_argument("--clip", default="models/toy_clip")
    parser.add_argument("--captions", type=int, default=32)
    parser.add_argument("--per-caption", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--prior-steps", type=int, default=25)
    parser.add_argument("--prior-w", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--prior-only", action="store_true", help="only the prior's check on held-out photos")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. paths.data_dir=/tmp/data")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from synrep.config import load_config
    from synrep.data import toy_vocabulary, toyworld
    from synrep.diffusion.clip_guidance import load_guide
    from synrep.diffusion.pipelines import load_pipeline
    from synrep.diffusion.toy import unclip as U
    from synrep.evaluation.attribute_classifier import ATTRIBUTES
    from synrep.evaluation.attribute_classifier import judge as load_judge
    from synrep.evaluation.sample_quality import diversity, evaluation_captions
    from synrep.generation.sources import image_seed

    start = time.time()
    cfg = load_config(["threads=1", *args.overrides])
    judge, ceiling, origin = load_judge(cfg)
    clip = load_guide(args.clip)
    pipe = U.load_toy_unclip(args.model, "dpmsolver")
    glide = load_pipeline(args.generator, "dpmsolver", device="cpu")
    k = args.per_caption
    captions, named = evaluation_captions(cfg, args.captions, args.seed)
    prompts = [c for c in captions for _ in range(k)]
    seeds = [image_seed(args.seed, ci, i) for ci in range(len(captions)) for i in range(k)]
    wanted = {a: np.array([n[a] if n[a] is not None else -1 for n in named for _ in range(k)]) for a in ATTRIBUTES}

    def generators():
        return [torch.Generator().manual_seed(s) for s in seeds]

    def groups(images):
        images = to_uint8(images)
        return [images[i * k:(i + 1) * k] for i in range(len(images) // k)]

    rows = [("real test photos (judge's ceiling)", "", ceiling, None)]
    scales = () if args.prior_only else (1.0, 2.0, 4.0)
    for w in scales:
        images = glide(prompts, num_inference_steps=args.steps, guidance_scale=w, generator=generators(),
                       output_type="np").images
        rows.append(("toy generator (GLIDE)", w, match(judge, images, wanted), diversity(groups(images))))
    for w in scales:
        images = U.unclip_images(pipe, clip, prompts, generators(), w, args.steps, args.prior_steps, args.prior_w)
        rows.append((f"unCLIP, prior (prior w={args.prior_w:g})", w, match(judge, images, wanted),
                     diversity(groups(images))))
    for w in scales:
        images = U.unclip_images(pipe, clip, prompts, generators(), w, args.steps, use_prior=False)
        rows.append(("unCLIP, no prior (text embedding)", w, match(judge, images, wanted), diversity(groups(images))))

    test = toyworld.load_split(cfg, "test")
    sources = np.random.default_rng(args.seed).choice(len(test["images"]), args.captions, replace=False)
    photos = np.repeat(test["images"][sources], k, axis=0)
    truth = {a: np.repeat(test[a][sources], k) for a in ATTRIBUTES}
    for w in scales:
        images = U.variation_images(pipe, clip, photos, generators(), w, args.steps)
        rows.append(("variations of test photos", w, match(judge, images, truth), diversity(groups(images))))

    print(f"judge: {origin}; {args.captions} captions x {k} images a row, DPM-Solver++ {args.steps} steps, "
          f"prior {args.prior_steps} steps\n")
    print("| model | w | shape | colour | size | background | diversity |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, w, scores, div in rows:
        cells = " | ".join(f"{scores[a]:.3f}" for a in ATTRIBUTES)
        print(f"| {name} | {w if w == '' else f'{w:g}'} | {cells} | {'' if div is None else f'{div:.3f}'} |")

    # the prior on held-out photos, with captions written from their attributes
    rng = np.random.default_rng(args.seed)
    held = rng.choice(len(test["images"]), 256, replace=False)
    attrs = [toy_vocabulary.Attributes(*(int(test[a][i]) for a in ("shape", "colour", "size", "background"))) for i in held]
    held_captions = [toy_vocabulary.caption_for(a, cfg, rng) for a in attrs]
    truth_embeds = U.image_embeddings(clip, test["images"][held])
    text = U.clip_text(clip, held_captions)
    prior = pipe.sample_prior(text, U.clip_text(clip, [""]), [torch.Generator().manual_seed(i) for i in range(256)],
                              args.prior_steps, args.prior_w)
    # DALL-E 2's rerank: two draws per caption, the one with the higher z_i . z_t kept
    reranked = pipe.sample_prior(text, U.clip_text(clip, [""]), [torch.Generator().manual_seed(i) for i in range(256)],
                                 args.prior_steps, args.prior_w, samples=2)
    shuffled = truth_embeds[torch.randperm(256, generator=torch.Generator().manual_seed(0))]
    print("\ncosine with the held-out photo's CLIP image embedding (256 test photos):")
    print(f"  prior sample {(prior * truth_embeds).sum(-1).mean():.3f}, caption's text embedding "
          f"{(text.embeds * truth_embeds).sum(-1).mean():.3f}, another photo's image embedding "
          f"{(shuffled * truth_embeds).sum(-1).mean():.3f}, prior sample vs another photo "
          f"{(prior * shuffled).sum(-1).mean():.3f}")
    print(f"  reranked prior sample (2 draws, higher z_i . z_t kept) {(reranked * truth_embeds).sum(-1).mean():.3f}; "
          f"z_i . z_t one draw {(prior * text.embeds).sum(-1).mean():.3f}, reranked "
          f"{(reranked * text.embeds).sum(-1).mean():.3f}")
    print(f"\n{time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
