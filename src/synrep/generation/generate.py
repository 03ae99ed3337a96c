"""Generation: l images per caption at each guidance scale w, written to WebDataset shards.

Any diffusers pipeline folder or hub id works (``generation.model``): the shipped toy generator
(``ToyGlidePipeline``), a local Stable Diffusion folder, or ``runwayml/stable-diffusion-v1-5``.
Image ``i`` of caption ``c`` starts from noise seeded by (generation.seed, c, i), the same at every
w, so every image can be regenerated exactly from its provenance record (``regenerate``).
Classifier-free guidance batches the conditional and unconditional passes into one UNet call
(inside the pipeline). Finished shards are skipped, and shards are written atomically.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
from omegaconf import DictConfig
from PIL import Image
from tqdm.auto import tqdm

import synrep
from synrep.config import run_dir, save_resolved
from synrep.fileio import sha256_file, write_json
from synrep.data.shards import (ShardSpec, plan_shards, read_shard, remove_stale_temporaries, sample_key,
                           shard_path, write_shard)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SAMPLERS = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "dpmsolver": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "pndm": "PNDMScheduler",
}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("config key 'generation.device' is 'cuda' but no CUDA device is available")
    return torch.device(name)


def model_folder(model: str) -> Path:
    """The local folder of a pipeline: the path itself, or the hub cache snapshot of a hub id."""
    path = Path(model)
    if path.exists():
        if not (path / "model_index.json").exists():
            raise FileNotFoundError(
                f"config key 'generation.model': {path} has no model_index.json (not a diffusers pipeline folder)"
            )
        return path
    if model.startswith((".", "/")) or model.count("/") != 1:
        raise FileNotFoundError(
            f"config key 'generation.model': no pipeline folder at {path.resolve()} and {model!r} is not a hub id"
        )
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model, allow_patterns=["*.json", "*.txt", "*.safetensors", "*.model"]))


def make_scheduler(sampler: str, config: dict):
    """The diffusers scheduler for ``sampler``, from the pipeline's own scheduler config.

    A pixel-space model trained with x0 clipping (``clip_sample``: the toy generator) needs it at
    every step; samplers without ``clip_sample`` (DPM-Solver) get the same clamp as static
    thresholding (``thresholding`` with ratio 1 and ``sample_max_value`` = the clip range), or they
    start from a wild x0 estimate at the noisiest timestep and their samples stay noisy.
    """
    import inspect

    import diffusers

    scheduler_cls = getattr(diffusers, SAMPLERS[sampler])
    params = inspect.signature(scheduler_cls.__init__).parameters
    extra = {}
    if config.get("clip_sample") and "clip_sample" not in params and "thresholding" in params:
        extra = {"thresholding": True, "dynamic_thresholding_ratio": 1.0,
                 "sample_max_value": float(config.get("clip_sample_range", 1.0))}
    return scheduler_cls.from_config(config, **extra)


@functools.lru_cache(maxsize=4)
def load_pipeline(model: str, sampler: str = "ddim", dtype: str = "float32", device: str = "auto"):
    """Load any diffusers text-to-image pipeline with ``from_pretrained`` and set its sampler."""
    import diffusers

    from synrep.generation.toy.pipeline import ToyGlidePipeline

    folder = model_folder(model)
    index = json.loads((folder / "model_index.json").read_text())
    torch_dtype = DTYPES[dtype]
    if index.get("_class_name") == ToyGlidePipeline.__name__:
        pipe = ToyGlidePipeline.from_pretrained(folder, dtype=torch_dtype)
    else:
        extra = {}
        if "safety_checker" in index:
            # StableRep trains on every generated image; the checker blacks some out
            extra = {"safety_checker": None, "requires_safety_checker": False}
        pipe = diffusers.DiffusionPipeline.from_pretrained(folder, dtype=torch_dtype, **extra)
    pipe.scheduler = make_scheduler(sampler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(resolve_device(device))


def weights_sha256(folder: Path) -> str:
    """One digest over the pipeline's weight files (names and contents)."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(sha256_file(path.resolve()).encode())
    return digest.hexdigest()


def model_fingerprint(cfg: DictConfig) -> dict:
    """Model id, pipeline class and weights hash; cached per run since hashing SD takes seconds."""
    g = cfg.generation
    cache = run_dir(cfg, "shards", "model.json")
    if cache.exists():
        cached = json.loads(cache.read_text())
        if cached.get("model") == g.model:
            return cached
    folder = model_folder(g.model)
    index = json.loads((folder / "model_index.json").read_text())
    info = {
        "model": g.model,
        "pipeline": index.get("_class_name"),
        "weights_sha256": weights_sha256(folder),
    }
    write_json(cache, info)
    return info


def image_seed(base_seed: int, caption_id: int, image_index: int) -> int:
    """The noise seed of image ``image_index`` of caption ``caption_id`` (independent of w)."""
    state = np.random.SeedSequence([base_seed, caption_id, image_index]).generate_state(2, np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


def sample_images(pipe, prompts: list[str], seeds: list[int], w: float, g: DictConfig) -> np.ndarray:
    """Run the pipeline on (prompt, seed) pairs in batches; uint8 [N, H, W, 3] at ``save_size``."""
    out = []
    device = pipe.device
    for start in range(0, len(prompts), g.batch_size):
        chunk = slice(start, start + g.batch_size)
        generators = [torch.Generator(device=device).manual_seed(s) for s in seeds[chunk]]
        kwargs = dict(
            prompt=prompts[chunk],
            num_inference_steps=g.steps,
            guidance_scale=float(w),
            eta=g.eta,
            generator=generators,
            output_type="np",
            guidance_rescale=g.guidance_rescale,
        )
        if g.resolution:
            kwargs.update(height=g.resolution, width=g.resolution)
        images = pipe(**kwargs).images
        images = (np.clip(np.asarray(images, dtype=np.float32), 0, 1) * 255).round().astype(np.uint8)
        if g.save_size and g.save_size != images.shape[1]:
            images = np.stack([
                np.asarray(Image.fromarray(im).resize((g.save_size, g.save_size), Image.Resampling.BICUBIC))
                for im in images
            ])
        out.append(images)
    return np.concatenate(out)


def provenance(cfg: DictConfig, pipe, fingerprint: dict, caption: str, caption_id: int,
               seeds: list[int], w: float, image_size: int) -> dict:
    g = cfg.generation
    return {
        "caption": caption,
        "caption_id": int(caption_id),
        "seeds": seeds,
        "base_seed": g.seed,
        "guidance_scale": float(w),
        "guidance_rescale": g.guidance_rescale,
        "model": g.model,
        "pipeline": fingerprint["pipeline"],
        "weights_sha256": fingerprint["weights_sha256"],
        "sampler": g.sampler,
        "scheduler": type(pipe.scheduler).__name__,
        # diffusers keeps `_use_default_values` as a list made from a set: sorted, so that the
        # record (and the shard's bytes) do not depend on the process's hash seed
        "scheduler_config": {k: sorted(v) if k == "_use_default_values" else v
                             for k, v in pipe.scheduler.config.items()},
        "steps": g.steps,
        "eta": g.eta,
        "resolution": g.resolution or pipe.unet.config.sample_size * getattr(pipe, "vae_scale_factor", 1),
        "saved_size": image_size,
        "dtype": g.dtype,
        "batch_size": g.batch_size,
        "synrep_version": synrep.__version__,
    }


def load_captions(cfg: DictConfig) -> pl.DataFrame:
    path = run_dir(cfg, "captions", "captions.parquet")
    if not path.exists():
        raise FileNotFoundError(f"deduplicated captions not found at {path}; run `python -m synrep captions` first")
    return pl.read_parquet(path, columns=["caption_id", "caption"])


def generate_shard(cfg: DictConfig, captions: pl.DataFrame, spec: ShardSpec, pipe, fingerprint: dict,
                   progress: tqdm | None = None) -> Path:
    g = cfg.generation
    rows = captions.slice(spec.start, spec.stop - spec.start)
    ids = rows["caption_id"].to_list()
    texts = rows["caption"].to_list()
    l = g.images_per_caption
    prompts = [t for t in texts for _ in range(l)]
    seeds = [image_seed(g.seed, cid, i) for cid in ids for i in range(l)]
    images = []
    for start in range(0, len(prompts), g.batch_size):
        part = slice(start, start + g.batch_size)
        images.append(sample_images(pipe, prompts[part], seeds[part], spec.w, g))
        if progress is not None:
            progress.update(len(prompts[part]))
    images = np.concatenate(images)
    samples = [
        {
            "key": sample_key(cid),
            "images": list(images[k * l:(k + 1) * l]),
            "record": provenance(cfg, pipe, fingerprint, text, cid, seeds[k * l:(k + 1) * l], spec.w,
                                 images.shape[1]),
        }
        for k, (cid, text) in enumerate(zip(ids, texts))
    ]
    path = shard_path(run_dir(cfg, "shards"), spec.w, spec.index)
    remove_stale_temporaries(path)  # one job per shard, so these are a killed run's leftovers
    return write_shard(path, samples, g.image_format)


def shard_plan(cfg: DictConfig, n_captions: int | None = None) -> list[ShardSpec]:
    if n_captions is None:
        n_captions = len(load_captions(cfg))
    g = cfg.generation
    return plan_shards(n_captions, g.captions_per_shard, g.guidance_scales)


def run(cfg: DictConfig, w: float | None = None, shard: int | None = None) -> list[Path]:
    """Generate the shards that are missing (all of them, or one ``w`` / one ``shard``)."""
    torch.set_num_threads(cfg.threads)
    g = cfg.generation
    captions = load_captions(cfg)
    plan = shard_plan(cfg, len(captions))
    if w is not None:
        plan = [s for s in plan if s.w == float(w)]
        if not plan:
            raise ValueError(f"guidance scale {w} is not in config key 'generation.guidance_scales' {list(g.guidance_scales)}")
    if shard is not None:
        plan = [s for s in plan if s.index == shard]
        if not plan:
            raise ValueError(f"shard {shard} does not exist: {len(captions)} captions make "
                             f"{-(-len(captions) // g.captions_per_shard)} shards per guidance scale")
    shards_dir = run_dir(cfg, "shards")
    todo = [s for s in plan if not shard_path(shards_dir, s.w, s.index).exists()]
    save_resolved(cfg, shards_dir)
    if todo:
        pipe = load_pipeline(g.model, g.sampler, g.dtype, g.device)
        fingerprint = model_fingerprint(cfg)
        total = sum((s.stop - s.start) * g.images_per_caption for s in todo)
        with tqdm(total=total, desc=f"generate {len(todo)} shard(s)", unit="img", mininterval=5) as bar:
            for spec in todo:
                start = time.time()
                generate_shard(cfg, captions, spec, pipe, fingerprint, bar)
                bar.write(f"shard w={spec.w:g} #{spec.index} ({spec.stop - spec.start} captions) "
                          f"in {time.time() - start:.1f}s")
    return [shard_path(shards_dir, s.w, s.index) for s in plan]


def regenerate(record: dict, image_index: int, device: str = "auto") -> np.ndarray:
    """Regenerate image ``image_index`` of a shard sample from its provenance record alone."""
    from omegaconf import OmegaConf

    pipe = load_pipeline(record["model"], record["sampler"], record["dtype"], device)
    g = OmegaConf.create({
        "steps": record["steps"], "eta": record["eta"], "guidance_rescale": record["guidance_rescale"],
        "batch_size": record["batch_size"], "resolution": record["resolution"], "save_size": record["saved_size"],
    })
    # Re-run the whole batch row so that batched kernels see the same shapes as in the shard job.
    seeds = record["seeds"]
    images = sample_images(pipe, [record["caption"]] * len(seeds), seeds, record["guidance_scale"], g)
    return images[image_index]


def read_sample(shards_dir: Path, w: float, caption_id: int) -> dict:
    for path in sorted((Path(shards_dir) / f"w{w:g}").glob("shard-*.tar")):
        for sample in read_shard(path):
            if sample["record"]["caption_id"] == caption_id:
                return sample
    raise KeyError(f"caption_id {caption_id} at w={w} not found under {shards_dir}")


def sample_grid(shard: Path, n_captions: int) -> np.ndarray:
    """Rows = captions, columns = their l images, from the first samples of a shard."""
    from synrep.generation.toy.train import image_grid

    rows = []
    for k, sample in enumerate(read_shard(shard)):
        if k == n_captions:
            break
        rows.append(np.stack(sample["images"]))
    images = np.concatenate(rows)
    return image_grid(images, rows=len(rows), scale=max(1, 64 // images.shape[1]))


def index_run(cfg: DictConfig) -> dict[str, Path]:
    """Index every shard in parquet, draw a sample grid per w, and log both to MLflow."""
    import mlflow

    from synrep.data.shards import shard_summary, write_index
    from synrep.tracking import mlflow_run

    g = cfg.generation
    shards_dir = run_dir(cfg, "shards")
    plan = shard_plan(cfg)
    missing = [str(shard_path(shards_dir, s.w, s.index)) for s in plan
               if not shard_path(shards_dir, s.w, s.index).exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} shard(s) missing, e.g. {missing[0]}; run `python -m synrep generate`")
    rows = [shard_summary(shard_path(shards_dir, s.w, s.index), s) for s in plan]
    outputs = {"index": write_index(shards_dir / "index.parquet", rows)}
    grids_dir = run_dir(cfg, "shards", "grids")
    grids_dir.mkdir(parents=True, exist_ok=True)
    for w in g.guidance_scales:
        from synrep.fileio import atomic_path

        grid = sample_grid(shard_path(shards_dir, w, 0), g.grid_captions)
        path = grids_dir / f"samples_w{w:g}.png"
        with atomic_path(path) as tmp:
            Image.fromarray(grid).save(tmp, format="PNG")
        outputs[f"grid_w{w:g}"] = path
    stats = {
        "shards": len(rows),
        "samples": sum(r["samples"] for r in rows),
        "images": sum(r["images"] for r in rows),
        "bytes": sum(r["bytes"] for r in rows),
        "guidance_scales": list(g.guidance_scales),
        "images_per_caption": g.images_per_caption,
        "model": model_fingerprint(cfg),
    }
    outputs["stats"] = write_json(shards_dir / "stats.json", stats)
    with mlflow_run(cfg, "generate", sections=("generation",)):
        mlflow.log_metrics({k: stats[k] for k in ("shards", "samples", "images", "bytes")})
        mlflow.log_artifact(str(outputs["index"]))
        mlflow.log_artifact(str(outputs["stats"]))
        for key, path in outputs.items():
            if key.startswith("grid_"):
                mlflow.log_artifact(str(path), artifact_path="grids")
    return outputs
