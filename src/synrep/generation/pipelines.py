"""Loading diffusers pipelines: a local folder or hub id, its sampler, and its weights' hash.

Any diffusers text-to-image pipeline works: the shipped toy generator (``ToyGlidePipeline``), a
local Stable Diffusion folder, or a hub id such as ``runwayml/stable-diffusion-v1-5``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import json
from pathlib import Path

import torch

from synrep.fileio import sha256_file, write_json

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# sampler name -> diffusers scheduler class
SAMPLERS = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "dpmsolver": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "pndm": "PNDMScheduler",
}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt")
# The project's own pipeline classes (model_index.json's _class_name -> module); diffusers loads the rest
TOY_PIPELINES = {
    "ToyGlidePipeline": "synrep.generation.toy.pipeline",
    "ToyGlideInpaintPipeline": "synrep.generation.toy.inpaint",
    "ToyUnCLIPPipeline": "synrep.generation.toy.unclip",
}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("config key 'generation.device' is 'cuda' but no CUDA device is available")
    return torch.device(name)


def model_folder(model: str, key: str = "generation.model") -> Path:
    """The local folder of a pipeline: the path itself, or the hub cache snapshot of a hub id."""
    path = Path(model)
    if path.exists():
        if not (path / "model_index.json").exists():
            raise FileNotFoundError(
                f"config key '{key}': {path} has no model_index.json (not a diffusers pipeline folder)"
            )
        return path
    if model.startswith((".", "/")) or model.count("/") != 1:
        raise FileNotFoundError(
            f"config key '{key}': no pipeline folder at {path.resolve()} and {model!r} is not a hub id"
        )
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model, allow_patterns=["*.json", "*.txt", "*.safetensors", "*.model"]))


def check_weight_files(folder: Path) -> None:
    """Fail with one line naming the file when a ``.safetensors`` file is truncated or corrupt.

    ``from_pretrained`` would fail later with a long traceback that does not say which file.
    """
    from safetensors import safe_open

    for path in sorted(folder.rglob("*.safetensors")):
        try:
            # the header is checked against the file's size: a truncated file fails here
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as err:  # safetensors raises its own error types
            raise ValueError(f"{path}: corrupt or truncated weights file ({str(err).splitlines()[0]})") from None


def make_scheduler(sampler: str, config: dict):
    """The diffusers scheduler for ``sampler``, from the pipeline's own scheduler config.

    A pixel-space model trained with x0 clipping (``clip_sample``: the toy generator) needs it at
    every step; samplers without ``clip_sample`` (DPM-Solver) get the same clamp as static
    thresholding (``thresholding`` with ratio 1 and ``sample_max_value`` = the clip range), or they
    start from a wild x0 estimate at the noisiest timestep and their samples stay noisy.
    """
    import diffusers

    scheduler_cls = getattr(diffusers, SAMPLERS[sampler])
    params = inspect.signature(scheduler_cls.__init__).parameters
    extra = {}
    if config.get("clip_sample") and "clip_sample" not in params and "thresholding" in params:
        extra = {"thresholding": True, "dynamic_thresholding_ratio": 1.0,
                 "sample_max_value": float(config.get("clip_sample_range", 1.0))}
    return scheduler_cls.from_config(config, **extra)


# diffusers' unCLIP pipelines, which DiffusionPipeline.from_pretrained no longer loads (below)
UNCLIP_PIPELINES = ("UnCLIPPipeline", "UnCLIPImageVariationPipeline")


def load_unclip_family(folder: Path, index: dict, torch_dtype):
    """A saved diffusers ``UnCLIPPipeline`` / ``UnCLIPImageVariationPipeline``, component by component.

    diffusers keeps unCLIP (Karlo) among its deprecated pipelines, and in 0.42 its
    ``from_pretrained`` cannot resolve ``UnCLIPTextProjModel`` from model_index.json (a saved pipeline
    names it ``["diffusers", ...]``, Karlo's hub folder ``["unclip", ...]``), not even when the
    component is passed in. So each component is loaded with its own class's ``from_pretrained`` and
    the pipeline is built from them."""
    import diffusers
    import transformers
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

    components = {}
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or entry[1] is None:
            continue
        library, class_name = entry
        if class_name == UnCLIPTextProjModel.__name__:
            cls = UnCLIPTextProjModel
        else:
            cls = getattr(transformers if library == "transformers" else diffusers, class_name)
        kwargs = {} if "Scheduler" in class_name or "Tokenizer" in class_name or "Processor" in class_name \
            else {"torch_dtype": torch_dtype}
        components[name] = cls.from_pretrained(folder / name, **kwargs)
    return getattr(diffusers, index["_class_name"])(**components)


@functools.lru_cache(maxsize=4)
def load_pipeline(model: str, sampler: str = "ddim", dtype: str = "float32", device: str = "auto"):
    """Load any diffusers text-to-image pipeline with ``from_pretrained`` and set its sampler."""
    import diffusers

    folder = model_folder(model)
    check_weight_files(folder)
    index = json.loads((folder / "model_index.json").read_text())
    torch_dtype = DTYPES[dtype]
    if index.get("_class_name") in TOY_PIPELINES:
        module = importlib.import_module(TOY_PIPELINES[index["_class_name"]])
        pipe = getattr(module, index["_class_name"]).from_pretrained(folder, dtype=torch_dtype)
    else:
        extra = {}
        if "safety_checker" in index:
            # StableRep trains on every generated image; the checker blacks some out
            extra = {"safety_checker": None, "requires_safety_checker": False}
        if index.get("_class_name") in UNCLIP_PIPELINES:
            pipe = load_unclip_family(folder, index, torch_dtype)
        else:
            pipe = diffusers.DiffusionPipeline.from_pretrained(folder, dtype=torch_dtype, **extra)
    if hasattr(pipe, "scheduler"):
        pipe.scheduler = make_scheduler(sampler, pipe.scheduler.config)
    # else diffusers' unCLIP pipelines: prior, decoder and super-resolution each keep their own
    # UnCLIPScheduler, which their loops are written for
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(resolve_device(device))


def weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def weights_sha256(folder: Path) -> str:
    """One digest over the pipeline's weight files (names and contents)."""
    digest = hashlib.sha256()
    for path in weight_files(folder):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(sha256_file(path.resolve()).encode())
    return digest.hexdigest()


def fingerprint(model: str, cache_dir: Path, key: str = "generation.model") -> dict:
    """Model id, pipeline class and weights hash.

    Hashing SD's weights takes seconds, so the result is cached, keyed by the weight files' names,
    sizes and modification times: retrained weights get a new hash.
    """
    folder = model_folder(model, key)
    stamp = [[str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns] for p in weight_files(folder)]
    key = hashlib.sha256(json.dumps([str(folder.resolve()), stamp]).encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"{key}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    index = json.loads((folder / "model_index.json").read_text())
    info = {"model": model, "pipeline": index.get("_class_name"), "weights_sha256": weights_sha256(folder)}
    write_json(cache, info)
    return info
