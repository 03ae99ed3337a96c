"""Images/s of the project's generation step against the pipeline's plain ``__call__``, with
identical images, for the toy generator and a Stable Diffusion-shaped pipeline (random weights).

    python benchmarks/generation.py [--captions 256] [--sd-captions 16] [key=value ...]

Baseline (what every shard paid before): a process per shard of 64 captions (the old
``generation.captions_per_shard``), the pipeline loaded, then its plain ``__call__`` on each
caption repeated l times (one text encoding per image), ``generation.batch_size`` images a call.
Project: one process for all captions (the toy default's one shard a source), through
``synrep.diffusion.sampling.sample_images`` (each caption encoded once for its l images). Same
model, seeds, sampler and steps; the images must be equal (asserted). Both save nothing: the
shard's PNG writing is the same for both.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import machine  # benchmarks/machine.py

BASELINE_SHARD = 64


def settings_of(cfg, source: str, overrides: dict) -> dict:
    from synrep.generation.sources import source_spec

    spec = source_spec(cfg, source)
    return {**spec, **overrides}


def worker(args) -> None:
    """One process: load the pipeline, make the images of captions [start, stop), save them."""
    import torch

    from synrep.config import load_config
    from synrep.diffusion.pipelines import load_pipeline
    from synrep.diffusion.sampling import sample_images
    from synrep.generation.source_images import sampling_of

    job = json.loads(args.worker)
    cfg = load_config(job["overrides"])
    torch.set_num_threads(cfg.threads)
    captions, l, spec = job["captions"], job["l"], job["spec"]
    seeds = [1000 * c + i for c in range(job["start"], job["stop"]) for i in range(l)]
    texts = captions[job["start"]:job["stop"]]
    pipe = load_pipeline(job["model"], spec["sampler"], spec["dtype"], cfg.generation.device)
    if job["mode"] == "baseline":
        prompts = [t for t in texts for _ in range(l)]
        out = []
        for start in range(0, len(prompts), spec["batch_size"]):
            part = slice(start, start + spec["batch_size"])
            generators = [torch.Generator(device=pipe.device).manual_seed(s) for s in seeds[part]]
            kwargs = dict(prompt=prompts[part], num_inference_steps=spec["steps"], guidance_scale=float(spec["w"]),
                          eta=spec["eta"], generator=generators, output_type="np",
                          guidance_rescale=spec["guidance_rescale"])
            if spec["resolution"]:
                kwargs.update(height=spec["resolution"], width=spec["resolution"])
            images = np.asarray(pipe(**kwargs).images, dtype=np.float32)
            out.append((np.clip(images, 0, 1) * 255).round().astype(np.uint8))
        images = np.concatenate(out)
    else:
        images = sample_images(pipe, texts, seeds, spec["w"], sampling_of(spec), images_per_prompt=l)
    np.save(job["out"], images)


def run_mode(mode: str, model: str, captions: list[str], l: int, spec: dict, overrides: list[str], per_process: int,
             folder: Path) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    parts = []
    for i, first in enumerate(range(0, len(captions), per_process)):
        out = folder / f"{mode}-{i}.npy"
        job = {"mode": mode, "model": model, "captions": captions, "l": l, "spec": spec, "overrides": overrides,
               "start": first, "stop": min(len(captions), first + per_process), "out": str(out)}
        done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True)
        if done.returncode:
            sys.exit(done.stderr[-3000:])
        parts.append(out)
    seconds = time.perf_counter() - start
    return seconds, np.concatenate([np.load(p) for p in parts])


def compare(name: str, model: str, captions: list[str], spec: dict, overrides: list[str], folder: Path) -> dict:
    l = spec["l"]
    base_s, base = run_mode("baseline", model, captions, l, spec, overrides, BASELINE_SHARD, folder)
    proj_s, proj = run_mode("project", model, captions, l, spec, overrides, len(captions), folder)
    n = len(captions) * l
    return {"name": name, "images": n, "baseline_s": base_s, "project_s": proj_s,
            "identical": bool(np.array_equal(base, proj)), "max_diff": int(np.abs(base.astype(int) - proj).max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--captions", type=int, default=256, help="toy captions (default 256: the default run's)")
    parser.add_argument("--sd-captions", type=int, default=16)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    import torch

    from synrep.config import load_config
    from synrep.diffusion.random_sd import random_sd_pipeline
    from synrep.evaluation.sample_quality import evaluation_captions

    cfg = load_config(args.overrides)
    captions, _ = evaluation_captions(cfg, max(args.captions, args.sd_captions), seed=0)
    results = []
    with tempfile.TemporaryDirectory(prefix="synrep-gen-") as tmp:
        tmp = Path(tmp)
        spec = settings_of(cfg, "w2", {})
        spec["w"] = spec["guidance"]["w"]
        results.append(compare(f"toy generator ({spec['sampler']}, {spec['steps']} steps, w={spec['w']:g}, "
                               f"l={spec['l']}, batch {spec['batch_size']})", cfg.generation.model,
                               captions[: args.captions], spec, args.overrides, tmp))
        sd_dir = tmp / "sd_small"
        random_sd_pipeline("small").save_pretrained(sd_dir)
        sd = {**spec, "sampler": "ddim", "steps": 10, "w": 7.5, "l": 4, "batch_size": 16, "resolution": None,
              "save_size": None}
        results.append(compare("SD-shaped, random weights (quarter-width SD v1.5 layout, 128 px, DDIM 10 steps, "
                               "w=7.5, l=4, batch 16)", str(sd_dir), captions[: args.sd_captions], sd,
                               args.overrides, tmp))

    print(f"\nGeneration: a process per {BASELINE_SHARD}-caption shard with the plain pipeline call, against the "
          f"project's step in one process ({machine()}, torch {torch.__version__}, {cfg.threads} threads)\n")
    print("| pipeline | images | baseline s | project s | baseline img/s | project img/s | speed-up | identical |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | :---: |")
    for r in results:
        print(f"| {r['name']} | {r['images']} | {r['baseline_s']:.1f} | {r['project_s']:.1f} | "
              f"{r['images'] / r['baseline_s']:.1f} | {r['images'] / r['project_s']:.1f} | "
              f"{r['baseline_s'] / r['project_s']:.2f}x | {'yes' if r['identical'] else 'NO (max diff %d)' % r['max_diff']} |")
    if not all(r["identical"] for r in results):
        sys.exit("ERROR: the project's images differ from the baseline's")


if __name__ == "__main__":
    main()
