"""Loading diffusers pipelines: a local folder or hub id, its sampler, and its weights' hash.

Any diffusers text-to-image pipeline works: the shipped toy generator (``ToyGlidePipeline``), a
local Stable Diffusion folder, or a hub id such as ``stable-diffusion-v1-5/stable-diffusion-v1-5``
(``runwayml/stable-diffusion-v1-5`` was deleted from the hub in 2024; this is its copy).

A hub id is fetched by one step, ``download_weights`` (``generation/download.py``, calling ``download_weights`` here): only the files loading
reads (``pipeline_files``) go into the Hugging Face cache, and their hash is stored beside the
snapshot. Every other step finds the snapshot in the cache and never calls the hub, so that a
cluster's array jobs neither need the network nor hash gigabytes each.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import json
import re
from pathlib import Path

from synrep.fileio import sha256_file, write_json
from synrep.settings import ConfigError, InputError

# torch is imported where it is used: the Snakefile imports this module (is_hub_id) on every parse
DTYPES = ("float32", "float16", "bfloat16")
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
    "ToyGlidePipeline": "synrep.diffusion.toy.pipeline",
    "ToyGlideAdaptedPipeline": "synrep.recipes.nada",
    "ToyGlideInpaintPipeline": "synrep.diffusion.toy.inpaint",
    "ToyUnCLIPPipeline": "synrep.diffusion.toy.unclip",
}


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key 'generation.device' is 'cuda' but no CUDA device is available")
    return torch.device(name)


def model_folder(model: str, key: str = "generation.model") -> Path:
    """The local folder of a pipeline: the path itself, or the hub cache snapshot of a hub id
    (looked up in the cache only: the hub is called by ``download_weights`` alone)."""
    path = Path(model)
    if path.exists():
        if not (path / "model_index.json").exists():
            raise FileNotFoundError(
                f"config key '{key}': {path} has no model_index.json (not a diffusers pipeline folder)"
            )
        return path
    check_hub_id(model, key)
    return cached_snapshot(model, key)


def is_hub_id(model: str) -> bool:
    """Whether ``model``, not an existing folder, is shaped as a hub id (``org/name``)."""
    return not Path(model).exists() and not model.startswith((".", "/", "~")) and model.count("/") == 1


def check_hub_id(model: str, key: str) -> None:
    if not is_hub_id(model):
        raise FileNotFoundError(
            f"config key '{key}': no pipeline folder at {Path(model).resolve()} and {model!r} is not a hub id"
        )


def hub_cache() -> Path:
    """The Hugging Face hub cache (HF_HUB_CACHE, else HF_HOME/hub), as huggingface_hub resolved it."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def pipeline_components(index: dict) -> list[str]:
    """The component folders that loading reads: those model_index.json names with a class, but the
    safety checker, which ``load_pipeline`` turns off."""
    return sorted(name for name, entry in index.items()
                  if not name.startswith("_") and isinstance(entry, list) and len(entry) == 2
                  and entry[0] is not None and entry[1] is not None and name not in UNLOADED_COMPONENTS)


FETCH_HINT = ("fetch it once with `python -m synrep download_weights generation.model={model}` (what Snakemake's "
              "download_weights rule runs before generation); steps that compute never call the hub")


def cached_snapshot(model: str, key: str = "generation.model", fetch: str = FETCH_HINT) -> Path:
    """The cached snapshot (``refs/main``) of hub id ``model``, with every component folder it needs;
    one line naming the key and how to fetch it when it is missing."""
    from huggingface_hub import try_to_load_from_cache

    fetch = fetch.format(model=model)
    found = try_to_load_from_cache(model, "model_index.json", cache_dir=hub_cache())
    if not isinstance(found, str):
        raise FileNotFoundError(f"config key '{key}': {model} is not in the Hugging Face cache ({hub_cache()}): {fetch}")
    folder = Path(found).parent
    index = json.loads(Path(found).read_text())
    # a download killed half way: a component's folder absent, or a model's (config.json) without weights
    missing = [name for name in pipeline_components(index) if not (folder / name).is_dir()
               or ((folder / name / "config.json").exists() and not weight_files(folder / name))]
    if missing:
        raise FileNotFoundError(f"config key '{key}': the cached snapshot {folder} of {model} lacks "
                                f"{', '.join(missing)} (an interrupted download): {fetch}")
    return folder


# model_index.json's components that loading skips: StableRep trains on every generated image,
# so load_pipeline turns the safety checker off (1.2 GB for SD v1.5)
UNLOADED_COMPONENTS = ("safety_checker",)
# a component's weights as diffusers and transformers name them: plain, a variant (.fp16, .non_ema),
# sharded (-00001-of-00002) and their shard indexes
_WEIGHT_STEMS = "diffusion_pytorch_model|pytorch_model|model"
_WEIGHT_FILE = re.compile(rf"^(?:{_WEIGHT_STEMS})(?:\.(?P<variant>[A-Za-z0-9_]+))?(?:-\d{{5}}-of-\d{{5}})?"
                          r"\.(?P<format>safetensors|bin)$")
_WEIGHT_INDEX = re.compile(rf"^(?:{_WEIGHT_STEMS})\.(?P<format>safetensors|bin)\.index"
                           r"(?:\.(?P<variant>[A-Za-z0-9_]+))?\.json$")
# a folder with any of these is a model (config.json and one set of weights), else every file is read
_MODEL_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".onnx", ".pb", ".msgpack")


def pipeline_files(filenames: list[str], index: dict, variant: str | None = None) -> list[str]:
    """Which of a hub repo's files loading its pipeline reads: what diffusers'
    ``DiffusionPipeline.download`` fetches (with the safety checker passed as None).

    model_index.json; for each component it names (``pipeline_components``), a model's config.json
    and one set of weights, safetensors if it has them, else PyTorch ``.bin``, of ``variant``
    (``fp16``) when given and present, else the plain files; every file of the other components
    (scheduler, tokenizer, feature extractor). Not the single-file checkpoints at the root
    (``v1-5-pruned*.ckpt``/``.safetensors``) nor the other variants (``.fp16``, ``.non_ema``):
    SD v1.5's repo holds over 20 GB, its pipeline about 4 GB in float32.
    """
    if "model_index.json" not in filenames:
        raise InputError("the repo has no model_index.json (not a diffusers pipeline)")
    chosen = ["model_index.json"]
    for component in pipeline_components(index):
        files = sorted(f.split("/", 1)[1] for f in filenames
                       if f.startswith(f"{component}/") and f.count("/") == 1)
        if not any(f.endswith(_MODEL_SUFFIXES) for f in files):
            chosen += [f"{component}/{f}" for f in files]
            continue
        chosen += [f"{component}/config.json"] if "config.json" in files else []
        chosen += [f"{component}/{f}" for f in component_weights(component, files, variant)]
    return chosen


def component_weights(component: str, files: list[str], variant: str | None) -> list[str]:
    for fmt in ("safetensors", "bin"):
        by_variant: dict[str | None, list[str]] = {}
        for f in files:
            match = _WEIGHT_FILE.match(f) or _WEIGHT_INDEX.match(f)
            if match and match["format"] == fmt:
                by_variant.setdefault(match["variant"], []).append(f)
        if variant in by_variant:
            return by_variant[variant]
        if None in by_variant:
            return by_variant[None]
    raise InputError(f"component {component!r} has no safetensors or .bin weights ({', '.join(files)})")


def hub_listing(model: str) -> list[str]:
    """Every file name of hub repo ``model`` (its main branch)."""
    from huggingface_hub import HfApi

    return [s.rfilename for s in HfApi().model_info(model).siblings]


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def download_weights(model: str, key: str = "generation.model", variant: str | None = None) -> Path:
    """The pipeline folder of ``model``, fetched into the hub cache when it is a hub id: model_index.json
    first, then ``pipeline_files``. Offline (HF_HUB_OFFLINE=1, e.g. after ``hf download`` on a host
    with the network) the cache must already hold it."""
    if Path(model).exists():
        return model_folder(model, key)
    check_hub_id(model, key)
    if hub_offline():
        return cached_snapshot(model, key, "HF_HUB_OFFLINE is set: fetch it on a host with the network, into the "
                                           "same cache folder")
    from huggingface_hub import snapshot_download

    try:
        listing = hub_listing(model)
        first = Path(snapshot_download(model, allow_patterns=["model_index.json"], cache_dir=hub_cache()))
        files = pipeline_files(listing, json.loads((first / "model_index.json").read_text()), variant)
        snapshot_download(model, allow_patterns=files, cache_dir=hub_cache())
    except ValueError:
        raise
    except Exception as err:  # huggingface_hub's and httpx's errors: no repo, no network, no access
        raise FileNotFoundError(f"config key '{key}': cannot fetch {model} from the hub "
                                f"({type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''})") from None
    return cached_snapshot(model, key)


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
            raise InputError(f"{path}: corrupt or truncated weights file ({str(err).splitlines()[0]})") from None


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
    if config.get("rescale_betas_zero_snr") and "rescale_betas_zero_snr" not in params:
        able = [name for name, cls in SAMPLERS.items()
                if "rescale_betas_zero_snr" in inspect.signature(getattr(diffusers, cls).__init__).parameters]
        raise InputError(f"sampler {sampler!r}: {SAMPLERS[sampler]} has no zero-terminal-SNR schedule, which this "
                         f"model was trained with (rescale_betas_zero_snr); use one of {', '.join(able)}")
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
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {DTYPES}")
    torch_dtype = getattr(torch, dtype)
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


# weights_sha256 by (folder, weights_stamp): a config's specs name the same CLIP or pipeline once per
# source, run and job, and a real model's weights take seconds to hash each time
_WEIGHT_HASHES: dict[tuple[str, str], str] = {}


def weights_sha256(folder: Path) -> str:
    """One digest over the pipeline's weight files (names and contents); computed once per process
    while the files' names, sizes and modification times stay the same."""
    key = (str(Path(folder).resolve()), json.dumps(weights_stamp(folder)))
    if key not in _WEIGHT_HASHES:
        digest = hashlib.sha256()
        for path in weight_files(folder):
            digest.update(str(path.relative_to(folder)).encode())
            digest.update(sha256_file(path.resolve()).encode())
        _WEIGHT_HASHES[key] = digest.hexdigest()
    return _WEIGHT_HASHES[key]


def weights_stamp(folder: Path) -> list:
    """The weight files' names, sizes and modification times: cheap to read, and a changed file changes it."""
    return [[str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns] for p in weight_files(folder)]


def snapshot_record(folder: Path) -> Path | None:
    """Where the weights' hash of a hub cache snapshot is kept: beside the snapshot, in the repo's
    cache folder (``models--org--name/synrep/<revision>.json``; huggingface_hub's cache scan reads
    only refs, snapshots and blobs there). None for a local folder."""
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return folder.parent.parent / "synrep" / f"{folder.name}.json"
    return None


def fingerprint(model: str, cache_dir: Path, key: str = "generation.model") -> dict:
    """Model id, pipeline class and weights hash.

    Hashing SD's weights takes seconds to minutes on a shared file system, so the result is kept,
    keyed by the weight files' names, sizes and modification times (retrained weights get a new
    hash): beside a hub snapshot (``snapshot_record``), where download_weights puts it for every job,
    else in ``cache_dir``. Written atomically: jobs that hash at once each write a whole file.
    """
    folder = model_folder(model, key)
    stamp = weights_stamp(folder)
    record = snapshot_record(folder)
    if record is not None and record.exists():
        stored = json.loads(record.read_text())
        if stored.get("stamp") == stamp:
            return {"model": model, "pipeline": stored["pipeline"], "weights_sha256": stored["weights_sha256"]}
    cache_key = hashlib.sha256(json.dumps([str(folder.resolve()), stamp]).encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"{cache_key}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    index = json.loads((folder / "model_index.json").read_text())
    info = {"model": model, "pipeline": index.get("_class_name"), "weights_sha256": weights_sha256(folder)}
    if record is not None:
        try:
            write_json(record, {"pipeline": info["pipeline"], "weights_sha256": info["weights_sha256"],
                                "revision": folder.name, "stamp": stamp})
            return info
        except OSError:  # a read-only shared cache: keep it with the run instead
            pass
    write_json(cache, info)
    return info
