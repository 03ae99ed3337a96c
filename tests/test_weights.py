"""Stable Diffusion weights from the hub: only the pipeline's files fetched, once; jobs offline;
the weights hashed once.

No network here: the hub is a local folder served through a stand-in for ``snapshot_download``
that lays files out as the Hugging Face cache does (blobs, snapshots/<revision>, refs/main), so
that the code under test finds them with huggingface_hub's own cache lookup.
"""

import json
import shutil
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from synrep.config import run_dir
from synrep.data.shards import read_shard
from synrep.diffusion import pipelines
from synrep.diffusion.pipelines import pipeline_files
from synrep.fileio import sha256_file
from synrep.generation import download, generate
from tests.test_generate import gen_overrides, write_captions

# stable-diffusion-v1-5/stable-diffusion-v1-5's files (the copy of the deleted runwayml repo)
SD15_FILES = [
    ".gitattributes", "README.md", "model_index.json", "v1-inference.yaml",
    "v1-5-pruned-emaonly.ckpt", "v1-5-pruned-emaonly.safetensors", "v1-5-pruned.ckpt", "v1-5-pruned.safetensors",
    "feature_extractor/preprocessor_config.json",
    "safety_checker/config.json", "safety_checker/model.fp16.safetensors", "safety_checker/model.safetensors",
    "safety_checker/pytorch_model.bin", "safety_checker/pytorch_model.fp16.bin",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json", "text_encoder/model.fp16.safetensors", "text_encoder/model.safetensors",
    "text_encoder/pytorch_model.bin", "text_encoder/pytorch_model.fp16.bin",
    "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json", "unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.fp16.bin",
    "unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.non_ema.bin",
    "unet/diffusion_pytorch_model.non_ema.safetensors", "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json", "vae/diffusion_pytorch_model.bin", "vae/diffusion_pytorch_model.fp16.bin",
    "vae/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.safetensors",
]
SD15_INDEX = {
    "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.6.0",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
    "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def diffusers_download_files(tmp_path, filenames, index, variant=None):
    """The files diffusers' own ``DiffusionPipeline.download`` fetches for this listing (with the
    safety checker passed as None, as load_pipeline does): its hub calls answered locally, its
    allow / ignore patterns applied as snapshot_download applies them."""
    import diffusers.pipelines.pipeline_utils as pu
    from huggingface_hub.utils import filter_repo_objects

    folder = tmp_path / "diffusers_download"
    folder.mkdir(exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps(index))
    asked = {}

    def snapshot_download(repo_id, **kwargs):
        asked.update(kwargs)
        return str(folder)

    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(pu, "_resolve_revision", lambda name, **kw: kw.get("revision"))
        mp.setattr(pu, "model_info", lambda *a, **kw: SimpleNamespace(
            siblings=[SimpleNamespace(rfilename=f) for f in filenames]))
        mp.setattr(pu, "hf_hub_download", lambda *a, **kw: str(folder / "model_index.json"))
        mp.setattr(pu, "snapshot_download", snapshot_download)
        pu.DiffusionPipeline.download("org/name", local_files_only=False, use_safetensors=True,
                                      variant=variant, safety_checker=None)
    finally:
        mp.undo()
    return set(filter_repo_objects(filenames, allow_patterns=asked["allow_patterns"],
                                   ignore_patterns=asked["ignore_patterns"]))


@pytest.mark.parametrize("variant", [None, "fp16"])
def test_pipeline_files_are_what_diffusers_download_fetches(tmp_path, variant):
    chosen = pipeline_files(SD15_FILES, SD15_INDEX, variant)
    assert set(chosen) == diffusers_download_files(tmp_path, SD15_FILES, SD15_INDEX, variant)
    assert len(chosen) == len(set(chosen))
    # none of the single-file checkpoints, the safety checker, pickles or other variants
    assert not [f for f in chosen if "/" not in f and f != "model_index.json"]
    assert not [f for f in chosen if f.startswith("safety_checker/") or f.endswith((".bin", ".ckpt"))]
    weights = sorted(f for f in chosen if f.endswith(".safetensors"))
    suffix = ".fp16.safetensors" if variant else ".safetensors"
    assert weights == sorted(f"{c}/{'diffusion_pytorch_model' if c != 'text_encoder' else 'model'}{suffix}"
                             for c in ("text_encoder", "unet", "vae"))


def test_pipeline_files_fall_back_to_bin_and_read_every_file_of_other_components():
    files = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.bin",
             "unet/diffusion_pytorch_model.fp16.bin", "scheduler/scheduler_config.json", "scheduler/notes.txt",
             "extra/diffusion_pytorch_model.safetensors"]
    index = {"_class_name": "X", "unet": ["diffusers", "UNet2DConditionModel"],
             "scheduler": ["diffusers", "DDIMScheduler"], "image_encoder": [None, None]}
    assert sorted(pipeline_files(files, index)) == [
        "model_index.json", "scheduler/notes.txt", "scheduler/scheduler_config.json", "unet/config.json",
        "unet/diffusion_pytorch_model.bin"]
    # a variant that a component lacks: its plain weights
    assert "unet/diffusion_pytorch_model.bin" in pipeline_files(files, index, variant="bf16")
    with pytest.raises(ValueError, match="'unet' has no safetensors or .bin weights"):
        pipeline_files(["model_index.json", "unet/config.json", "unet/model.ckpt"], index)


class LocalHub:
    """A hub repo served from a local folder into a Hugging Face cache laid out as huggingface_hub
    lays it out, counting what is asked of it."""

    REVISION = "0123456789abcdef0123456789abcdef01234567"

    def __init__(self, remote: Path, repo: str, cache: Path):
        self.remote, self.repo, self.cache = remote, repo, cache
        self.fetched: list[str] = []
        self.listings = 0

    def listing(self) -> list[str]:
        return sorted(p.relative_to(self.remote).as_posix() for p in self.remote.rglob("*") if p.is_file())

    def hub_listing(self, repo_id):
        assert repo_id == self.repo
        self.listings += 1
        return self.listing()

    def snapshot_download(self, repo_id, *, allow_patterns=None, ignore_patterns=None, cache_dir=None, **kwargs):
        from huggingface_hub.utils import filter_repo_objects

        assert repo_id == self.repo and Path(cache_dir) == self.cache
        repo_dir = self.cache / f"models--{repo_id.replace('/', '--')}"
        snapshot = repo_dir / "snapshots" / self.REVISION
        for name in filter_repo_objects(self.listing(), allow_patterns=allow_patterns, ignore_patterns=ignore_patterns):
            blob = repo_dir / "blobs" / sha256_file(self.remote / name)
            blob.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.remote / name, blob)
            link = snapshot / name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.unlink(missing_ok=True)
            link.symlink_to(blob)
            self.fetched.append(name)
        (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / "main").write_text(self.REVISION)
        return str(snapshot)


def save_tensors(path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"w": torch.zeros(4)}, str(path))


@pytest.fixture
def hub(tmp_path, monkeypatch, tiny_sd_pipeline_dir):
    """The tiny SD pipeline as hub repo ``org/tiny-sd``, with what a real SD repo holds beside it:
    single-file checkpoints at the root, fp16 and non-EMA variants, pickled copies."""
    import huggingface_hub
    from huggingface_hub import constants

    remote = tmp_path / "remote"
    shutil.copytree(tiny_sd_pipeline_dir, remote)
    for extra in ("v1-5-pruned.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
                  "unet/diffusion_pytorch_model.non_ema.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors"):
        save_tensors(remote / extra)
    (remote / "v1-5-pruned.ckpt").write_bytes(b"pickle")
    (remote / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    local = LocalHub(remote, "org/tiny-sd", tmp_path / "hf_cache")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(local.cache))
    monkeypatch.setattr(pipelines, "hub_listing", local.hub_listing)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", local.snapshot_download)
    pipelines.load_pipeline.cache_clear()
    yield local
    pipelines.load_pipeline.cache_clear()


def count_hashing(monkeypatch) -> list:
    calls = []
    real = pipelines.weights_sha256

    def counted(folder):
        calls.append(folder)
        return real(folder)

    monkeypatch.setattr(pipelines, "weights_sha256", counted)
    return calls


def no_network(monkeypatch, hub):
    """From here on any hub call or socket connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network used: {args[:2]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(pipelines, "hub_listing", refuse)
    monkeypatch.setattr(hub, "snapshot_download", refuse)
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)


def shard_images(paths):
    return [np.stack(s["images"]) for p in paths for s in read_shard(p)]


def test_download_once_then_generation_offline_hashes_once(make_cfg, small_world, tiny_sd_pipeline_dir, hub,
                                                          monkeypatch, tmp_path):
    monkeypatch.setattr(pipelines, "hub_offline", lambda: False)
    hashing = count_hashing(monkeypatch)
    extra = ["generation.resolution=16", "generation.save_size=8", "train.data=w2", "sweep.grids=[]"]
    cfg = make_cfg(*gen_overrides(small_world, "org/tiny-sd", *extra))
    out = download.run(cfg)

    # only the pipeline's files: no root checkpoint, no variant, no pickle
    listing = hub.listing()
    index = json.loads((hub.remote / "model_index.json").read_text())
    assert sorted(set(hub.fetched)) == sorted(pipeline_files(listing, index))
    assert not {"v1-5-pruned.safetensors", "v1-5-pruned.ckpt", "unet/diffusion_pytorch_model.bin",
                "unet/diffusion_pytorch_model.fp16.safetensors"} & set(hub.fetched)
    # the snapshot's weights are the saved pipeline's, byte for byte: the same hash
    record = json.loads(out["weights"].read_text())
    assert record["weights_sha256"] == pipelines.weights_sha256(tiny_sd_pipeline_dir)
    assert record["model"] == "org/tiny-sd" and record["pipeline"] == "StableDiffusionPipeline"
    snapshot = Path(record["folder"])
    assert json.loads(pipelines.snapshot_record(snapshot).read_text())["weights_sha256"] == record["weights_sha256"]
    assert len(hashing) == 2  # once by download_run, once above as the reference

    # generation jobs: no network, no hashing, the same images as from the saved folder
    no_network(monkeypatch, hub)
    write_captions(cfg)
    paths = generate.run(cfg)
    other = make_cfg(*gen_overrides(small_world, "org/tiny-sd", *extra), base=tmp_path / "second")
    write_captions(other)
    generate.run(other)  # another run folder reads the hash beside the snapshot too
    assert len(hashing) == 2
    assert {s["record"]["weights_sha256"] for p in paths for s in read_shard(p)} == {record["weights_sha256"]}
    pipelines.load_pipeline.cache_clear()
    ref = make_cfg(*gen_overrides(small_world, tiny_sd_pipeline_dir, *extra), base=tmp_path / "ref")
    write_captions(ref)
    for got, want in zip(shard_images(paths), shard_images(generate.run(ref)), strict=True):
        np.testing.assert_array_equal(got, want)

    # offline (HF_HUB_OFFLINE=1 after a download elsewhere): download_weights finds the cache
    monkeypatch.setattr(pipelines, "hub_offline", lambda: True)
    assert pipelines.download_weights("org/tiny-sd") == snapshot


def test_changed_weights_are_hashed_again_and_concurrent_jobs_agree(hub, monkeypatch):
    monkeypatch.setattr(pipelines, "hub_offline", lambda: False)
    snapshot = pipelines.download_weights("org/tiny-sd")
    hashing = count_hashing(monkeypatch)
    with ThreadPoolExecutor(4) as pool:  # array jobs starting at once with no stored hash
        infos = list(pool.map(lambda _: pipelines.fingerprint("org/tiny-sd", hub.cache / "unused"), range(4)))
    assert len({i["weights_sha256"] for i in infos}) == 1
    record = json.loads(pipelines.snapshot_record(snapshot).read_text())  # one whole file
    assert record["weights_sha256"] == infos[0]["weights_sha256"] == pipelines.weights_sha256(snapshot)
    assert not list(pipelines.snapshot_record(snapshot).parent.glob("*.tmp"))
    calls = len(hashing)
    assert pipelines.fingerprint("org/tiny-sd", hub.cache / "unused") == infos[0] and len(hashing) == calls
    # a weights file replaced in place: its size and time change, so it is hashed again
    unet = next((snapshot / "unet").glob("*.safetensors"))
    blob = unet.resolve()
    blob.unlink()
    save_tensors(blob)
    assert pipelines.fingerprint("org/tiny-sd", hub.cache / "unused")["weights_sha256"] != infos[0]["weights_sha256"]
    assert len(hashing) == calls + 1


def unreachable(model):
    raise ConnectionError("Name or service not known\n(more lines of the client's trace)")


def test_missing_or_partial_snapshot_is_one_clear_error(hub, monkeypatch, make_cfg):
    with pytest.raises(FileNotFoundError) as err:
        pipelines.model_folder("org/tiny-sd", "sources.w2.generator")
    message = str(err.value)
    assert "\n" not in message and "'sources.w2.generator'" in message and "not in the Hugging Face cache" in message
    assert "python -m synrep download_weights generation.model=org/tiny-sd" in message
    # offline, download_weights cannot fetch it either, and says so the same way
    monkeypatch.setattr(pipelines, "hub_offline", lambda: True)
    with pytest.raises(FileNotFoundError, match="not in the Hugging Face cache"):
        download.run(make_cfg("generation.model=org/tiny-sd"))
    monkeypatch.setattr(pipelines, "hub_offline", lambda: False)
    with monkeypatch.context() as m:  # no route to the hub, or a deleted repo: one line too
        m.setattr(pipelines, "hub_listing", unreachable)
        with pytest.raises(FileNotFoundError, match=r"^config key 'generation.model': cannot fetch org/tiny-sd "
                                                    r"from the hub \(ConnectionError: Name or service not known\)$"):
            pipelines.download_weights("org/tiny-sd")
    snapshot = pipelines.download_weights("org/tiny-sd")
    # downloads killed half way: a component without its weights, a component not yet begun
    for weights in (snapshot / "unet").glob("*.safetensors"):
        weights.unlink()
    shutil.rmtree(snapshot / "vae")
    with pytest.raises(FileNotFoundError, match=r"lacks unet, vae \(an interrupted download\)"):
        pipelines.model_folder("org/tiny-sd")
    assert not run_dir(make_cfg(), "weights").exists()


def test_snakemake_rule_records_a_predownloaded_snapshot_offline(hub, monkeypatch, tmp_path, tiny_sd_pipeline_dir):
    """The rule's output is the step's record; with HF_HUB_OFFLINE=1 (weights fetched elsewhere into
    the shared cache) it only checks the snapshot and hashes it, in the cache the jobs read."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    monkeypatch.setattr(pipelines, "hub_offline", lambda: False)
    pipelines.download_weights("org/tiny-sd")
    from synrep.config import load_config

    target = run_dir(load_config([f"paths.results_dir={tmp_path}/results"]), "weights", "org--tiny-sd.json")
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "1", str(target), "--config",
         f"paths={{data_dir: {tmp_path}/data, results_dir: {tmp_path}/results}}", "generation={model: org/tiny-sd}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_CACHE": str(hub.cache), "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    record = json.loads(target.read_text())
    assert record["weights_sha256"] == pipelines.weights_sha256(tiny_sd_pipeline_dir)
    snapshot = Path(record["folder"])
    assert json.loads(pipelines.snapshot_record(snapshot).read_text())["weights_sha256"] == record["weights_sha256"]
