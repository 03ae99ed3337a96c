"""Generation into shards: layout, provenance, exact regeneration, resume, and the SD branch."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import polars as pl
import pytest

from synrep.generation import generate
from synrep.config import run_dir
from synrep.fileio import write_parquet
from synrep.data.shards import read_shard, shard_path
from tests.conftest import REPO, tmp_overrides

CAPTIONS = [
    "a red circle", "a big blue cross", "a photo of a small green ring", "yellow triangle, tiny",
    "a pink frame on a dark background", "one cyan plus sign", "a purple block", "an orange hoop",
    "a huge blue disc", "a little red wedge",
]


def gen_overrides(world, model, *extra):
    return [
        f"paths.data_dir={world}/data",
        f"generation.model={model}",
        "generation.steps=3",
        "generation.images_per_caption=3",
        "generation.captions_per_shard=4",
        "generation.guidance_scales=[1,3]",
        "generation.batch_size=5",
        "generation.grid_captions=2",
        *extra,
    ]


def write_captions(cfg, captions=CAPTIONS):
    ids = list(range(100, 100 + len(captions)))  # ids need not start at 0
    write_parquet(run_dir(cfg, "captions", "captions.parquet"), pl.DataFrame({"caption_id": ids, "caption": captions}))


@pytest.fixture
def gen_cfg(make_cfg, small_world, tiny_toy_pipeline_dir):
    cfg = make_cfg(*gen_overrides(small_world, tiny_toy_pipeline_dir))
    write_captions(cfg)
    return cfg


def test_shards_cover_every_caption_with_provenance(gen_cfg, tiny_toy_pipeline_dir):
    paths = generate.run(gen_cfg)
    assert [p.relative_to(run_dir(gen_cfg, "shards")).as_posix() for p in paths] == [
        f"w{w}/shard-{i:06d}.tar" for w in ("1", "3") for i in range(3)
    ]
    expected_hash = generate.weights_sha256(tiny_toy_pipeline_dir)
    for w in (1.0, 3.0):
        samples = [s for i in range(3) for s in read_shard(shard_path(run_dir(gen_cfg, "shards"), w, i))]
        assert [s["record"]["caption"] for s in samples] == CAPTIONS
        for s in samples:
            r = s["record"]
            assert s["key"] == f"c{r['caption_id']:09d}"
            assert len(s["images"]) == 3 and s["images"][0].shape == (16, 16, 3)
            assert r["seeds"] == [generate.image_seed(0, r["caption_id"], i) for i in range(3)]
            assert r["guidance_scale"] == w and r["steps"] == 3 and r["sampler"] == gen_cfg.generation.sampler
            assert r["weights_sha256"] == expected_hash and r["pipeline"] == "ToyGlidePipeline"
            assert r["scheduler"] == generate.SAMPLERS[gen_cfg.generation.sampler] and r["resolution"] == 16
            assert len({im.tobytes() for im in s["images"]}) == 3  # different noise per image
    # the same noise at every w: w = 1 and w = 3 images differ only through guidance
    a = next(read_shard(shard_path(run_dir(gen_cfg, "shards"), 1.0, 0)))
    b = next(read_shard(shard_path(run_dir(gen_cfg, "shards"), 3.0, 0)))
    assert a["record"]["seeds"] == b["record"]["seeds"]


def test_index_grids_and_mlflow(gen_cfg):
    from mlflow import MlflowClient

    from synrep.tracking import tracking_uri

    generate.run(gen_cfg)
    out = generate.index_run(gen_cfg)
    index = pl.read_parquet(out["index"])
    assert index.height == 6 and index["samples"].sum() == 20 and index["images"].sum() == 60
    assert sorted(index["w"].unique().to_list()) == [1.0, 3.0]
    for w in ("1", "3"):
        from PIL import Image

        assert Image.open(out[f"grid_w{w}"]).size[0] > 0
    client = MlflowClient(tracking_uri(gen_cfg))
    (run,) = client.search_runs([client.get_experiment_by_name(gen_cfg.name).experiment_id],
                                "tags.`synrep.step` = 'generate'")
    assert run.data.metrics["images"] == 60
    assert {a.path for a in client.list_artifacts(run.info.run_id, "grids")} == {
        "grids/samples_w1.png", "grids/samples_w3.png"}


def test_any_image_regenerates_exactly_from_its_record(gen_cfg):
    generate.run(gen_cfg, w=3.0, shard=1)
    samples = list(read_shard(shard_path(run_dir(gen_cfg, "shards"), 3.0, 1)))
    sample = samples[2]
    for i in range(3):
        np.testing.assert_array_equal(generate.regenerate(sample["record"], i), sample["images"][i])


def test_finished_shards_are_skipped(gen_cfg):
    generate.run(gen_cfg, w=1.0, shard=0)
    path = shard_path(run_dir(gen_cfg, "shards"), 1.0, 0)
    stamp = path.stat().st_mtime_ns
    generate.run(gen_cfg, w=1.0)
    assert path.stat().st_mtime_ns == stamp


def test_unknown_shard_or_w_is_a_clear_error(gen_cfg):
    with pytest.raises(ValueError, match="guidance_scales"):
        generate.run(gen_cfg, w=5.0)
    with pytest.raises(ValueError, match="shard 9 does not exist"):
        generate.run(gen_cfg, shard=9)


def test_missing_model_names_the_config_key(make_cfg, small_world, tmp_path):
    cfg = make_cfg(*gen_overrides(small_world, tmp_path / "no_model"))
    write_captions(cfg)
    with pytest.raises(FileNotFoundError, match="generation.model"):
        generate.run(cfg)


def test_stable_diffusion_branch(make_cfg, small_world, tiny_sd_pipeline_dir):
    """The real-SD path: a tiny SD-architecture pipeline (UNet, VAE, CLIP) from save_pretrained."""
    cfg = make_cfg(*gen_overrides(small_world, tiny_sd_pipeline_dir, "generation.resolution=16",
                                  "generation.save_size=8", "generation.guidance_scales=[2]"))
    write_captions(cfg, CAPTIONS[:4])
    (path,) = generate.run(cfg)
    samples = list(read_shard(path))
    r = samples[0]["record"]
    assert r["pipeline"] == "StableDiffusionPipeline" and r["resolution"] == 16 and r["saved_size"] == 8
    assert samples[0]["images"][0].shape == (8, 8, 3)
    np.testing.assert_array_equal(generate.regenerate(r, 1), samples[0]["images"][1])


def _cli(overrides):
    return [sys.executable, "-m", "synrep", "generate", *overrides]


def test_killed_generation_leaves_no_partial_shard_and_resumes(tmp_path, small_world, tiny_toy_pipeline_dir):
    """SIGKILL mid-run, then resume: the shards equal those of an uninterrupted run, byte for byte."""
    from synrep.config import load_config

    captions = [f"a red circle number {i}" for i in range(40)]
    extra = ["generation.steps=40", "generation.guidance_scales=[2]", "generation.batch_size=4"]
    ref_over = tmp_overrides(tmp_path / "ref", *gen_overrides(small_world, tiny_toy_pipeline_dir, *extra))
    run_over = tmp_overrides(tmp_path / "run", *gen_overrides(small_world, tiny_toy_pipeline_dir, *extra))
    ref_cfg, run_cfg = load_config(ref_over), load_config(run_over)
    write_captions(ref_cfg, captions)
    write_captions(run_cfg, captions)
    shards = run_dir(run_cfg, "shards") / "w2"

    proc = subprocess.Popen(_cli(run_over), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(shards.glob("shard-000001.tar")):
        time.sleep(0.05)
    # now shard 2 is being generated: kill the job in the middle of it
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in shards.glob("shard-*.tar"))
    assert 2 <= len(done) < 10, done
    for path in shards.glob("shard-*.tar"):
        assert len(list(read_shard(path))) == 4  # complete, never partial

    assert subprocess.run(_cli(run_over), cwd=REPO, capture_output=True).returncode == 0
    assert subprocess.run(_cli(ref_over), cwd=REPO, capture_output=True).returncode == 0
    assert not list(shards.glob(".*.tmp"))
    ref = run_dir(ref_cfg, "shards") / "w2"
    names = sorted(p.name for p in ref.glob("shard-*.tar"))
    assert names == sorted(p.name for p in shards.glob("shard-*.tar")) and len(names) == 10
    for name in names:
        assert (ref / name).read_bytes() == (shards / name).read_bytes(), name


def test_dpmsolver_clamps_x0_like_the_ddim_config_it_comes_from(tiny_toy_pipeline_dir):
    """The toy generator is trained and saved with x0 clipping (DDIM's clip_sample); DPM-Solver has
    no clip_sample, so make_scheduler turns the same clamp into static thresholding."""
    import json

    import torch

    config = json.loads((tiny_toy_pipeline_dir / "scheduler" / "scheduler_config.json").read_text())
    assert config["clip_sample"] is True
    ddim = generate.make_scheduler("ddim", config)
    assert ddim.config.clip_sample and not ddim.config.thresholding
    dpm = generate.make_scheduler("dpmsolver", config)
    assert dpm.config.thresholding and dpm.config.sample_max_value == config["clip_sample_range"]
    x0 = 3 * torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(dpm._threshold_sample(x0), x0.clamp(-1, 1))

    # a latent model's config (Stable Diffusion: no clip_sample) is left as it is
    sd = {**config, "clip_sample": False}
    assert not generate.make_scheduler("dpmsolver", sd).config.thresholding
