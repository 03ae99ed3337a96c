"""The alignment filter (sources.<name>.filter): CLIPScore per image, the top of each caption's images
kept by the index, an index that follows the filter (and nothing regenerated), clear config errors."""

import json

import numpy as np
import polars as pl
import pytest
import torch

from synrep.config import ConfigError, InputError, digest
from synrep.data import stream
from synrep.data.shards import read_shard
from synrep.generation import alignment_filter, generate, index
from synrep.generation.sources import source_spec
from synrep.training_methods import SampleSpec
from tests.test_generate import gen_overrides, write_captions


def reference_clipscore(clip_dir, images: np.ndarray, captions: list[str]) -> np.ndarray:
    """torchmetrics' CLIPScore of each (image, caption) pair, written out on open_clip itself:
    torchmetrics wraps Hugging Face CLIP models only, so it cannot load an open_clip local-dir model.
    Its steps: embed, divide each embedding by its norm, 100 * the dot product, max with 0."""
    import open_clip

    name = f"local-dir:{clip_dir}"
    model = open_clip.create_model(name).eval()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    assert tuple(x.shape[-2:]) == tuple(model.visual.image_size)  # the toy CLIP reads the stored size: no resize
    mean = torch.tensor(model.visual.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(model.visual.image_std).view(1, 3, 1, 1)
    with torch.no_grad():
        img = model.encode_image((x - mean) / std)
        txt = model.encode_text(open_clip.get_tokenizer(name)(captions))
    img = img / img.norm(p=2, dim=-1, keepdim=True)
    txt = txt / txt.norm(p=2, dim=-1, keepdim=True)
    score = 100 * (img * txt).sum(-1)
    return torch.max(score, torch.zeros_like(score)).numpy()


def filter_cfg(make_cfg, small_world, pipeline, clip_dir, *extra):
    cfg = make_cfg(*gen_overrides(small_world, pipeline, "generation.images_per_caption=4", "train.data=w1",
                                  "train.batch_images=8", "sweep.grids=[]", f"sources.w1.filter={{clip_model: {clip_dir}}}", *extra))
    write_captions(cfg)
    return cfg


def test_the_score_is_clipscore(small_world, tiny_clip_dir):
    from synrep.config import load_config
    from synrep.data import toyworld
    from tests.conftest import tmp_overrides

    train = toyworld.load_split(load_config(tmp_overrides(small_world)), "train")
    images = train["images"][:12]
    captions = [str(c) for c in train["captions"][:6]] * 2  # each image with its own caption, then others'
    ours = alignment_filter.clip_scores(str(tiny_clip_dir), images, captions)
    np.testing.assert_allclose(ours, reference_clipscore(tiny_clip_dir, images, captions), atol=1e-4)
    assert ours.min() >= 0 and ours.max() <= 100


def test_kept_images_are_the_top_fraction_of_each_caption(make_cfg, small_world, tiny_toy_pipeline_dir,
                                                          tiny_clip_dir):
    cfg = filter_cfg(make_cfg, small_world, tiny_toy_pipeline_dir, tiny_clip_dir, "sources.w1.filter.keep_fraction=0.5")
    generate.run(cfg, source="w1")
    table = pl.read_parquet(index.run(cfg, source="w1")["w1/index"]).sort("shard")
    assert table["images"].sum() == 2 * table["samples"].sum()  # half of 4, each caption
    assert json.loads(table["filter"][0])["keep_fraction"] == 0.5
    for row in table.iter_rows(named=True):
        kept = stream.read_kept(row["kept"])
        for sample in read_shard(row["path"]):
            images = np.stack(sample["images"])
            scores = reference_clipscore(tiny_clip_dir, images, [sample["record"]["caption"]] * len(images))
            assert kept[sample["key"]] == set(np.argsort(-scores)[:2].tolist())
    # the stream reads only the kept images (l counts them), whatever it draws
    dataset = stream.GroupDataset(table["path"].to_list(), SampleSpec(images=2, views=1, use_first=None), None, seed=0,
                                  counts=table["samples"].to_list(), kept=table["kept"].to_list())
    first = next(read_shard(table["path"][0]))
    chosen = {bytes(image.permute(1, 2, 0).numpy()) for image in dataset[0][0]}
    wanted = {bytes(first["images"][i]) for i in stream.read_kept(table["kept"][0])[first["key"]]}
    assert chosen == wanted
    # and the judge reads what training reads
    from synrep.evaluation.source_quality import read_source

    captions, groups = read_source(cfg, "w1")
    assert len(captions) == 10 and all(len(g) == 2 for g in groups)
    np.testing.assert_array_equal(groups[0], np.stack([first["images"][i] for i in sorted(
        stream.read_kept(table["kept"][0])[first["key"]])]))


def test_kept_counts_min_images_and_min_score():
    scores = np.array([10.0, 40.0, 30.0, 40.0, 5.0, 20.0, 0.0, 1.0])
    rule = {"min_images": 2}
    assert alignment_filter.kept_images(scores, {**rule, "keep_fraction": 1.0}) == list(range(8))
    assert alignment_filter.kept_images(scores, {**rule, "keep_fraction": 0.5}) == [1, 2, 3, 5]
    assert alignment_filter.kept_images(scores, {**rule, "keep_fraction": 0.25}) == [1, 3]
    assert alignment_filter.kept_images(scores, {**rule, "keep_fraction": 0.1}) == [1, 3]  # at least 2
    assert alignment_filter.kept_images(scores, {**rule, "keep_fraction": 0.3}) == [1, 2, 3]  # 2.4: rounded up
    assert alignment_filter.kept_images(scores, {**rule, "min_score": 25}) == [1, 2, 3]
    assert alignment_filter.kept_images(scores, {**rule, "min_score": 99}) == [1, 3]  # the best 2 all the same
    assert alignment_filter.kept_images(scores[:1], {**rule, "keep_fraction": 0.5}) == [0]  # no more than there are


def test_a_real_first_image_is_kept_and_the_filter_judges_the_generated_ones():
    """Mode inpaint with keep_real stores the caption's real image first: it is never filtered out,
    even when it scores lowest, and the share kept is a share of the generated images."""
    scores = np.array([0.0, 40.0, 30.0, 10.0, 20.0])  # image 0: the real one, scoring lowest
    rule = {"min_images": 2, "real_first": True}
    assert alignment_filter.kept_images(scores, {**rule, "keep_fraction": 0.5}) == [0, 1, 2]
    assert alignment_filter.kept_images(scores, {**rule, "keep_fraction": 0.25}) == [0, 1]
    assert alignment_filter.kept_images(scores, {**rule, "min_score": 25}) == [0, 1, 2]
    assert alignment_filter.kept_images(scores, {**rule, "min_score": 99}) == [0, 1]  # min_images counts the real one
    assert alignment_filter.kept_images(scores, {**rule, "min_images": 3, "min_score": 99}) == [0, 1, 2]
    for f in ({**rule, "keep_fraction": 0.5}, {**rule, "keep_fraction": 0.25}, {**rule, "min_score": 99}):
        assert alignment_filter.fewest_kept(len(scores), f) == len(alignment_filter.kept_images(scores, f))
    # without real_first, the same scores lose image 0
    assert 0 not in alignment_filter.kept_images(scores, {"min_images": 2, "keep_fraction": 0.5})


def test_the_index_follows_the_filter_and_nothing_is_regenerated(make_cfg, small_world, tiny_toy_pipeline_dir,
                                                                 tiny_clip_dir):
    from synrep.learning import trainer

    half = filter_cfg(make_cfg, small_world, tiny_toy_pipeline_dir, tiny_clip_dir, "sources.w1.filter.keep_fraction=0.5")
    quarter = filter_cfg(make_cfg, small_world, tiny_toy_pipeline_dir, tiny_clip_dir,
                         "sources.w1.filter.keep_fraction=0.25", "sources.w1.filter.min_images=3")
    plain = make_cfg(*gen_overrides(small_world, tiny_toy_pipeline_dir, "generation.images_per_caption=4",
                                    "train.batch_images=8"))
    # the generation spec leaves the filter out: the shards (and their records) stay valid
    assert source_spec(half, "w1") == source_spec(quarter, "w1") == source_spec(plain, "w1")
    # the index spec (the index step's Snakemake params) has it: a changed filter re-indexes, and only that
    assert alignment_filter.index_spec(plain, "w1") == source_spec(plain, "w1")
    specs = {digest(alignment_filter.index_spec(c, "w1")) for c in (half, quarter, plain)}
    assert len(specs) == 3
    assert digest(alignment_filter.index_spec(half, "w1")) == digest(alignment_filter.index_spec(
        filter_cfg(make_cfg, small_world, tiny_toy_pipeline_dir, tiny_clip_dir, "sources.w1.filter.keep_fraction=0.5"),
        "w1"))

    paths = generate.run(half, source="w1")
    table = pl.read_parquet(index.run(half, source="w1")["w1/index"])
    scores = [alignment_filter.scores_path(p, alignment_filter.filter_spec(half, "w1")["clip_sha256"]) for p in paths]
    stamps = [s.stat().st_mtime_ns for s in scores]
    model = generate.generator_fingerprint(quarter, source_spec(quarter, "w1"))
    assert not any(generate.stale_reason(p, source_spec(quarter, "w1"), model) for p in paths)
    made = [p.stat().st_mtime_ns for p in paths]
    generate.run(quarter, source="w1")
    assert [p.stat().st_mtime_ns for p in paths] == made  # nothing made again

    # training refuses the old index under the new filter, and the unfiltered config refuses it too
    for cfg in (quarter, plain):
        with pytest.raises(InputError, match="rerun `python -m synrep index --source w1`"):
            trainer.training_data(cfg, trainer.training_length(cfg, 10))
    again = pl.read_parquet(index.run(quarter, source="w1")["w1/index"])
    assert again["images"].sum() == 3 * again["samples"].sum() != table["images"].sum()
    assert [s.stat().st_mtime_ns for s in scores] == stamps  # scored once per CLIP: read again, not redone
    trainer.training_data(quarter, trainer.training_length(quarter, 10))


@pytest.mark.parametrize("value, key", [
    ("{keep_fraction: 1.5}", "sources.w2.filter.keep_fraction"),
    ("{keep_fraction: 0}", "sources.w2.filter.keep_fraction"),
    ("{min_score: 120}", "sources.w2.filter.min_score"),
    ("{keep_fraction: 0.5, min_images: 1}", "sources.w2.filter.min_images"),
    ("{keep_fraction: 0.5, min_score: 20}", "sources.w2.filter"),
    ("{clip_model: models/toy_clip}", "sources.w2.filter"),
])
def test_bad_filter_values_fail_at_load_in_one_line(make_cfg, value, key):
    with pytest.raises(ConfigError) as err:
        make_cfg(f"sources.w2.filter={value}")
    assert f"'{key}'" in str(err.value) and "\n" not in str(err.value)


def test_a_union_of_a_filtered_source_is_refused(make_cfg):
    with pytest.raises(ConfigError, match=r"sources.both.union\[0\]"):
        make_cfg("sources.w2.filter={keep_fraction: 0.5}", "sources.both={mode: union, union: [w2, w8]}")


def test_a_run_asking_for_more_images_than_kept_is_refused(make_cfg, tiny_clip_dir):
    from synrep.experiments.sweep import expand

    keep = f"sources.w2.filter={{clip_model: {tiny_clip_dir}, keep_fraction: 0.5}}"
    assert {s.l for s in expand(make_cfg(keep, "sweep.grids=[{data: [w2], l: [2]}]"))} == {2}
    with pytest.raises(ConfigError, match=r"keeps 2 of its 4 \(config key 'sources.w2.filter'\)"):
        expand(make_cfg(keep, "sweep.grids=[{data: [w2], l: [4]}]"))


def test_sweep_runs_on_a_filtered_source_carry_the_kept_fraction(make_cfg, tiny_clip_dir):
    from synrep.experiments import sweep_run
    from synrep.experiments.sweep import expand

    cfg = make_cfg(f"sources.keep50={{mode: union, union: [w2], filter: {{clip_model: {tiny_clip_dir}, "
                   "keep_fraction: 0.5}}", "sweep.grids=[{method: [stablerep], data: [w2, keep50], l: [2]}]",
                   "sweep.seeds=[0]")
    params = {spec.data: sweep_run.run_params(cfg, spec) for spec in expand(cfg)}
    assert params["keep50"]["keep_fraction"] == 0.5 and params["keep50"]["filter_clip"] == str(tiny_clip_dir)
    assert "min_score" not in params["keep50"] and "keep_fraction" not in params["w2"]


def test_summary_script_table_and_plot(tmp_path):
    """scripts/alignment_filter_summary.py: each source's kept fraction read from the run's config,
    probe cells the mean and Student-t half-width over seeds, the judge's cells from source_quality,
    and the plot written."""
    import importlib.util
    import json

    import numpy as np
    import polars as pl
    from omegaconf import OmegaConf
    from scipy import stats as sps

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("af_summary", REPO / "scripts" / "alignment_filter_summary.py")
    summary = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summary)
    run = tmp_path / "run"
    (run / "source_quality").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"sources": {
        "w2": {"filter": None},
        "half": {"filter": {"clip_model": "c", "keep_fraction": 0.5}}}}), run / "config.yaml")
    probes = {"w2": [0.4, 0.5, 0.45], "half": [0.6, 0.62, 0.7]}
    for source, accs in probes.items():
        (run / "source_quality" / f"{source}.json").write_text(json.dumps(
            {"match_shape": {"mean": 0.75, "ci95": 0.02}, "clip_guiding": {"mean": 0.7 if source == "w2" else 0.8,
                                                                          "ci95": 0.01}}))
        for seed, acc in enumerate(accs):
            folder = run / "runs" / f"{source}-s{seed}"
            folder.mkdir(parents=True)
            (folder / "metrics.json").write_text(json.dumps({"source": source, "seed": seed, "l": 4, "m": 4,
                                                             "steps": 40, "probe_shape": acc}))
    df = summary.runs(run)
    table = summary.table(df, run)
    assert table["source"].to_list() == ["w2", "half"]  # most kept first
    for source, accs in probes.items():
        row = table.filter(pl.col("source") == source).row(0, named=True)
        half = sps.t.ppf(0.975, 2) * np.std(accs, ddof=1) / np.sqrt(3)
        assert row["probe shape"] == f"{np.mean(accs):.3f} ± {half:.3f}"
        assert row["keep"] == {"w2": 1.0, "half": 0.5}[source] and row["seeds"] == 3
        assert row["CLIP cos(image, caption)"] == ("0.700 ± 0.010" if source == "w2" else "0.800 ± 0.010")
    summary.plot(df, run, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_the_filter_of_a_source_with_its_real_image_first_says_so(make_cfg, tiny_clip_dir):
    """An inpainting source that keeps the real image records ``real_first`` in its filter (so that an
    index made before, which scored the real image like the others, is refused), and the sweep's
    check counts the real image among the kept."""
    from synrep.experiments.sweep import expand

    f = f"{{clip_model: {tiny_clip_dir}, keep_fraction: 0.5}}"
    cfg = make_cfg(f"sources.inpaint.filter={f}", "sweep.grids=[{data: [inpaint], l: [3]}]")
    assert alignment_filter.filter_spec(cfg, "inpaint")["real_first"] is True
    assert {s.l for s in expand(cfg)} == {3}  # the real image and the best 2 of 3 generated
    assert "real_first" not in alignment_filter.filter_spec(make_cfg(f"sources.w2.filter={f}"), "w2")
    assert "real_first" not in alignment_filter.filter_spec(
        make_cfg(f"sources.inpaint.filter={f}", "sources.inpaint.inpaint.keep_real=false"), "inpaint")
