"""Each source's quality measured on its own shards, and the generator-family table that puts it
beside StableRep's accuracy on that source."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
from PIL import Image

from tests.test_sweep_report import GRIDS, fabricate


def test_source_quality_is_the_judge_on_the_sources_own_images(make_cfg, small_world, tiny_toy_pipeline_dir,
                                                               tiny_clip_dir):
    from synrep.data import captions, toy_vocabulary
    from synrep.data.shards import read_shard
    from synrep.evaluation import attribute_classifier as ac
    from synrep.evaluation import source_quality
    from synrep.generation import generate

    cfg = make_cfg(f"paths.data_dir={small_world}/data", f"generation.model={tiny_toy_pipeline_dir}",
                   f"generation.clip_model={tiny_clip_dir}", "generation.steps=2", "generation.images_per_caption=3",
                   "generation.captions_per_shard=4", "captions.limit=6", "sample_quality.classifier_epochs=1",
                   "sources.bg.mode=inpaint", "sweep.grids=[{method:[stablerep],data:[w2,bg]}]",
                   "sources.w2.guidance.w=2", "sample_quality.sources=[]")
    captions.run(cfg)
    generate.run(cfg)
    outputs = source_quality.run(cfg)
    assert list(outputs) == ["w2", "bg"]
    judge, _, _ = ac.judge(cfg)  # the same (seeded) judge, trained again here
    for source, skip in (("w2", 0), ("bg", 1)):
        row = json.loads(outputs[source].read_text())
        samples = [s for p in sorted((generate.shards_dir(cfg) / source).glob("*.tar")) for s in read_shard(p)]
        assert row["captions"] == 6 and row["images_per_caption"] == 3 - skip  # inpaint: the real image is not scored
        per_caption = []
        for sample in samples:
            wanted = toy_vocabulary.parse_caption(sample["record"]["caption"], cfg)["colour"]
            pred = ac.predict(judge, np.stack(sample["images"][skip:]))["colour"]
            per_caption.append(float((pred == wanted).mean()))
        assert math.isclose(row["match_colour"]["mean"], np.mean(per_caption), abs_tol=1e-9)
        assert row["match_colour"]["n"] == 6 and row["clip_guiding"]["n"] == 6
        # the reference variety: real photos with each caption's attributes, as many as the source's
        from synrep.evaluation.sample_quality import matched_real_diversity
        named = [toy_vocabulary.parse_caption(s["record"]["caption"], cfg) for s in samples]
        real = matched_real_diversity(cfg, named, 3 - skip, cfg.sample_quality.seed)
        assert math.isclose(row["diversity_real"]["mean"], np.mean([v for v in real if v is not None]), abs_tol=1e-9)


def test_generator_family_table_joins_quality_and_stablerep(make_cfg, tmp_path):
    from scipy import stats

    from synrep.experiments import report
    from synrep.fileio import write_json

    cfg = make_cfg(*GRIDS)
    paths, truth = fabricate(cfg, tmp_path)
    quality = []
    for source, match in (("w2", 0.9), ("w4", 0.7)):
        row = {"source": source, "mode": "text2img", "guidance": f"w={source[1:]}", "captions": 10,
               "images_per_caption": 4, "match_shape": {"mean": match, "ci95": 0.05, "n": 10},
               "match_colour": {"mean": 1.0, "ci95": None, "n": 1}, "diversity": {"mean": 0.3, "ci95": 0.01, "n": 10}}
        quality.append(write_json(tmp_path / "quality" / f"{source}.json", row))
    out = report.build(cfg, paths, [tmp_path / "baselines.json"], tmp_path / "ablations",
                       quality + [tmp_path / "quality" / "absent.json"])
    table = pl.read_csv(tmp_path / "ablations" / "generator_family.csv")
    assert table["source"].to_list() == ["w2", "w4"]
    assert table["captions"].to_list() == [10, 10]
    values = truth["stablerep-w2-l4-m4"]
    half = stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values))
    assert table["StableRep probe_shape"][0] == f"{np.mean(values):.3f} ± {half:.3f}"
    assert table["match_shape"].to_list() == ["0.900 ± 0.050", "0.700 ± 0.050"]
    assert table["match_colour"][0] == "1.000 (n = 1)"
    with Image.open(out["generator_family_plot"]) as image:
        assert image.format == "PNG" and image.size[0] > 600


def test_per_caption_summaries_are_tables_mean_ci_of_the_numbers():
    """Mean, t-interval and count over the values that are numbers (None and NaN left out), as scipy
    gives them; one value has no interval, none has no mean."""
    from scipy import stats

    from synrep.evaluation.source_quality import over_captions

    values = [0.25, None, 0.5, float("nan"), 1.0, 0.75]
    kept = [0.25, 0.5, 1.0, 0.75]
    got = over_captions(values)
    half = stats.t.ppf(0.975, len(kept) - 1) * np.std(kept, ddof=1) / math.sqrt(len(kept))
    assert got["n"] == 4 and math.isclose(got["mean"], np.mean(kept)) and math.isclose(got["ci95"], half)
    assert over_captions([None, 0.5]) == {"mean": 0.5, "ci95": None, "n": 1}
    assert over_captions([]) == over_captions([None, float("nan")]) == {"mean": None, "ci95": None, "n": 0}


def test_every_source_quality_job_waits_for_the_held_out_clip_a_rule_trains(tmp_path):
    """experiment=toy_generators trains its held-out CLIP in results/: each source's judge reads it,
    so each source_quality job has it as input (else the column comes and goes with job order)."""
    import re
    import subprocess
    import sys

    from synrep.config import load_config
    from tests.conftest import REPO

    paths = f"paths={{data_dir: {tmp_path}/data, results_dir: {tmp_path}/results}}"
    done = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--config",
                           "experiment=toy_generators", paths], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    heldout = load_config(["experiment=toy_generators", f"paths.results_dir={tmp_path}/results"]
                          ).sample_quality.heldout_clip
    jobs = re.findall(r"^rule source_quality:\n    input: ([^\n]*)", done.stdout, re.M)
    assert len(jobs) >= 4
    assert all(heldout in inputs.split(", ") for inputs in jobs), jobs
    assert re.search(r"^rule train_heldout_clip:", done.stdout, re.M)
