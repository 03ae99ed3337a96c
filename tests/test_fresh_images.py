"""Fresh images during training (sources.<name>.refresh): rounds of each caption's images with their
own seeds, the round a pass reads, one round per caption in a batch, the same round on resume and on
every rank, and clear config errors."""

import numpy as np
import polars as pl
import pytest
from omegaconf import OmegaConf

from synrep.config import ConfigError, load_config
from synrep.data import rounds, stream
from synrep.data.shards import read_shard
from synrep.generation import generate, index
from synrep.generation.sources import image_seed, source_spec
from synrep.learning import trainer
from synrep.learning.identity import training_identity
from tests.conftest import tmp_overrides
from tests.test_generate import gen_overrides, write_captions

# 3 rounds of 2 images, a new round every 2 passes
REFRESH = "sources.fr={guidance: {w: 2}, l: 2, refresh: {every: 2, rounds: 3}}"


@pytest.fixture(scope="module")
def fresh_cfg(tmp_path_factory, small_world, tiny_toy_pipeline_dir):
    """Source fr (3 rounds of 2 images), w6 (one set of 6) and w2 (one set of 2), the same seed,
    generated and indexed once for the tests that read them (one adds a source of its own)."""
    overrides = gen_overrides(small_world, tiny_toy_pipeline_dir, REFRESH, "sources.w6={guidance: {w: 2}, l: 6}",
                              "sources.w2={guidance: {w: 2}, l: 2}", "sources.all={mode: union, union: [fr]}",
                              "train.data=fr", "train.l=2", "train.m=2", "train.batch_images=8", "sweep.grids=[]")
    cfg = load_config(tmp_overrides(tmp_path_factory.mktemp("fresh"), *overrides))
    write_captions(cfg)
    for name in ("fr", "w6", "w2"):
        generate.run(cfg, source=name)
    for name in ("fr", "w6", "w2", "all"):
        index.run(cfg, source=name)
    return cfg


def image_bytes(images) -> set[bytes]:
    return {bytes(np.ascontiguousarray(image)) for image in images}


def test_the_round_of_a_pass_is_the_schedule_written_out():
    for every, n_rounds in [(1, 2), (2, 3), (5, 4)]:
        refresh = rounds.Refresh(every, n_rounds, 4)
        schedule = []  # each round held for `every` passes, then the next, back to round 0 after the last
        while len(schedule) < 50:
            for r in range(n_rounds):
                schedule += [r] * every
        assert [rounds.round_of_pass(p, refresh) for p in range(50)] == schedule[:50]


def test_rounds_carry_their_own_seeds_and_together_are_one_larger_set(fresh_cfg):
    spec = source_spec(fresh_cfg, "fr")
    assert spec["l"] == 6 and spec["refresh"] == {"rounds": 3, "images_per_round": 2}
    stored = [s for path in stream.shard_urls(fresh_cfg, "fr") for s in read_shard(path)]
    plain = [s for path in stream.shard_urls(fresh_cfg, "w6") for s in read_shard(path)]
    small = [s for path in stream.shard_urls(fresh_cfg, "w2") for s in read_shard(path)]
    for sample, other, first in zip(stored, plain, small, strict=True):
        record = sample["record"]
        assert record["rounds"] == [0, 0, 1, 1, 2, 2]
        assert record["seeds"] == [image_seed(0, record["caption_id"], i) for i in range(6)]
        assert len(set(record["seeds"])) == 6
        by_round = [image_bytes(sample["images"][2 * r:2 * r + 2]) for r in range(3)]
        assert not (by_round[0] & by_round[1]) and not (by_round[1] & by_round[2]) and not (by_round[0] & by_round[2])
        # the rounds one after another are the images of a source of l x rounds with the same seed
        assert all(np.array_equal(a, b) for a, b in zip(sample["images"], other["images"], strict=True))
        # and round 0 is the source of l alone: a fixed set at equal steps reads the same images
        assert all(np.array_equal(a, b) for a, b in zip(sample["images"][:2], first["images"], strict=True))


def training_loader(cfg, rank: int = 0, world: int = 1):
    from synrep.learning.distributed import DistInfo
    from synrep.learning.settings import method_train

    cfg = method_train(cfg)
    length = trainer.training_length(cfg, stream.count_captions(cfg, cfg.train.data), world)
    dataset = trainer.training_data(cfg, length)
    info = DistInfo(rank=rank, world_size=world, local_rank=rank)
    return trainer.data_loader(cfg, dataset, length, info)


def caption_rounds(cfg, source: str) -> dict[str, list[set[bytes]]]:
    """Each caption's images per round, read from the shards (caption -> [round 0's images, ...])."""
    out = {}
    for path in stream.shard_urls(cfg, source):
        for sample in read_shard(path):
            out[sample["record"]["caption"]] = [image_bytes(sample["images"][2 * r:2 * r + 2]) for r in range(3)]
    return out


def batch_rows(batch) -> list[tuple[str, set[bytes]]]:
    images = batch["images"].permute(0, 2, 3, 1).numpy()
    return [(caption, image_bytes(images[batch["group_ids"].numpy() == row]))
            for row, caption in enumerate(batch["captions"])]


def test_each_row_of_a_batch_is_one_round_of_its_caption_the_round_of_its_pass(fresh_cfg):
    truth = caption_rounds(fresh_cfg, "fr")
    loader = training_loader(fresh_cfg)
    for pass_index in range(7):
        trainer.set_pass(loader, pass_index)
        wanted = (pass_index // 2) % 3
        for batch in loader:
            for caption, images in batch_rows(batch):
                assert images == truth[caption][wanted], (pass_index, caption)


def test_a_resumed_run_and_every_rank_read_the_round_of_the_pass(fresh_cfg):
    truth = caption_rounds(fresh_cfg, "fr")
    through = training_loader(fresh_cfg)
    for pass_index in range(5):
        trainer.set_pass(through, pass_index)
        first = next(iter(through))
    # a run resumed at pass 4 builds its loader anew and points it at pass 4 (trainer.train)
    resumed = training_loader(fresh_cfg)
    trainer.set_pass(resumed, 4)
    again = next(iter(resumed))
    assert batch_rows(again) == batch_rows(first)
    assert all(images == truth[caption][2] for caption, images in batch_rows(again))
    for rank in (0, 1):  # two ranks of a distributed run: other captions, the same round
        loader = training_loader(fresh_cfg, rank=rank, world=2)
        trainer.set_pass(loader, 4)
        assert all(images == truth[caption][2] for caption, images in batch_rows(next(iter(loader))))


def test_a_union_of_a_refreshing_source_reads_every_round_as_one_set(fresh_cfg):
    truth = caption_rounds(fresh_cfg, "fr")
    cfg = OmegaConf.merge(fresh_cfg, {"train": {"data": "all", "l": 6, "m": 6, "batch_images": 24}})
    loader = training_loader(cfg)
    trainer.set_pass(loader, 0)
    for caption, images in batch_rows(next(iter(loader))):
        assert images == set().union(*truth[caption])


def test_a_union_with_a_refresh_reads_the_rounds_on_its_own_schedule(fresh_cfg):
    """Another schedule of the same images: a union of fr with ``refresh: {every: 1}`` reads round
    p mod 3 at pass p from fr's shards (fr itself: round floor(p / 2) mod 3); nothing is generated."""
    truth = caption_rounds(fresh_cfg, "fr")
    cfg = OmegaConf.merge(fresh_cfg, {"sources": {"fast": {"mode": "union", "union": ["fr"], "refresh": {"every": 1}}},
                                      "train": {"data": "fast"}})
    index.run(cfg, source="fast")
    assert source_spec(cfg, "fast")["union"][0] == source_spec(fresh_cfg, "fr")
    loader = training_loader(cfg)
    for pass_index in range(4):
        trainer.set_pass(loader, pass_index)
        for caption, images in batch_rows(next(iter(loader))):
            assert images == truth[caption][pass_index % 3], (pass_index, caption)
    assert training_identity(cfg)["refresh_every"] == 1


def test_every_is_part_of_a_runs_identity_not_of_its_images(make_cfg):
    base = make_cfg(REFRESH, "train.data=fr")
    other = make_cfg(REFRESH, "sources.fr.refresh.every=3", "train.data=fr")
    more = make_cfg(REFRESH, "sources.fr.refresh.rounds=4", "train.data=fr")
    assert source_spec(base, "fr") == source_spec(other, "fr")  # no image regenerated
    assert training_identity(base) != training_identity(other)  # but the run trains again
    assert source_spec(base, "fr") != source_spec(more, "fr")  # more rounds: other shards
    assert "refresh_every" not in training_identity(make_cfg())  # the default run's identity as it was


@pytest.mark.parametrize("value, key", [
    ("{every: 0, rounds: 2}", "sources.w2.refresh.every"),
    ("{every: 1, rounds: 1}", "sources.w2.refresh.rounds"),
])
def test_bad_refresh_values_fail_at_load_in_one_line(make_cfg, value, key):
    with pytest.raises(ConfigError) as err:
        make_cfg(f"sources.w2.refresh={value}")
    assert f"'{key}'" in str(err.value) and "\n" not in str(err.value)


def test_refresh_where_it_cannot_work_is_refused(make_cfg):
    with pytest.raises(ConfigError, match=r"'sources.both.refresh'"):
        make_cfg("sources.both={mode: union, union: [w2], refresh: {rounds: 2}}")
    with pytest.raises(ConfigError, match=r"'sources.both.refresh': .*only a union of one refreshing source"):
        make_cfg(REFRESH, "sources.both={mode: union, union: [fr, w2], refresh: {every: 1}}")
    with pytest.raises(ConfigError, match=r"'sources.fast.refresh.rounds': a union reads the rounds of 'fr' \(3\)"):
        make_cfg(REFRESH, "sources.fast={mode: union, union: [fr], refresh: {every: 1, rounds: 3}}")
    with pytest.raises(ConfigError, match=r"'sources.w2.refresh'"):
        make_cfg("sources.w2.refresh={rounds: 2}", "sources.w2.filter={keep_fraction: 0.5}")
    with pytest.raises(ConfigError, match=r"'sources.inpaint.refresh'"):
        make_cfg("sources.inpaint.refresh={rounds: 2}")


def test_a_run_asking_for_more_images_than_a_round_holds_is_refused(make_cfg):
    from synrep.experiments.sweep import expand

    assert {s.l for s in expand(make_cfg(REFRESH, "sweep.grids=[{data: [fr], l: [2]}]"))} == {2}
    with pytest.raises(ConfigError, match=r"makes 2 a round \(config key 'sources.fr.l'"):
        expand(make_cfg(REFRESH, "sweep.grids=[{data: [fr], l: [4]}]"))
    # a union of it reads the 3 rounds as one set of 6
    union = "sources.all={mode: union, union: [fr]}"
    assert {s.l for s in expand(make_cfg(REFRESH, union, "sweep.grids=[{data: [all], l: [6]}]"))} == {6}


def test_summary_script_table_and_plot(tmp_path, make_cfg):
    """scripts/fresh_images_summary.py: each arm's images generated (captions x the rounds its passes
    read x l), its generation seconds (the source's shard jobs' seconds per image, from their logs,
    times those images), and the probe cells the mean and Student-t half-width over seeds. A union
    reading the same rounds on its own schedule is an arm of its own, charged the same source."""
    import importlib.util
    import json

    from scipy import stats as sps

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("fresh_summary", REPO / "scripts" / "fresh_images_summary.py")
    summary = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summary)
    run = tmp_path / "run"
    run.mkdir()
    OmegaConf.save(make_cfg("sources.fresh={guidance: {w: 2}, l: 4, refresh: {every: 3, rounds: 4}}",
                            "sources.fixed={mode: union, union: [fresh]}",
                            "sources.fresh1={mode: union, union: [fresh], refresh: {every: 1}}"),
                   run / "config.yaml", resolve=True)
    (run / "shards" / "fresh").mkdir(parents=True)
    (run / "shards" / "fresh" / "stats.json").write_text(json.dumps({"images": 10 * 16}))
    (run / "logs" / "generate").mkdir(parents=True)
    for i, seconds in enumerate((30.0, 50.0)):  # 80 s for 160 images: 0.5 s an image
        (run / "logs" / "generate" / f"fresh-00000{i}.log").write_text(
            f"generate fresh\nshard fresh #{i} (5 captions) in {seconds:.1f}s\n")
    probes = {("fresh", 4): [0.5, 0.55, 0.6], ("fixed", 4): [0.4, 0.42, 0.47], ("fixed", 16): [0.5, 0.5, 0.58],
              ("fresh1", 4): [0.52, 0.5, 0.61]}
    for (source, l), accs in probes.items():
        for seed, acc in enumerate(accs):
            folder = run / "runs" / f"{source}-l{l}-s{seed}"
            folder.mkdir(parents=True)
            (folder / "metrics.json").write_text(json.dumps({"source": source, "seed": seed, "l": l, "m": 4,
                                                             "steps": 70, "probe_shape": acc,
                                                             "train_seconds": 10.0 + seed}))
            # 7 passes at every 3: rounds 0, 0, 0, 1, 1, 1, 2: three rounds read
            (folder / "train.json").write_text(json.dumps({"length": {"passes": 7, "n_captions": 10},
                                                           "history": [{"loss": 3.0 - 0.1 * p} for p in range(7)]}))
    df = summary.runs(run)
    table = summary.table(df)
    # fewest images first: the fresh run's 7 passes read 3 of its 4 rounds; every pass a new round, all 4
    assert table["arm"].to_list() == ["fixed, l = 4", "fresh every 3 passes, 4 rounds of l = 4", "fixed, l = 16",
                                      "fresh every 1 passes, 4 rounds of l = 4"]
    assert table["source"].to_list() == ["fixed", "fresh", "fixed", "fresh1"]
    assert table["images generated"].to_list() == [40, 120, 160, 160]
    assert table["generation s"].to_list() == [20.0, 60.0, 80.0, 80.0]
    assert table["rounds read"].to_list() == [1, 3, 1, 4]
    for (source, l), accs in probes.items():
        row = table.filter((pl.col("source") == source) & (pl.col("l") == l)).row(0, named=True)
        half = sps.t.ppf(0.975, 2) * np.std(accs, ddof=1) / np.sqrt(3)
        assert row["probe shape"] == f"{np.mean(accs):.3f} ± {half:.3f}" and row["seeds"] == 3
    differences = summary.paired(df).filter(pl.col("minus") == "fixed, l = 4").row(0, named=True)
    diffs = np.subtract(probes[("fresh", 4)], probes[("fixed", 4)])
    half = sps.t.ppf(0.975, 2) * np.std(diffs, ddof=1) / np.sqrt(3)
    assert differences["probe shape difference"] == f"{np.mean(diffs):.3f} ± {half:.3f}"
    summary.plot(df, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_sweep_runs_on_a_refreshing_source_carry_its_settings(make_cfg):
    from synrep.experiments import sweep_run
    from synrep.experiments.sweep import expand

    cfg = make_cfg(REFRESH, "sources.all={mode: union, union: [fr]}", "sweep.seeds=[0]",
                   "sweep.grids=[{method: [stablerep], data: [fr, all, w2], l: [2]}]")
    params = {spec.data: sweep_run.run_params(cfg, spec) for spec in expand(cfg)}
    assert (params["fr"]["refresh_every"], params["fr"]["refresh_rounds"]) == (2, 3)
    assert "refresh_every" not in params["all"] and "refresh_every" not in params["w2"]


def test_a_run_killed_and_resumed_reads_the_rounds_of_an_uninterrupted_run(learning_world, tmp_path, monkeypatch):
    """The trainer itself: a run on a source of 2 rounds (a new one every pass), killed after its
    second checkpoint and resumed, ends with the uninterrupted run's losses and weights; a run on
    round 0 alone (the same images at pass 0) parts from it at pass 1, where round 1 begins."""
    import torch

    overrides = learning_world("sources.fr={guidance: {w: 2}, l: 2, refresh: {every: 1, rounds: 2}}",
                               "sources.fr0={mode: union, union: [fr]}", "train.data=fr", "train.l=2",
                               "train.m=2", "train.epochs=6", "train.checkpoint_seconds=0")
    cfg = load_config(overrides)
    generate.run(cfg, source="fr")
    for name in ("fr", "fr0"):
        index.run(cfg, source=name)
    whole = trainer.train(load_config(overrides + [f"train.output_dir={tmp_path}/whole"]), progress=False)
    assert whole["length"]["passes"] >= 3
    round0 = trainer.train(load_config(overrides + ["train.data=fr0", f"train.output_dir={tmp_path}/round0"]),
                           progress=False)
    assert whole["history"][0]["loss"] == round0["history"][0]["loss"]
    assert whole["history"][1]["loss"] != round0["history"][1]["loss"]

    real_save, saves = trainer.save_checkpoint, []

    def save_then_die(path, state):
        real_save(path, state)
        saves.append(state["pass"])
        if len(saves) == 2:
            raise KeyboardInterrupt("preempted")

    parted = load_config(overrides + [f"train.output_dir={tmp_path}/parted"])
    monkeypatch.setattr(trainer, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(parted, progress=False)
    monkeypatch.setattr(trainer, "save_checkpoint", real_save)
    resumed = trainer.train(parted, progress=False)  # from pass 2: round 0 again, then round 1
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in whole["history"]]
    a = torch.load(tmp_path / "whole" / "model.pt")["model"]
    b = torch.load(tmp_path / "parted" / "model.pt")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
