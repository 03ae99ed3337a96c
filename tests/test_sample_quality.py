"""The generator's sample quality: classifier-free and CLIP-guided rows, scored by the attribute
classifier and by CLIPs."""

from __future__ import annotations

import polars as pl
import pytest


def heldout_clip(out, small_world):
    """A second tiny toy CLIP, of another initialisation than ``tiny_clip_dir``'s."""
    import torch

    from synrep.config import load_config
    from synrep.learning import toy_clip
    from tests.conftest import TINY_CLIP, tmp_overrides

    out.mkdir(parents=True)
    torch.manual_seed(1)
    cfg = load_config(tmp_overrides(small_world, *TINY_CLIP))
    toy_clip.save(toy_clip.build_model(cfg), cfg, out)
    return out


def test_clip_guided_rows_raise_the_guiding_clips_score(make_cfg, small_world, tiny_toy_pipeline_dir, tiny_clip_dir,
                                                        tiny_noised_clip_dir, tmp_path):
    from synrep.evaluation import sample_quality

    cfg = make_cfg(f"paths.data_dir={small_world}/data", f"generation.model={tiny_toy_pipeline_dir}",
                   f"generation.clip_model={tiny_clip_dir}", "generation.steps=3",
                   "sample_quality.guidance_scales=[1,3]", "sample_quality.clip_scales=[300]",
                   "sample_quality.noised_clip_scales=[300]", f"sample_quality.noised_clip={tiny_noised_clip_dir}",
                   "sample_quality.clip_min_alpha_bars=[0,1e-3]",
                   f"sample_quality.heldout_clip={heldout_clip(tmp_path / 'heldout', small_world)}", "sample_quality.captions=6",
                   "sample_quality.images_per_caption=2", "sample_quality.classifier_epochs=1")
    outputs = sample_quality.run(cfg)
    table = pl.read_csv(outputs["csv"])
    assert table.select("source", "kind", "w", "clip_scale", "min_alpha_bar").rows() == [
        ("real", None, None, None, None), ("generated", "cfg", 1.0, None, None), ("generated", "cfg", 3.0, None, None),
        ("generated", "clip", 1.0, 300.0, 0.0), ("generated", "clip", 1.0, 300.0, 1e-3),
        ("generated", "clip_noised", 1.0, 300.0, None)]
    generated = table.filter(pl.col("source") == "generated")
    assert generated["clip_guiding"].null_count() == 0
    # the same noise as the w = 1 row, plus the CLIP's gradient: its score goes up
    plain, guided = (generated.filter((pl.col("kind") == k) & (pl.col("w") == 1.0)) for k in ("cfg", "clip"))
    guided = guided.filter(pl.col("min_alpha_bar") == 1e-3)
    assert guided["clip_guiding"][0] > plain["clip_guiding"][0]
    # GLIDE's own form: the noised CLIP's gradient on x_t raises its score on the final images
    noised = generated.filter(pl.col("kind") == "clip_noised")
    assert noised["clip_noised"][0] > plain["clip_noised"][0]
    # the held-out CLIP (another initialisation) scores every row itself: no column is the guiding one's
    assert generated["clip_heldout"].null_count() == 0
    assert all(abs(a - b) > 1e-6 for a, b in zip(generated["clip_heldout"], generated["clip_guiding"]))
    assert outputs["grid_clip_s300_w1"].exists() and outputs["grid_noised_s300_w1"].exists()
    assert outputs["grid_clip_s300_w1_ab0"].exists()  # every step guided: not the default, so named
    assert table.filter(pl.col("source") == "real")["diversity_matched"][0] > 0
    assert outputs["plot"].stat().st_size > 0


def test_the_judge_is_loaded_only_for_the_world_it_learnt(make_cfg, small_world, tmp_path, capsys):
    import numpy as np

    from synrep.data import toyworld
    from synrep.evaluation import attribute_classifier as ac

    folder = tmp_path / "judge"
    cfg = make_cfg(f"paths.data_dir={small_world}/data", "sample_quality.classifier_epochs=1",
                   f"sample_quality.classifier={folder}")
    trained, accuracy, origin = ac.judge(cfg)  # nothing saved yet: trained
    assert origin == "trained here"
    ac.save(trained, cfg, folder, accuracy)
    loaded, again, origin = ac.judge(cfg)
    assert origin == str(folder) and again == accuracy
    test = toyworld.load_split(cfg, "test")["images"]
    for k, v in ac.predict(trained, test).items():
        np.testing.assert_array_equal(ac.predict(loaded, test)[k], v)
    # another world (or other epochs) gets a judge of its own, and says why
    other = make_cfg("toyworld.seed=5", "sample_quality.classifier_epochs=1", f"sample_quality.classifier={folder}",
                     base=tmp_path / "other")
    toyworld.run(other)
    _, _, origin = ac.judge(other)
    assert origin == "trained here" and "train_sha256" in capsys.readouterr().out
    _, _, origin = ac.judge(make_cfg(f"paths.data_dir={small_world}/data", "sample_quality.classifier_epochs=2",
                                     f"sample_quality.classifier={folder}"))
    assert origin == "trained here"


def test_real_diversity_matches_each_captions_named_attributes(make_cfg, small_world):
    """Per caption: k real images of its domain agreeing on the attributes it names, their mean
    pairwise RMS (explicit pair loop here); with k the whole matching set the draw is the set itself."""
    import itertools

    import numpy as np

    from synrep.data import toyworld
    from synrep.evaluation.sample_quality import matched_real_diversity

    cfg = make_cfg(f"paths.data_dir={small_world}/data")
    test = toyworld.load_split(cfg, "test")
    named = {"shape": int(test["shape"][0]), "colour": int(test["colour"][0]), "size": None, "background": None}
    members = np.flatnonzero((test["shape"] == named["shape"]) & (test["colour"] == named["colour"]))
    k = len(members)
    assert k >= 2
    flat = test["images"][members].reshape(k, -1).astype(np.float64) / 255
    expected = np.mean([np.sqrt(np.mean((flat[a] - flat[b]) ** 2)) for a, b in itertools.combinations(range(k), 2)])
    got, too_few = matched_real_diversity(cfg, [named, named], k, seed=0)[0], matched_real_diversity(
        cfg, [named], k + 1, seed=0)[0]
    assert got == pytest.approx(expected) and too_few is None
    # another domain's images: its own split, and a drawing's background is not matched (it has none)
    domains = toyworld.load_split(cfg, "domains_test")
    drawing = list(cfg.toyworld.domains).index("drawing")
    d = domains["domain"] == drawing
    named_bg = {"shape": int(domains["shape"][d][0]), "colour": None, "size": None, "background": 0}
    pool = np.flatnonzero(d & (domains["shape"] == named_bg["shape"]))
    flat = domains["images"][pool].reshape(len(pool), -1).astype(np.float64) / 255
    expected = np.mean([np.sqrt(np.mean((flat[a] - flat[b]) ** 2))
                        for a, b in itertools.combinations(range(len(pool)), 2)])
    got = matched_real_diversity(cfg, [named_bg], len(pool), seed=0, domain="drawing")[0]
    assert got == pytest.approx(expected)
