"""A catalogue of bad inputs, each through the real command line.

The project rule: bad input gets one clear line that names the file, line or config key, a
non-zero exit, and nothing half-written. Every case below runs ``synrep.__main__.main`` in-process
(a few run ``python -m synrep`` in a subprocess, for the real exit status) and checks

(a) a non-zero exit status (2 for a config error, 1 for a bad file or value),
(b) exactly one line on stderr (a training progress bar that was already running is the only noise
    ignored) and no traceback,
(c) that the line names the offending file path, line number or dotted config key,
(d) that nothing is half-written: no ``*.tmp`` files anywhere under the test's folder, and the
    failing step's final output does not exist.

No generator is run and no model is trained: the inputs (captions, shards, indexes, checkpoints,
model folders) are written directly, so the whole catalogue takes seconds.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from synrep.__main__ import main
from synrep.config import ConfigError, InputError
from tests.conftest import REPO, TINY_TRAINING, tmp_overrides

# A tqdm progress bar, e.g. "train stablerep w2:   8%|8         | 1/12 [00:00<00:01, 6.39step/s, loss=5.363]"
PROGRESS = re.compile(r"[^\r\n|]*\d+%\|[^|\r\n]*\|[^\[\r\n]*\[[^\]\r\n]*\]")


def error_lines(err: str, progress: bool = False) -> list[str]:
    """The non-blank lines of stderr; with ``progress``, less tqdm progress bars.

    Only a training run that is already under way has a bar to leave behind: a truncated shard is
    found when training reads it. tqdm redraws with \\r and leaves its line open, so the error
    line may start right after the bar.
    """
    if progress:
        err = PROGRESS.sub("\n", err)
    return [part for line in err.split("\n") for part in line.split("\r") if part.strip()]


def check_failure(code: int, err: str, root: Path, fragments: tuple[str, ...], *, exit_code: int,
                  prefix: str, finals: tuple[Path, ...] = (), progress: bool = False) -> str:
    """(a)-(d) above; returns the error line."""
    assert code == exit_code, err
    assert "Traceback" not in err, err
    lines = error_lines(err, progress)
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    line = lines[0]
    assert line.startswith(prefix), line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    leftovers = [p for p in root.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers, f"temporary files left behind: {leftovers}"
    for final in finals:
        assert not final.exists(), f"{final} was written by a failing step"
    return line


def cli(capsys, step: str, *args: str) -> tuple[int, str]:
    capsys.readouterr()  # drop what earlier set-up printed
    code = main([step, *args])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory) -> str:
    """One MLflow store for the module: creating a SQLite store costs seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def world(tmp_path, monkeypatch, mlflow_uri):
    """A tmp folder holding a copy of config/ (run from there) and the overrides that write under it."""
    shutil.copytree(REPO / "config", tmp_path / "config")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SYNREP_CONFIG_DIR", raising=False)
    monkeypatch.delenv("SYNREP_DEBUG", raising=False)
    return tmp_overrides(tmp_path, f"paths.mlflow_uri={mlflow_uri}", *TINY_TRAINING)


def results(tmp_path: Path, *parts: str) -> Path:
    return tmp_path / "results" / "toy" / Path(*parts)


# --------------------------------------------------------------------------------------------
# Config keys and values: exit 2, "synrep: error: ... config key '<dotted key>' ..."
# --------------------------------------------------------------------------------------------

CONFIG_CASES = {
    # id: (step, overrides, fragments of the message)
    "unknown key": pytest.param("train", ["train.foo=1"], ["'train.foo'"]),
    "unknown section": pytest.param("train", ["trian.epochs=1"], ["'trian'"]),
    "wrong type": pytest.param("train", ["train.epochs=abc"], ["'train.epochs'", "'abc'"]),
    "override without =": ("train", ["train.epochs"], ["'train.epochs'", "key=value"]),
    "zero m": ("train", ["train.m=0"], ["'train.m'", "> 0"]),
    "negative batch": ("train", ["train.batch_images=-8"], ["'train.batch_images'"]),
    "fraction above 1": ("train", ["train.augment.blur_p=1.5"], ["'train.augment.blur_p'", "[0, 1]"]),
    "unknown epoch unit": ("train", ["train.epoch_unit=steps"], ["'train.epoch_unit'", "'steps'"]),
    "by_method unknown method": ("train", ["train.by_method={mae: {lr: 0.1}}"], ["'train.by_method.mae'", "'mae'"]),
    "by_method unknown key": ("train", ["train.by_method={clip: {lrate: 0.1}}"], ["'train.by_method.clip.lrate'"]),
    "by_method wrong type": ("train", ["train.by_method={clip: {lr: fast}}"], ["'train.by_method.clip.lr'", "fast"]),
    "unknown schedule": ("train", ["schedule=9x"], ["'schedule'", "'9x'"]),
    "down-sample fraction": ("train", ["train.augment.downsample_sizes=[0.25,2]"],
                             ["'train.augment.downsample_sizes[1]'"]),
    "grid budget zero": ("sweep", ["sweep.grids=[{budget: [0]}]"], ["'sweep.grids[0].budget[0]'"]),
    "crop scale reversed": ("train", ["train.augment.crop_scale=[0.9,0.2]"], ["'train.augment.crop_scale'"]),
    "unknown method": ("train", ["train.method=byol"], ["'train.method'", "'byol'"]),
    "unknown caption format": ("captions", ["captions.format=xml"], ["'captions.format'", "'xml'"]),
    "table without column": ("captions", ["captions.format=table", "captions.column=''"], ["'captions.column'"]),
    "unknown sampler": ("generate", ["generation.sampler=lms"], ["'generation.sampler'", "'lms'"]),
    "unknown device": ("generate", ["generation.device=tpu"], ["'generation.device'", "'tpu'"]),
    "toy image size": ("toyworld", ["toyworld.image_size=18"], ["'toyworld.image_size'"]),
    # sources
    "w below 1": ("generate", ["sources.w2.guidance.w=0.5"], ["'sources.w2.guidance.w'", "0.5 < 1"]),
    "duplicate w in a set": ("generate", ["sources.w2.guidance.w=[2,3,2]"], ["'sources.w2.guidance.w'", "distinct"]),
    "empty w set": ("generate", ["sources.w2.guidance.w=[]"], ["'sources.w2.guidance.w'", "empty"]),
    "w not a number": ("generate", ["sources.w2.guidance.w=high"], ["'sources.w2.guidance.w'", "'high'"]),
    "w below 1 in a set": ("generate", ["sources.mix.guidance.w=[2,0]"], ["'sources.mix.guidance.w'"]),
    "unknown mode": ("generate", ["sources.w2.mode=img2img"], ["'sources.w2.mode'", "'img2img'"]),
    "unknown guidance kind": ("generate", ["sources.w2.guidance.kind=pag"], ["'sources.w2.guidance.kind'", "'pag'"]),
    "unknown source sampler": ("generate", ["sources.w2.sampler=lms"], ["'sources.w2.sampler'", "'lms'"]),
    "source l zero": ("generate", ["sources.w2.l=0"], ["'sources.w2.l'"]),
    "source named real": ("generate", ["sources.real.guidance.w=2"], ["'sources.real'"]),
    "train.data undefined": ("train", ["train.data=w3"], ["'train.data'", "'w3'", "sources:"]),
    # sweep grids
    "grid l zero": ("sweep", ["sweep.grids=[{l: [1, 0]}]"], ["'sweep.grids[0].l[1]'"]),
    "grid undefined source": ("sweep", ["sweep.grids=[{data: [w2]}, {data: [w5]}]"], ["'sweep.grids[1].data[0]'", "'w5'"]),
    "grid unknown method": ("sweep", ["sweep.grids=[{method: [mae]}]"], ["'sweep.grids[0].method[0]'", "'mae'"]),
    "grid empty list": ("sweep", ["sweep.grids=[{method: []}]"], ["'sweep.grids[0].method'", "empty"]),
    "no seeds": ("sweep", ["sweep.seeds=[]"], ["'sweep.seeds'"]),
    "grid l not a number": pytest.param(
        "sweep", ["sweep.grids=[{l: [a]}]"], ["'sweep.grids", "l[0]"]),
}


@pytest.mark.parametrize("step, overrides, fragments", list(CONFIG_CASES.values()), ids=list(CONFIG_CASES))
def test_bad_config_value(world, tmp_path, capsys, step, overrides, fragments):
    code, err = cli(capsys, step, *world, *overrides)
    check_failure(code, err, tmp_path, tuple(fragments), exit_code=2, prefix="synrep: error:")
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("override, key", [("captions.limit=-1", "'captions.limit'"),
                                           ("captions.max_length=0", "'captions.max_length'")])
def test_bad_caption_setting(world, tmp_path, capsys, override, key):
    """Checked when the config loads (exit 2), before the step reads the file."""
    code, err = cli(capsys, "captions", *world, override)
    check_failure(code, err, tmp_path, (key,), exit_code=2, prefix="synrep: error:",
                  finals=(results(tmp_path, "captions", "captions.parquet"),))


def test_unknown_experiment_name(world, tmp_path, capsys):
    code, err = cli(capsys, "config", *world, "experiment=paper_cc4m")
    check_failure(code, err, tmp_path, (str(tmp_path / "config" / "experiment" / "paper_cc4m.yaml"), "not found"),
                  exit_code=2, prefix="synrep: error:")


def test_missing_config_file(world, tmp_path, capsys):
    missing = tmp_path / "resolved" / "config.yaml"
    code, err = cli(capsys, "train", "--config", str(missing), *world)
    check_failure(code, err, tmp_path, (str(missing), "not found"), exit_code=2, prefix="synrep: error:")


def test_no_config_dir(tmp_path, monkeypatch, capsys):
    """Run from a folder that is not a checkout: the missing config/config.yaml is named."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SYNREP_CONFIG_DIR", raising=False)
    code, err = cli(capsys, "train")
    check_failure(code, err, tmp_path, (str(tmp_path / "config" / "config.yaml"), "SYNREP_CONFIG_DIR"),
                  exit_code=2, prefix="synrep: error:")


def test_yaml_syntax_error_in_experiment_file(world, tmp_path, capsys):
    broken = tmp_path / "config" / "experiment" / "broken.yaml"
    broken.write_text("name: broken\ntrain:\n  epochs: [1,\n  m: 2\n")
    code, err = cli(capsys, "train", *world, "experiment=broken")
    check_failure(code, err, tmp_path, (str(broken), "line 3"), exit_code=2, prefix="synrep: error:")


def test_unknown_key_in_experiment_file(world, tmp_path, capsys):
    exp = tmp_path / "config" / "experiment" / "typo.yaml"
    exp.write_text("name: typo\ntrain:\n  epoch: 3\n")
    code, err = cli(capsys, "train", *world, "experiment=typo")
    check_failure(code, err, tmp_path, (str(exp), "'train.epoch'"), exit_code=2, prefix="synrep: error:")


def test_experiment_file_not_a_mapping(world, tmp_path, capsys):
    exp = tmp_path / "config" / "experiment" / "list.yaml"
    exp.write_text("- name: a\n- name: b\n")
    code, err = cli(capsys, "train", *world, "experiment=list")
    check_failure(code, err, tmp_path, (str(exp), "mapping"), exit_code=2, prefix="synrep: error:")


# --------------------------------------------------------------------------------------------
# Caption files, every format: exit 1, the file and (where there is one) the line
# --------------------------------------------------------------------------------------------


def _gz_truncated(path: Path) -> None:
    data = gzip.compress("".join(f"http://u/{i}\tcaption {i}\n" for i in range(3000)).encode())
    path.write_bytes(data[: len(data) // 2])


def _parquet(path: Path, **columns) -> None:
    pl.DataFrame(columns).write_parquet(path)


CAPTION_CASES = {
    # id: (file name, format, writer, fragments besides the path)
    "cc3m csv given": ("cc3m.tsv", "cc3m",
                       lambda p: p.write_text("".join(f"caption {i},http://u/{i}\n" for i in range(6))),
                       ["line 1", "wrong delimiter"]),
    "cc3m columns swapped": ("cc3m.tsv", "cc3m",
                             lambda p: p.write_text("".join(f"http://u/{i}\tcaption {i}\n" for i in range(6))),
                             ["swapped"]),
    "cc3m utf-16": ("cc3m.tsv", "cc3m",
                    lambda p: p.write_bytes("".join(f"cap {i}\thttp://u/{i}\n" for i in range(6)).encode("utf-16")),
                    ["UTF-8"]),
    "cc12m truncated gzip": ("cc12m.tsv.gz", "cc12m", _gz_truncated, ["gzip"]),
    "cc12m three fields": ("cc12m.tsv", "cc12m",
                           lambda p: p.write_text("http://u/1\ta\tb\n" * 4), ["line 1", "tab-separated"]),
    "redcaps invalid json": ("pics_2020.json", "redcaps",
                             lambda p: p.write_text('{"annotations": [\n  {"caption": "a cat"},\n'),
                             ["invalid JSON", "line 3"]),
    "redcaps no annotations": ("pics_2020.json", "redcaps",
                               lambda p: p.write_text('{"info": {}, "images": []}'), ["'annotations'"]),
    "laion without TEXT": ("part-00000.parquet", "laion",
                           lambda p: _parquet(p, URL=["http://u/1"], caption=["a cat"]), ["'TEXT'"]),
    "laion not parquet": ("part-00000.parquet", "laion",
                          lambda p: p.write_text("TEXT\tURL\na cat\thttp://u/1\n"), ["parquet"]),
    "table csv missing column": ("t.csv", "table",
                                 lambda p: p.write_text("text,url\na cat,http://u/1\n"), ["'caption'"]),
    "table csv semicolons": ("t.csv", "table",
                             lambda p: p.write_text("caption;url\na cat;http://u/1\n"),
                             ["'caption'", "wrong delimiter"]),
    "table tsv missing column": ("t.tsv", "table",
                                 lambda p: p.write_text("text\turl\na cat\thttp://u/1\n"), ["'caption'"]),
    "table jsonl missing column": ("t.jsonl", "table",
                                   lambda p: p.write_text('{"text": "a cat"}\n{"text": "a dog"}\n'),
                                   ["'caption'", "line 1"]),
    "table parquet missing column": ("t.parquet", "table",
                                     lambda p: _parquet(p, text=["a cat"]), ["'caption'"]),
    "table unknown extension": ("t.txt", "table", lambda p: p.write_text("caption\na cat\n"), ["extension"]),
    "empty file": ("cc3m.tsv", "cc3m", lambda p: p.write_text(""), ["empty"]),
    "missing file": ("nope.tsv", "cc3m", lambda p: None, ["no such file"]),
    "missing parquet": ("nope.parquet", "laion", lambda p: None, ["no such file"]),
    # the captions step refuses a file without one usable caption (it wrote an empty table before)
    "every row empty": ("cc3m.tsv", "cc3m", lambda p: p.write_text("\thttp://u/1\n   \thttp://u/2\n\n"),
                        ["no usable captions", "empty"]),
}


@pytest.mark.parametrize("name, fmt, write, fragments", list(CAPTION_CASES.values()), ids=list(CAPTION_CASES))
def test_bad_caption_file(world, tmp_path, capsys, name, fmt, write, fragments):
    path = tmp_path / "in" / name
    path.parent.mkdir()
    write(path)
    code, err = cli(capsys, "captions", *world, f"captions.path={path}", f"captions.format={fmt}")
    out = results(tmp_path, "captions")
    check_failure(code, err, tmp_path, (str(path), *fragments), exit_code=1, prefix="synrep captions: error:",
                  finals=(out / "captions.parquet", out / "stats.json", out / "bad_rows.csv"))


# --------------------------------------------------------------------------------------------
# Generation: sources, shards, model folders
# --------------------------------------------------------------------------------------------


@pytest.fixture
def with_captions(world, tmp_path):
    """A deduplicated caption table, as the captions step writes it."""
    path = results(tmp_path, "captions", "captions.parquet")
    path.parent.mkdir(parents=True)
    n = 20
    pl.DataFrame({"caption_id": list(range(n)), "caption": [f"a red circle {i}" for i in range(n)],
                  "url": [f"toy://train/{i}" for i in range(n)], "source_line": list(range(1, n + 1))}
                 ).write_parquet(path)
    return world


def no_shards(tmp_path: Path) -> tuple[Path, ...]:
    shards = results(tmp_path, "shards")
    return tuple(shards / s / "shard-000000.tar" for s in ("w2", "w4", "w8"))


def test_generate_without_captions(world, tmp_path, capsys):
    code, err = cli(capsys, "generate", *world, "--source", "w2")
    check_failure(code, err, tmp_path, (str(results(tmp_path, "captions", "captions.parquet")), "captions"),
                  exit_code=1, prefix="synrep generate: error:", finals=no_shards(tmp_path))


def test_generate_unknown_source(with_captions, tmp_path, capsys):
    code, err = cli(capsys, "generate", *with_captions, "--source", "nope")
    check_failure(code, err, tmp_path, ("'nope'", "'sources'"), exit_code=1, prefix="synrep generate: error:",
                  finals=no_shards(tmp_path))


def test_generate_shard_out_of_range(with_captions, tmp_path, capsys):
    code, err = cli(capsys, "generate", *with_captions, "--source", "w2", "--shard", "99")
    check_failure(code, err, tmp_path, ("shard 99", "'w2' generates 20 captions, 2 shard(s)"), exit_code=1,
                  prefix="synrep generate: error:", finals=no_shards(tmp_path))


def test_generate_model_folder_without_model_index(with_captions, tmp_path, capsys):
    folder = tmp_path / "my_model"
    shutil.copytree(REPO / "models" / "toy_generator", folder)
    (folder / "model_index.json").unlink()
    code, err = cli(capsys, "generate", *with_captions, f"generation.model={folder}", "--source", "w2")
    check_failure(code, err, tmp_path, (str(folder), "model_index.json", "'generation.model'"), exit_code=1,
                  prefix="synrep generate: error:", finals=no_shards(tmp_path))


def test_generate_model_path_that_does_not_exist(with_captions, tmp_path, capsys):
    code, err = cli(capsys, "generate", *with_captions, "generation.model=./models/no_such_model", "--source", "w2")
    check_failure(code, err, tmp_path, ("no_such_model", "'generation.model'"), exit_code=1,
                  prefix="synrep generate: error:", finals=no_shards(tmp_path))


def test_source_generator_without_model_index(with_captions, tmp_path, capsys):
    folder = tmp_path / "empty_model"
    folder.mkdir()
    code, err = cli(capsys, "generate", *with_captions, f"sources.w2.generator={folder}", "--source", "w2")
    check_failure(code, err, tmp_path, (str(folder), "'sources.w2.generator'"), exit_code=1,
                  prefix="synrep generate: error:", finals=no_shards(tmp_path))


def test_generate_truncated_safetensors(with_captions, tmp_path, capsys):
    folder = tmp_path / "toy_generator"
    shutil.copytree(REPO / "models" / "toy_generator", folder)
    weights = folder / "text_encoder" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    code, err = cli(capsys, "generate", *with_captions, f"generation.model={folder}", "--source", "w2")
    check_failure(code, err, tmp_path, (f"{weights}: corrupt or truncated weights file",), exit_code=1,
                  prefix="synrep generate: error:", finals=no_shards(tmp_path))


# --------------------------------------------------------------------------------------------
# Shards given to training
# --------------------------------------------------------------------------------------------


def write_source_shards(tmp_path: Path, source: str = "w2", n: int = 48, l: int = 4) -> Path:
    """A shard and its index as generate + index write them (random pixels); returns the shard."""
    from synrep.data.shards import sample_key, shard_path, write_index, write_shard

    rng = np.random.default_rng(0)
    samples = [{"key": sample_key(i), "images": list(rng.integers(0, 256, (l, 16, 16, 3), dtype=np.uint8)),
                "record": {"caption": f"a red circle {i}", "caption_id": i}} for i in range(n)]
    path = write_shard(shard_path(results(tmp_path, "shards"), source, 0), samples)
    write_index(path.parent / "index.parquet", [{"path": str(path), "shard": 0, "samples": n}])
    return path


def train_finals(out: Path) -> tuple[Path, ...]:
    return out / "model.pt", out / "train.json", out / "checkpoints" / "last.pt"


def test_train_truncated_shard(world, tmp_path, capsys):
    shard = write_source_shards(tmp_path)
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    out = tmp_path / "run"
    code, err = cli(capsys, "train", *world, f"train.output_dir={out}")
    check_failure(code, err, tmp_path, (f"{shard}: truncated or corrupt shard",), exit_code=1,
                  prefix="synrep train: error:", finals=train_finals(out), progress=True)


def test_train_shard_that_is_not_a_tar(world, tmp_path, capsys):
    shard = write_source_shards(tmp_path)
    shard.write_text("<html>404 Not Found</html>\n" * 50)
    out = tmp_path / "run"
    code, err = cli(capsys, "train", *world, f"train.output_dir={out}")
    check_failure(code, err, tmp_path, (f"{shard}: truncated or corrupt shard",), exit_code=1,
                  prefix="synrep train: error:", finals=train_finals(out), progress=True)


def test_train_index_lists_a_missing_shard(world, tmp_path, capsys):
    shard = write_source_shards(tmp_path)
    shard.unlink()
    out = tmp_path / "run"
    code, err = cli(capsys, "train", *world, f"train.output_dir={out}")
    check_failure(code, err, tmp_path, (str(shard.parent / "index.parquet"), str(shard)), exit_code=1,
                  prefix="synrep train: error:", finals=train_finals(out))
    assert not out.exists()


def test_train_unreadable_index(world, tmp_path, capsys):
    shard = write_source_shards(tmp_path)
    index = shard.parent / "index.parquet"
    index.write_bytes(index.read_bytes()[:40])
    out = tmp_path / "run"
    code, err = cli(capsys, "train", *world, f"train.output_dir={out}")
    check_failure(code, err, tmp_path, (f"{index}: not a readable shard index",), exit_code=1,
                  prefix="synrep train: error:", finals=train_finals(out))


def test_train_without_shards(world, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = cli(capsys, "train", *world, f"train.output_dir={out}")
    check_failure(code, err, tmp_path, (str(results(tmp_path, "shards", "w2", "index.parquet")), "'w2'"),
                  exit_code=1, prefix="synrep train: error:", finals=train_finals(out))


def test_train_real_shards_folder_with_a_broken_tar(world, tmp_path, capsys):
    folder = tmp_path / "img2dataset"
    folder.mkdir()
    (folder / "00000.tar").write_bytes(b"\0" * 10 + b"junk" * 100)
    out = tmp_path / "run"
    code, err = cli(capsys, "train", *world, "train.data=real", f"train.real_shards={folder}",
                    f"train.output_dir={out}")
    check_failure(code, err, tmp_path, (f"{folder / '00000.tar'}: truncated or corrupt shard",), exit_code=1,
                  prefix="synrep train: error:", finals=train_finals(out))


def test_real_shards_without_captions(world, tmp_path, capsys):
    code, err = cli(capsys, "real_shards", *world)
    check_failure(code, err, tmp_path, (str(results(tmp_path, "captions", "captions.parquet")),), exit_code=1,
                  prefix="synrep real_shards: error:", finals=(results(tmp_path, "real_shards", "index.parquet"),))


# --------------------------------------------------------------------------------------------
# Checkpoints and trained models
# --------------------------------------------------------------------------------------------


def truncated_torch_file(path: Path) -> Path:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {"w": torch.zeros(64, 64)}, "step": 3}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_train_truncated_checkpoint(world, tmp_path, capsys):
    from synrep.config import load_config
    from synrep.learning.identity import training_identity

    write_source_shards(tmp_path)
    out = tmp_path / "run"
    overrides = [*world, f"train.output_dir={out}"]
    out.mkdir()
    (out / "identity.json").write_text(json.dumps(training_identity(load_config(overrides))))
    ckpt = truncated_torch_file(out / "checkpoints" / "last.pt")
    code, err = cli(capsys, "train", *overrides)
    check_failure(code, err, tmp_path, (f"{ckpt}: corrupt or truncated checkpoint",), exit_code=1,
                  prefix="synrep train: error:", finals=(out / "model.pt", out / "train.json"))


def test_evaluate_truncated_model(world, tmp_path, capsys):
    out = tmp_path / "run"
    model = truncated_torch_file(out / "model.pt")
    code, err = cli(capsys, "evaluate", *world, f"train.output_dir={out}")
    check_failure(code, err, tmp_path, (f"{model}: corrupt or truncated checkpoint",), exit_code=1,
                  prefix="synrep evaluate: error:", finals=(out / "eval.json", out / "features"))


def test_evaluate_without_model(world, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = cli(capsys, "evaluate", *world, f"train.output_dir={out}")
    check_failure(code, err, tmp_path, (str(out / "model.pt"),), exit_code=1, prefix="synrep evaluate: error:",
                  finals=(out / "eval.json",))


# --------------------------------------------------------------------------------------------
# Sweep ids
# --------------------------------------------------------------------------------------------


def test_sweep_run_unknown_id(world, tmp_path, capsys):
    code, err = cli(capsys, "sweep_run", *world, "--run", "no-such-run")
    check_failure(code, err, tmp_path, ("'no-such-run'", "stablerep_plus-w2-l4-m4-s0"), exit_code=1,
                  prefix="synrep sweep_run: error:", finals=(results(tmp_path, "runs", "no-such-run"),))


def test_sweep_asks_for_more_images_than_stored(world, tmp_path, capsys):
    code, err = cli(capsys, "sweep", *world, "sweep.grids=[{data: [w4], l: [6]}]")
    check_failure(code, err, tmp_path, ("l = 6", "'sources.w4.l'"), exit_code=1, prefix="synrep sweep: error:")


# --------------------------------------------------------------------------------------------
# The real process: exit status and no traceback
# --------------------------------------------------------------------------------------------


def python_m_synrep(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("SYNREP_DEBUG", "SYNREP_CONFIG_DIR")}
    return subprocess.run([sys.executable, "-m", "synrep", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_process_config_error(world, tmp_path):
    proc = python_m_synrep(tmp_path, "generate", *world, "sources.w2.guidance.w=[3,3]")
    check_failure(proc.returncode, proc.stderr, tmp_path, ("'sources.w2.guidance.w'",), exit_code=2,
                  prefix="synrep: error:")
    assert proc.stdout == ""


def test_process_missing_caption_file(world, tmp_path):
    missing = tmp_path / "cc3m" / "Train_GCC-training.tsv"
    proc = python_m_synrep(tmp_path, "captions", *world, f"captions.path={missing}")
    check_failure(proc.returncode, proc.stderr, tmp_path, (f"{missing}: no such file",), exit_code=1,
                  prefix="synrep captions: error:", finals=(results(tmp_path, "captions", "captions.parquet"),))


def test_process_truncated_model(world, tmp_path):
    out = tmp_path / "run"
    model = truncated_torch_file(out / "model.pt")
    proc = python_m_synrep(tmp_path, "evaluate", *world, f"train.output_dir={out}")
    check_failure(proc.returncode, proc.stderr, tmp_path, (f"{model}: corrupt or truncated checkpoint",),
                  exit_code=1, prefix="synrep evaluate: error:", finals=(out / "eval.json",))


# --------------------------------------------------------------------------------------------
# Only input errors become one line: a bug keeps its traceback
# --------------------------------------------------------------------------------------------


def _raising(error: Exception):
    def run(cfg):
        raise error
    return run


@pytest.mark.parametrize("error", [InputError("plan: the shard index names 3 shards, found 2"),
                                   ConfigError("config key 'sources.w2.l': needs 4"),
                                   FileNotFoundError("captions.tsv: no such file")],
                         ids=["input", "config", "missing file"])
def test_an_input_error_inside_a_step_is_one_line(world, tmp_path, capsys, monkeypatch, error):
    from synrep.experiments import planner

    monkeypatch.setattr(planner, "run", _raising(error))
    code, err = cli(capsys, "plan", *world)
    check_failure(code, err, tmp_path, (str(error),), exit_code=1, prefix="synrep plan: error:")


@pytest.mark.parametrize("error", [ValueError("operands could not be broadcast together"),
                                   TypeError("unsupported operand type(s)"), KeyError("w2")],
                         ids=["ValueError", "TypeError", "KeyError"])
def test_a_bug_inside_a_step_keeps_its_traceback(world, capsys, monkeypatch, error):
    """A plain ValueError is no input error: it propagates out of main, so the interpreter prints
    its traceback (and exits 1), instead of a line that hides where it came from."""
    from synrep.experiments import planner

    monkeypatch.setattr(planner, "run", _raising(error))
    with pytest.raises(type(error)) as raised:
        main(["plan", *world])
    assert raised.value is error
    assert "error:" not in capsys.readouterr().err


def test_process_bug_prints_its_traceback(world, tmp_path):
    """The real process: a bug's traceback names where it was raised."""
    (tmp_path / "bug.py").write_text(
        "import sys\nfrom synrep.__main__ import main\nfrom synrep.experiments import planner\n"
        "def run(cfg):\n    raise ValueError('a bug, not an input')\n"
        "planner.run = run\nsys.exit(main(sys.argv[1:]))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("SYNREP_DEBUG", "SYNREP_CONFIG_DIR")}
    proc = subprocess.run([sys.executable, str(tmp_path / "bug.py"), "plan", *world], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "bug.py\", line 5, in run" in proc.stderr
    assert proc.stderr.rstrip().endswith("ValueError: a bug, not an input")
