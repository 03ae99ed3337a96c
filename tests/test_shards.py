"""The shard format: the members sidecar, the summary saved at write time, and an index that reads
only those small records."""

import hashlib
import io
import json
import os
import tarfile

import numpy as np
import polars as pl
import pytest
from PIL import Image

from synrep.config import run_dir
from synrep.data import shards
from synrep.fileio import write_parquet
from synrep.generation import generate, index
from tests.test_generate import gen_overrides


def fake_samples(n, l=3, size=8, seed=0, first_id=100):
    rng = np.random.default_rng(seed)
    return [{"key": shards.sample_key(first_id + k), "record": {"caption": f"caption {k}", "caption_id": first_id + k},
             "images": [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(l)]} for k in range(n)]


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_sidecar_lists_every_member_at_its_offset(tmp_path, fmt):
    samples = fake_samples(5)
    path = shards.write_shard(tmp_path / "shard-000007.tar", samples, fmt)
    side = tmp_path / "shard-000007.members.parquet"
    assert shards.members_path(path) == side and side.exists()
    table = pl.read_parquet(side)
    assert table.schema == pl.Schema({"key": pl.Utf8, "suffix": pl.Utf8, "offset": pl.Int64, "size": pl.Int64})
    data = path.read_bytes()
    with tarfile.open(path) as tar:
        members = [m for m in tar if m.isfile()]
        assert table["key"].to_list() == [m.name.partition(".")[0] for m in members]
        assert table["suffix"].to_list() == [m.name.partition(".")[2] for m in members]
        for row, member in zip(table.iter_rows(named=True), members):
            # the bytes at the recorded offset are the member's
            assert data[row["offset"]:row["offset"] + row["size"]] == tar.extractfile(member).read()
    for row in table.filter(pl.col("suffix") != "json").iter_rows(named=True):
        k, i = int(row["key"][1:]) - 100, int(row["suffix"].split(".")[0])
        image = np.asarray(Image.open(io.BytesIO(data[row["offset"]:row["offset"] + row["size"]])).convert("RGB"))
        if fmt == "png":
            np.testing.assert_array_equal(image, samples[k]["images"][i])
        assert row["suffix"].endswith(fmt)


def test_summary_saved_at_write_time_equals_a_scan_of_the_tar(tmp_path):
    path = shards.write_shard(tmp_path / "shard-000000.tar", fake_samples(6, l=4), "jpg")
    record = shards.shard_record(path)
    # the reference: the tar decoded and hashed after the fact
    decoded = list(shards.read_shard(path))
    assert record == {
        "samples": 6, "images": sum(len(s["images"]) for s in decoded), "bytes": os.path.getsize(path),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "image_format": "jpg",
        "tail_sha256": hashlib.sha256(path.read_bytes()[-shards.TAIL_BYTES:]).hexdigest(),
        "first_caption_id": decoded[0]["record"]["caption_id"], "last_caption_id": decoded[-1]["record"]["caption_id"],
    }
    spec = shards.ShardSpec("w2", 0, 0, 6)
    scanned = dict(shards.shard_summary(path, spec))
    shards.members_path(path).unlink()  # a shard written before sidecars: scanned, same row
    assert shards.shard_summary(path, spec) == scanned


def test_a_sidecar_of_another_tar_is_not_trusted(tmp_path):
    path = shards.write_shard(tmp_path / "shard-000000.tar", fake_samples(3))
    side = shards.members_path(path).read_bytes()
    shards.write_shard(path, fake_samples(4, seed=1))
    shards.members_path(path).write_bytes(side)  # e.g. copied over by hand
    assert os.path.getsize(path) == json.loads(pl.read_parquet_metadata(shards.members_path(path))[
        shards.SUMMARY_KEY.decode()])["bytes"]  # tars come in 10 KiB records: the same size
    assert shards.shard_record(path) is None
    assert shards.shard_summary(path)["samples"] == 4


def test_rewriting_a_shard_never_leaves_a_tar_beside_another_tars_sidecar(tmp_path, monkeypatch):
    path = shards.write_shard(tmp_path / "shard-000000.tar", fake_samples(3))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    # killed after the sidecar is written, before the tar is renamed into place
    monkeypatch.setattr(os, "replace", _replace_then(killed, path))
    with pytest.raises(KeyboardInterrupt):
        shards.write_shard(path, fake_samples(4, seed=1))
    assert not path.exists() and not list(tmp_path.glob(".*.tmp"))


def _replace_then(fail, tar):
    real = os.replace

    def replace(src, dst):
        if str(dst) == str(tar):
            fail()
        return real(src, dst)

    return replace


@pytest.fixture
def counted(monkeypatch):
    """Counts of images decoded, tars opened and files hashed while the test runs."""
    counts = {"decode": 0, "tar": 0, "hash": 0}
    decode, open_tar = shards.decode_image, tarfile.open

    def counting_decode(data):
        counts["decode"] += 1
        return decode(data)

    def counting_open(*args, **kwargs):
        counts["tar"] += 1
        return open_tar(*args, **kwargs)

    def no_hash(path, *args, **kwargs):
        counts["hash"] += 1
        raise AssertionError(f"{path} hashed")

    monkeypatch.setattr(shards, "decode_image", counting_decode)
    monkeypatch.setattr(tarfile, "open", counting_open)
    monkeypatch.setattr(shards, "sha256_file", no_hash)
    return counts


def test_index_of_8300_shards_reads_only_their_records(make_cfg, small_world, tiny_toy_pipeline_dir, counted):
    """The paper's shard count: the index comes from the records saved at write time. Shard 0 is
    generated; the others are links to one tar and its sidecar (their records are all valid)."""
    n = 8300
    cfg = make_cfg(*gen_overrides(small_world, tiny_toy_pipeline_dir, "generation.captions_per_shard=1",
                                  "train.data=w1", "sweep.grids=[]"))
    write_parquet(run_dir(cfg, "captions", "captions.parquet"),
                  pl.DataFrame({"caption_id": list(range(n)), "caption": [f"a red circle {i}" for i in range(n)]}))
    (first,) = generate.run(cfg, source="w1", shard=0)
    made = {k: v for k, v in counted.items()}
    fake = shards.write_shard(first.with_name("fake.tar"), fake_samples(1, l=3, size=16))
    for i in range(1, n):
        path = shards.shard_path(run_dir(cfg, "shards"), "w1", i)
        os.link(fake, path)
        os.link(shards.members_path(fake), shards.members_path(path))
    before = dict(counted)
    out = index.index_source(cfg, "w1")
    assert counted["hash"] == before["hash"] == made["hash"] == 0
    # the grid's images (shard 0's first samples: it has one, of l = 3 images) and nothing else
    assert counted["decode"] - before["decode"] == 3
    assert counted["tar"] - before["tar"] == 1
    table = pl.read_parquet(out["index"])
    assert table.height == n and table["shard"].to_list() == list(range(n))
    fake_hash = hashlib.sha256(fake.read_bytes()).hexdigest()
    assert table["sha256"].to_list() == [hashlib.sha256(first.read_bytes()).hexdigest()] + [fake_hash] * (n - 1)
    assert table["images"].sum() == 3 * n and table["samples"].sum() == n
    assert table["bytes"].to_list()[1:] == [fake.stat().st_size] * (n - 1)
    assert json.loads(out["stats"].read_text())["shards"] == n
