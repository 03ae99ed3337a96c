"""Generation into shards: layout, provenance, exact regeneration, resume, and the SD branch."""

import os
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import polars as pl
import pytest

from synrep.config import run_dir
from synrep.data.shards import read_shard, shard_path
from synrep.diffusion.pipelines import SAMPLERS, make_scheduler, weights_sha256
from synrep.fileio import write_parquet
from synrep.generation import generate, index
from synrep.generation.provenance import regenerate
from synrep.generation.sources import image_draws, image_seed, source_spec
from tests.conftest import REPO, assert_regenerated, tmp_overrides

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
        "sources.w1.guidance.w=1",
        "sources.w3.guidance.w=3",
        "train.data=w1",
        "sweep.grids=[{data: [w1, w3]}]",
        "generation.batch_size=5",
        "generation.grid_captions=2",
        "sample_quality.sources=[]",  # the default's previews of other modes
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
    expected_hash = weights_sha256(tiny_toy_pipeline_dir)
    for w in (1.0, 3.0):
        samples = [s for i in range(3) for s in read_shard(shard_path(run_dir(gen_cfg, "shards"), f"w{w:g}", i))]
        assert [s["record"]["caption"] for s in samples] == CAPTIONS
        for s in samples:
            r = s["record"]
            assert s["key"] == f"c{r['caption_id']:09d}"
            assert len(s["images"]) == 3 and s["images"][0].shape == (16, 16, 3)
            assert r["seeds"] == [image_seed(0, r["caption_id"], i) for i in range(3)]
            assert r["guidance_scales"] == [w] * 3 and r["source"] == source_spec(gen_cfg, f"w{w:g}")
            assert r["source"]["steps"] == 3 and r["source"]["sampler"] == gen_cfg.generation.sampler
            assert r["weights_sha256"] == expected_hash and r["pipeline"] == "ToyGlidePipeline"
            assert r["scheduler"] == SAMPLERS[gen_cfg.generation.sampler] and r["resolution"] == 16
            assert len({im.tobytes() for im in s["images"]}) == 3  # different noise per image
    # the same noise at every w: w = 1 and w = 3 images differ only through guidance
    a = next(read_shard(shard_path(run_dir(gen_cfg, "shards"), "w1", 0)))
    b = next(read_shard(shard_path(run_dir(gen_cfg, "shards"), "w3", 0)))
    assert a["record"]["seeds"] == b["record"]["seeds"]


def test_index_grids_and_mlflow(gen_cfg):
    from mlflow import MlflowClient
    from PIL import Image

    from synrep.images import image_grid
    from synrep.tracking import tracking_uri

    generate.run(gen_cfg)
    out = index.run(gen_cfg)
    client = MlflowClient(tracking_uri(gen_cfg))
    runs = client.search_runs([client.get_experiment_by_name(gen_cfg.name).experiment_id],
                              "tags.`synrep.step` = 'generate'")
    assert sorted(r.data.params["source"] for r in runs) == ["w1", "w3"]
    for source in ("w1", "w3"):
        table = pl.read_parquet(out[f"{source}/index"])
        assert table.height == 3 and table["samples"].sum() == 10 and table["images"].sum() == 30
        assert table["source"].to_list() == [source] * 3
        # the grid shows the first grid_captions captions of shard 0, l images each
        first = list(read_shard(shard_path(run_dir(gen_cfg, "shards"), source, 0)))[:2]
        expected = image_grid(np.concatenate([np.stack(s["images"]) for s in first]), rows=2, scale=4)
        np.testing.assert_array_equal(np.asarray(Image.open(out[f"{source}/grid"]).convert("RGB")), expected)
        (run,) = [r for r in runs if r.data.params["source"] == source]
        assert run.data.metrics["images"] == 30 and run.data.params["w"] == source[1:] + ".0"
        assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"index.parquet", "stats.json", "grid.png"}


def test_any_image_regenerates_exactly_from_its_record(gen_cfg):
    generate.run(gen_cfg, source="w3", shard=1)
    samples = list(read_shard(shard_path(run_dir(gen_cfg, "shards"), "w3", 1)))
    sample = samples[2]
    for i in range(3):
        assert_regenerated(regenerate(sample["record"], i), sample["images"][i])


def test_a_set_of_scales_draws_w_per_image_and_regenerates(make_cfg, small_world, tiny_toy_pipeline_dir):
    """sources.<name>.guidance.w as a set: each image's w is drawn from it, recorded, and its noise
    seed depends on the drawn w; every image regenerates from its record."""
    cfg = make_cfg(*gen_overrides(small_world, tiny_toy_pipeline_dir, "sources.mix.guidance.w=[1,3,5]",
                                  "sources.mix.l=6", "train.data=mix", "sweep.grids=[]"))
    write_captions(cfg)
    paths = generate.run(cfg)
    assert [p.parent.name for p in paths] == ["mix"] * 3
    samples = [s for p in paths for s in read_shard(p)]
    drawn = [w for s in samples for w in s["record"]["guidance_scales"]]
    assert set(drawn) == {1.0, 3.0, 5.0} and len(drawn) == 60
    for s in samples:
        r = s["record"]
        assert (r["seeds"], r["guidance_scales"]) == image_draws(source_spec(cfg, "mix"), r["caption_id"])
        # the same caption and image index at a single w would have had another noise seed
        assert all(seed != image_seed(0, r["caption_id"], i) for i, seed in enumerate(r["seeds"]))
    sample = samples[3]
    for i in range(6):
        assert_regenerated(regenerate(sample["record"], i), sample["images"][i])


def test_finished_shards_are_reused_only_with_matching_provenance(gen_cfg, make_cfg, small_world,
                                                                  tiny_toy_pipeline_dir):
    generate.run(gen_cfg, source="w1", shard=0)
    path = shard_path(run_dir(gen_cfg, "shards"), "w1", 0)
    stamp = path.stat().st_mtime_ns
    generate.run(gen_cfg, source="w1")
    assert path.stat().st_mtime_ns == stamp
    # another sampler under the same source name: the shard is made again, with the new provenance
    other = make_cfg(*gen_overrides(small_world, tiny_toy_pipeline_dir, "sources.w1.sampler=ddim"))
    assert generate.stale_reason(path, source_spec(other, "w1"), generate.generator_fingerprint(other, source_spec(other, "w1")))
    generate.run(other, source="w1", shard=0)
    assert path.stat().st_mtime_ns != stamp
    assert next(read_shard(path))["record"]["source"]["sampler"] == "ddim"


def test_unknown_shard_or_source_is_a_clear_error(gen_cfg):
    with pytest.raises(ValueError, match="'w5' is not a source"):
        generate.run(gen_cfg, source="w5")
    with pytest.raises(ValueError, match="shard 9 does not exist"):
        generate.run(gen_cfg, source="w1", shard=9)


def test_missing_model_names_the_config_key(make_cfg, small_world, tmp_path):
    cfg = make_cfg(*gen_overrides(small_world, tmp_path / "no_model"))
    write_captions(cfg)
    with pytest.raises(FileNotFoundError, match="generation.model"):
        generate.run(cfg)


def test_stable_diffusion_branch(make_cfg, small_world, tiny_sd_pipeline_dir):
    """The real-SD path: a tiny SD-architecture pipeline (UNet, VAE, CLIP) from save_pretrained."""
    cfg = make_cfg(*gen_overrides(small_world, tiny_sd_pipeline_dir, "generation.resolution=16",
                                  "generation.save_size=8", "train.data=w2", "sweep.grids=[]"))
    write_captions(cfg, CAPTIONS[:4])
    (path,) = generate.run(cfg)
    samples = list(read_shard(path))
    r = samples[0]["record"]
    assert r["pipeline"] == "StableDiffusionPipeline" and r["resolution"] == 16 and r["saved_size"] == 8
    assert samples[0]["images"][0].shape == (8, 8, 3)
    assert_regenerated(regenerate(r, 1), samples[0]["images"][1])


def _cli(overrides):
    return [sys.executable, "-m", "synrep", "generate", *overrides]


def test_killed_generation_leaves_no_partial_shard_and_resumes(tmp_path, small_world, tiny_toy_pipeline_dir):
    """SIGKILL mid-run, then resume: the shards equal those of an uninterrupted run, byte for byte."""
    from synrep.config import load_config

    captions = [f"a red circle number {i}" for i in range(40)]
    extra = ["generation.steps=40", "train.data=w2", "sweep.grids=[]", "generation.batch_size=4"]
    ref_over = tmp_overrides(tmp_path / "ref", *gen_overrides(small_world, tiny_toy_pipeline_dir, *extra))
    run_over = tmp_overrides(tmp_path / "run", *gen_overrides(small_world, tiny_toy_pipeline_dir, *extra))
    ref_cfg, run_cfg = load_config(ref_over), load_config(run_over)
    write_captions(ref_cfg, captions)
    write_captions(run_cfg, captions)
    shards = run_dir(run_cfg, "shards") / "w2"

    # the uninterrupted reference on the other core (one torch thread each)
    ref_log = tmp_path / "reference.log"
    with ref_log.open("w") as log:
        reference = subprocess.Popen(_cli(ref_over), cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
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
        assert reference.wait(timeout=300) == 0, ref_log.read_text()[-3000:]
    finally:
        reference.kill()
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
    ddim = make_scheduler("ddim", config)
    assert ddim.config.clip_sample and not ddim.config.thresholding
    dpm = make_scheduler("dpmsolver", config)
    assert dpm.config.thresholding and dpm.config.sample_max_value == config["clip_sample_range"]
    x0 = 3 * torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(dpm._threshold_sample(x0), x0.clamp(-1, 1))

    # a latent model's config (Stable Diffusion: no clip_sample) is left as it is
    sd = {**config, "clip_sample": False}
    assert not make_scheduler("dpmsolver", sd).config.thresholding


def test_a_zero_terminal_snr_model_keeps_its_schedule_under_each_sampler_or_is_refused(tiny_toy_pipeline_dir):
    import json

    import torch

    from synrep.settings import InputError

    config = {**json.loads((tiny_toy_pipeline_dir / "scheduler" / "scheduler_config.json").read_text()),
              "prediction_type": "v_prediction", "rescale_betas_zero_snr": True}
    trained = make_scheduler("ddim", config).alphas_cumprod
    assert float(trained[-1]) == 0.0
    for sampler in ("ddpm", "dpmsolver", "euler"):
        scheduler = make_scheduler(sampler, config)
        assert scheduler.config.prediction_type == "v_prediction"
        # DPM-Solver and Euler keep the zero-SNR schedule, with the last ᾱ nudged off 0 (2^-24) as diffusers does
        assert torch.allclose(scheduler.alphas_cumprod[:-1], trained[:-1]), sampler
        assert float(scheduler.alphas_cumprod[-1]) <= 2.0 ** -24, sampler
    with pytest.raises(InputError, match=r"sampler 'pndm': PNDMScheduler has no zero-terminal-SNR schedule.*use one "
                                         r"of ddim, ddpm, dpmsolver, euler"):
        make_scheduler("pndm", config)


def test_first_captions_own_prompts_and_a_union_of_sources(make_cfg, small_world, tiny_toy_pipeline_dir, tmp_path):
    """sources.<name>.captions takes the first N captions, .prompts a file of its own, and mode union
    joins sources' shards into one data set (its index lists theirs; training reads them as one)."""
    from synrep.data import stream

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a sks ring\n\na big sks ring\na sks ring on a dark background\n")
    cfg = make_cfg(*gen_overrides(small_world, tiny_toy_pipeline_dir, "sources.w1.captions=5",
                                  f"sources.own.prompts={prompts}", "sources.both.mode=union",
                                  "sources.both.union=[w1,own]", "train.data=both", "sweep.grids=[]"))
    write_captions(cfg)
    paths = generate.run(cfg)
    assert [p.relative_to(run_dir(cfg, "shards")).as_posix() for p in paths] == [
        "w1/shard-000000.tar", "w1/shard-000001.tar", "own/shard-000000.tar"]
    records = {name: [s["record"] for p in paths if p.parent.name == name for s in read_shard(p)]
               for name in ("w1", "own")}
    assert [r["caption"] for r in records["w1"]] == CAPTIONS[:5]
    assert [(r["caption_id"], r["caption"]) for r in records["own"]] == [
        (0, "a sks ring"), (1, "a big sks ring"), (2, "a sks ring on a dark background")]
    assert records["own"][0]["source"]["prompts"]["count"] == 3
    assert_regenerated(regenerate(records["own"][1], 2),
                                  list(read_shard(run_dir(cfg, "shards", "own", "shard-000000.tar")))[1]["images"][2])
    out = index.run(cfg)
    joined = pl.read_parquet(out["both/index"])
    parts = [pl.read_parquet(out[f"{name}/index"]) for name in ("w1", "own")]
    assert joined["path"].to_list() == parts[0]["path"].to_list() + parts[1]["path"].to_list()
    assert joined["shard"].to_list() == [0, 1, 2] and joined["source"].to_list() == ["w1", "w1", "own"]
    assert stream.count_captions(cfg, "both") == 8
    # an edited prompts file makes the shard stale
    prompts.write_text("a sks ring\na small sks ring\na sks ring on a dark background\n")
    edited = make_cfg(*gen_overrides(small_world, tiny_toy_pipeline_dir, f"sources.own.prompts={prompts}"))
    spec = source_spec(edited, "own")
    assert "sources.own: prompts" in generate.stale_reason(paths[2], spec, generate.generator_fingerprint(edited, spec))


def serial_shard(cfg, source, index_):
    """A shard made the plain way, for reference: the whole shard's images in one sampling call,
    resized there, then encoded and written one after another."""
    from synrep.data.shards import sample_key, shard_ranges, write_shard
    from synrep.diffusion.pipelines import load_pipeline
    from synrep.generation.provenance import make_record
    from synrep.generation.source_images import caption_images

    spec = source_spec(cfg, source)
    model = generate.generator_fingerprint(cfg, spec)
    captions = generate.load_captions(cfg)
    shard = shard_ranges(len(captions), cfg.generation.captions_per_shard, source)[index_]
    rows = captions.slice(shard.start, shard.stop - shard.start)
    pipe = load_pipeline(spec["generator"], spec["sampler"], spec["dtype"], cfg.generation.device)
    draws = [image_draws(spec, cid) for cid in rows["caption_id"]]
    images = caption_images(pipe, spec, rows["caption"].to_list(), draws)
    samples = [{"key": sample_key(cid), "images": list(images[k]),
                "record": make_record(spec, model, pipe, text, cid, draws[k][0], draws[k][1], images.shape[2])}
               for k, (cid, text) in enumerate(zip(rows["caption_id"], rows["caption"]))]
    return write_shard(run_dir(cfg, "reference") / "shard.tar", samples, spec["image_format"])


def test_a_killed_shard_job_resumes_at_its_last_part_with_the_same_bytes(make_cfg, small_world, tiny_toy_pipeline_dir,
                                                                         monkeypatch):
    """Parts of 2 captions (resume_images = 6 images of l = 3; batches of 3 images = 1 caption);
    images saved at 8 px of 16, resized in the encoding threads: the same shard as made serially."""
    from synrep.generation import source_images

    cfg = make_cfg(*gen_overrides(small_world, tiny_toy_pipeline_dir, "generation.captions_per_shard=10",
                                  "generation.batch_size=3", "generation.resume_images=6", "generation.save_size=8",
                                  "train.data=w1", "sweep.grids=[]"))
    write_captions(cfg)
    path = shard_path(run_dir(cfg, "shards"), "w1", 0)
    parts = generate.parts_dir(path)
    calls = []

    def sample_until(limit):
        def caption_images(pipe, spec, captions, *args, **kwargs):
            if len(calls) == limit:
                raise KeyboardInterrupt  # the job is killed while sampling caption `limit`
            calls.append(captions)
            assert len(captions) == 1 and spec["save_size"] is None
            return source_images.caption_images(pipe, spec, captions, *args, **kwargs)
        return caption_images

    monkeypatch.setattr(generate, "caption_images", sample_until(7))
    with pytest.raises(KeyboardInterrupt):
        generate.run(cfg, source="w1")
    assert not path.exists()
    saved = sorted(p.name for p in parts.glob("*/part-*.tar"))
    # parts 0-2 and 2-4 at least (one part may still wait on its encoding), never the one being sampled
    assert saved[:2] == ["part-000000-000002.tar", "part-000002-000004.tar"] and len(saved) <= 3, saved
    calls.clear()
    monkeypatch.setattr(generate, "caption_images", sample_until(None))
    generate.run(cfg, source="w1")
    resumed = [c for (c,) in calls]
    assert resumed == CAPTIONS[2 * len(saved):]  # the saved parts are not sampled again
    assert not parts.exists()
    assert path.read_bytes() == serial_shard(cfg, "w1", 0).read_bytes()
    assert [s["images"][0].shape for s in read_shard(path)] == [(8, 8, 3)] * 10


def test_parts_of_other_settings_are_not_reused(make_cfg, small_world, tiny_toy_pipeline_dir):
    over = ["generation.captions_per_shard=10", "generation.batch_size=3", "generation.resume_images=6",
            "train.data=w1", "sweep.grids=[]"]
    cfg = make_cfg(*gen_overrides(small_world, tiny_toy_pipeline_dir, *over))
    write_captions(cfg)
    path = shard_path(run_dir(cfg, "shards"), "w1", 0)
    stale = generate.parts_dir(path) / "0123456789abcdef" / "part-000000-000002.tar"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"not a part of these settings")
    generate.run(cfg, source="w1")
    assert not generate.parts_dir(path).exists()
    assert path.read_bytes() == serial_shard(cfg, "w1", 0).read_bytes()


def test_jpeg_shards_per_source(make_cfg, small_world, tiny_toy_pipeline_dir):
    from synrep.config import ConfigError
    from synrep.data.shards import shard_record

    cfg = make_cfg(*gen_overrides(small_world, tiny_toy_pipeline_dir, "sources.w3.image_format=jpg"))
    write_captions(cfg, CAPTIONS[:4])
    generate.run(cfg)
    for source, fmt in (("w1", "png"), ("w3", "jpg")):
        path = shard_path(run_dir(cfg, "shards"), source, 0)
        with tarfile.open(path) as tar:
            names = [m.name for m in tar]
        assert names[:4] == [f"c000000100.{i}.{fmt}" for i in range(3)] + ["c000000100.json"]
        first = next(read_shard(path))
        assert first["record"]["source"]["image_format"] == fmt and shard_record(path)["image_format"] == fmt
        assert first["images"][0].shape == (16, 16, 3)
    assert source_spec(cfg, "w1") == source_spec(make_cfg(*gen_overrides(small_world, tiny_toy_pipeline_dir)), "w1")
    with pytest.raises(ConfigError, match="sources.w3.image_format"):
        make_cfg(*gen_overrides(small_world, tiny_toy_pipeline_dir, "sources.w3.image_format=gif"))


def test_a_shard_job_reads_only_its_captions(gen_cfg, monkeypatch):
    loaded = []
    load = generate.load_captions

    def counting(cfg, *args, **kwargs):
        loaded.append(load(cfg, *args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(generate, "load_captions", counting)
    (path,) = generate.run(gen_cfg, source="w1", shard=1)
    assert [frame["caption"].to_list() for frame in loaded] == [CAPTIONS[4:8]]
    assert [s["record"]["caption"] for s in read_shard(path)] == CAPTIONS[4:8]
