"""The provenance record of a generated sample, and regeneration of any image from it alone."""

from __future__ import annotations

import hashlib

import numpy as np

import synrep
from synrep.diffusion.pipelines import load_pipeline
from synrep.generation.source_images import caption_images
from synrep.settings import InputError


def input_sha256(image: np.ndarray, object_mask: np.ndarray) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(image).tobytes())
    digest.update(np.ascontiguousarray(object_mask).tobytes())
    return digest.hexdigest()


def input_record(cfg, url: str, image: np.ndarray, object_mask: np.ndarray) -> dict:
    """Where a mode's real input image comes from (the world's folder and the caption's url) and
    its hash (with its object mask), so that regeneration finds it and notices a changed world."""
    from synrep.data import toyworld

    return {"world": str(toyworld.world_dir(cfg)), "url": url, "sha256": input_sha256(image, object_mask)}


def make_record(spec: dict, model: dict, pipe, caption: str, caption_id: int, seeds: list[int],
                scales: list[float], image_size: int, inputs: dict | None = None) -> dict:
    """Everything needed to make the caption's images again: the source spec, the weights' hash,
    the scheduler's full config, each image's noise seed and guidance scale, and the real image a
    mode starts from (``input_record``)."""
    # the (decoder's) sampler: diffusers' unCLIP pipelines name theirs decoder_scheduler
    scheduler = pipe.scheduler if hasattr(pipe, "scheduler") else pipe.decoder_scheduler
    record = {
        "caption": caption,
        "caption_id": int(caption_id),
        "source": spec,
        "seeds": seeds,
        "guidance_scales": [float(w) for w in scales],
        "model": spec["generator"],
        "pipeline": model["pipeline"],
        "weights_sha256": model["weights_sha256"],
        "scheduler": type(scheduler).__name__,
        # diffusers keeps `_use_default_values` as a list made from a set: sorted, so that the
        # record (and the shard's bytes) do not depend on the process's hash seed
        "scheduler_config": {k: sorted(v) if k == "_use_default_values" else v
                             for k, v in scheduler.config.items()},
        "resolution": spec["resolution"] or (pipe.unet.config.sample_size * getattr(pipe, "vae_scale_factor", 1)
                                             if hasattr(pipe, "unet") else image_size),
        "saved_size": image_size,
        "synrep_version": synrep.__version__,
    }
    if inputs is not None:
        record["input"] = inputs
    if "refresh" in spec:  # the round of each image (a refreshing source's rounds, one after another)
        record["rounds"] = [i // spec["refresh"]["images_per_round"] for i in range(len(seeds))]
    return record


def record_mismatch(record: dict | None, spec: dict, model: dict) -> list[str]:
    """What differs between a stored record and the source spec and model asked for (empty: same)."""
    if record is None or "source" not in record:
        return ["(no provenance record of this format)"]
    stored = record["source"]
    keys = [f"sources.{spec['name']}: {k}" for k in sorted(set(stored) | set(spec)) if stored.get(k) != spec.get(k)]
    if record.get("weights_sha256") != model["weights_sha256"]:
        keys.append("generator weights (sha256)")
    return keys


def regenerate(record: dict, image_index: int, device: str = "auto") -> np.ndarray:
    """Regenerate image ``image_index`` of a shard sample from its provenance record alone."""
    spec = record["source"]
    real = None
    if "input" in record:
        from synrep.data import toyworld

        source = record["input"]
        real = toyworld.train_images_for(source["world"], [source["url"]], "regeneration")
        if input_sha256(real["images"][0], real["object_mask"][0]) != source["sha256"]:
            raise InputError(f"the real image {source['url']} in {source['world']} is not the one this image was "
                             "made from (its sha256 differs): the toy world changed")
    pipe = load_pipeline(spec["generator"], spec["sampler"], spec["dtype"], device)
    # Re-run the caption's images as the shard job ran them (grouped by scale, in the same order),
    # so that batched kernels see the same shapes.
    images = caption_images(pipe, spec, [record["caption"]], [(record["seeds"], record["guidance_scales"])], real)
    return images[0, image_index]
