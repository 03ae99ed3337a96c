"""The provenance record of a generated sample, and regeneration of any image from it alone."""

from __future__ import annotations

import numpy as np

import synrep
from synrep.generation.pipelines import load_pipeline
from synrep.generation.sampling import sample_at_scales


def make_record(spec: dict, model: dict, pipe, caption: str, caption_id: int, seeds: list[int],
                scales: list[float], image_size: int) -> dict:
    """Everything needed to make the caption's images again: the source spec, the weights' hash,
    the scheduler's full config, and each image's noise seed and guidance scale."""
    return {
        "caption": caption,
        "caption_id": int(caption_id),
        "source": spec,
        "seeds": seeds,
        "guidance_scales": [float(w) for w in scales],
        "model": spec["generator"],
        "pipeline": model["pipeline"],
        "weights_sha256": model["weights_sha256"],
        "scheduler": type(pipe.scheduler).__name__,
        # diffusers keeps `_use_default_values` as a list made from a set: sorted, so that the
        # record (and the shard's bytes) do not depend on the process's hash seed
        "scheduler_config": {k: sorted(v) if k == "_use_default_values" else v
                             for k, v in pipe.scheduler.config.items()},
        "resolution": spec["resolution"] or pipe.unet.config.sample_size * getattr(pipe, "vae_scale_factor", 1),
        "saved_size": image_size,
        "synrep_version": synrep.__version__,
    }


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
    pipe = load_pipeline(spec["generator"], spec["sampler"], spec["dtype"], device)
    # Re-run the caption's images as the shard job ran them (grouped by scale, in the same order),
    # so that batched kernels see the same shapes.
    n = len(record["seeds"])
    images = sample_at_scales(pipe, [record["caption"]] * n, record["seeds"], record["guidance_scales"], spec)
    return images[image_index]
