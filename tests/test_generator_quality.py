"""The generator's sample quality: classifier-free and CLIP-guided rows, scored by the attribute
classifier and by CLIPs."""

from __future__ import annotations

import polars as pl


def test_clip_guided_rows_raise_the_guiding_clips_score(make_cfg, small_world, tiny_toy_pipeline_dir, tiny_clip_dir,
                                                        tiny_noised_clip_dir, tmp_path):
    from synrep.evaluation import generator_quality

    cfg = make_cfg(f"paths.data_dir={small_world}/data", f"generation.model={tiny_toy_pipeline_dir}",
                   f"generation.clip_model={tiny_clip_dir}", "generation.steps=3",
                   "sample_quality.guidance_scales=[1,3]", "sample_quality.clip_scales=[300]",
                   "sample_quality.noised_clip_scales=[300]", f"sample_quality.noised_clip={tiny_noised_clip_dir}",
                   f"sample_quality.heldout_clip={tiny_clip_dir}", "sample_quality.captions=6",
                   "sample_quality.images_per_caption=2", "sample_quality.classifier_epochs=1")
    outputs = generator_quality.run(cfg)
    table = pl.read_csv(outputs["csv"])
    assert table.select("source", "kind", "w", "clip_scale").rows() == [
        ("real", None, None, None), ("generated", "cfg", 1.0, None), ("generated", "cfg", 3.0, None),
        ("generated", "clip", 1.0, 300.0), ("generated", "clip_noised", 1.0, 300.0)]
    generated = table.filter(pl.col("source") == "generated")
    assert generated["clip_guiding"].null_count() == 0
    # the same noise as the w = 1 row, plus the CLIP's gradient: its score goes up
    plain, guided = (generated.filter((pl.col("kind") == k) & (pl.col("w") == 1.0)) for k in ("cfg", "clip"))
    assert guided["clip_guiding"][0] > plain["clip_guiding"][0]
    # GLIDE's own form: the noised CLIP's gradient on x_t raises its score on the final images
    noised = generated.filter(pl.col("kind") == "clip_noised")
    assert noised["clip_noised"][0] > plain["clip_noised"][0]
    # here the held-out CLIP is the guiding one: both columns agree
    assert generated["clip_heldout"].to_list() == generated["clip_guiding"].to_list()
    assert outputs["grid_clip_s300_w1"].exists() and outputs["grid_noised_s300_w1"].exists()
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
