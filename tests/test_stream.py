"""The training loader: a map-style dataset over tar shards under the official DistributedSampler."""

from __future__ import annotations

import io
import os
import tarfile

import numpy as np
import pytest
import torch

from synrep.data import stream
from synrep.data.shards import write_shard
from synrep.training_methods import SampleSpec


def build_shards(folder, shards=8, per_shard=16, l=2, size=4):
    """Shards ordered by a label (as RedCaps files are by subreddit): shard s holds captions of label s."""
    rng = np.random.default_rng(0)
    urls, stored = [], []
    for s in range(shards):
        samples = []
        for j in range(per_shard):
            images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(l)]
            stored.append(images)
            samples.append({"key": f"c{s * per_shard + j:06d}", "images": images,
                            "record": {"caption": f"label{s} caption {j}"}})
        urls.append(str(write_shard(folder / f"shard-{s:06d}.tar", samples)))
    return urls, stored


def raw(image: torch.Tensor) -> torch.Tensor:
    return image


def dataset(urls, images=1, views=1, l=None, **kwargs):
    return stream.GroupDataset(urls, SampleSpec(images=images, views=views, use_first=l), raw, seed=3, **kwargs)


def test_sample_i_is_the_stored_caption_i(tmp_path):
    urls, stored = build_shards(tmp_path)
    ds = dataset(urls, images=2, l=2)
    assert len(ds) == 8 * 16
    for i in (0, 17, 127):
        images, caption = ds[i]
        assert caption == f"label{i // 16} caption {i % 16}"
        got = sorted(img.permute(1, 2, 0).numpy().tobytes() for img in images)
        assert got == sorted(img.tobytes() for img in stored[i])


def test_the_sampler_shuffles_the_whole_caption_set(tmp_path):
    """Batches of 8 mix captions of many shards: reading shards in order (even shuffled, with a
    buffer of a few shards) would give batches from one or two labels."""
    urls, _ = build_shards(tmp_path)
    ds = dataset(urls)
    labels_per_batch, orders = [], []
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        sampler = stream.group_sampler(ds, seed=3, rank=0, world=1)
        sampler.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(ds, batch_size=8, sampler=sampler, collate_fn=stream.collate_groups,
                                             drop_last=True)
        captions = [c for batch in loader for c in batch["captions"]]
        orders.append(captions)
        labels_per_batch += [len({c.split()[0] for c in captions[i:i + 8]}) for i in range(0, len(captions), 8)]
    assert orders[0] != orders[1] and sorted(orders[0]) == sorted(orders[1])
    # 8 draws from 8 equal labels: 5.0 distinct labels on average
    assert np.mean(labels_per_batch) > 4


def test_ranks_split_every_caption_as_the_official_sampler(tmp_path):
    urls, _ = build_shards(tmp_path, shards=3, per_shard=7)  # 21 captions over 2 ranks: one padded
    ds = dataset(urls)
    seen = []
    for rank in (0, 1):
        sampler = stream.group_sampler(ds, seed=3, rank=rank, world=2)
        seen.append(list(sampler))
    assert len(seen[0]) == len(seen[1]) == 11
    assert set(seen[0]) | set(seen[1]) == set(range(21))


def test_a_worker_reads_only_its_own_samples(tmp_path, monkeypatch):
    """Random access: a batch of 4 samples opens at most the 4 shards that hold them."""
    urls, _ = build_shards(tmp_path)
    ds = dataset(urls)
    opened = []
    real_open = os.open

    def counting_open(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", counting_open)
    for i in (0, 1, 40, 41):
        ds[i]
    assert sorted(set(opened)) == sorted({urls[0], urls[2]})


def test_a_sample_reads_only_the_images_it_draws(tmp_path, monkeypatch):
    """Of l = 6 stored images, a sample of 2 reads the bytes of those 2 and of its record: at paper
    scale (l = 10, or rounds of a refreshing source) the rest is never read from the file system."""
    urls, stored = build_shards(tmp_path, l=6)
    ds = dataset(urls, images=2)
    read = []
    real_pread = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, size, offset: read.append(size) or real_pread(fd, size, offset))
    images, caption = ds[5]
    image_bytes = stream.read_members(urls[0]).members(5)["0.png"][1]
    assert len(images) == 2 and caption == "label0 caption 5"
    assert len(read) == 3  # two images and the json record
    assert sum(read) < 3 * image_bytes + 4096
    drawn = {img.permute(1, 2, 0).numpy().tobytes() for img in images}
    assert drawn <= {img.tobytes() for img in stored[5]}


def test_draws_do_not_depend_on_workers_and_max_samples_keeps_the_first(tmp_path):
    urls, _ = build_shards(tmp_path, l=4)
    ds = dataset(urls, images=2, l=4, max_samples=20)
    assert len(ds) == 20 and ds[19][1] == "label1 caption 3"
    runs = []
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=workers, collate_fn=stream.collate_groups)
        runs.append(torch.cat([b["images"] for b in loader]))
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


def test_img2dataset_shard_reads(tmp_path):
    from PIL import Image

    path = tmp_path / "00000.tar"
    with tarfile.open(path, "w") as tar:
        for key, text in (("000000000", "a red car"), ("000000001", "a dog")):
            buf = io.BytesIO()
            Image.fromarray(np.full((4, 4, 3), 200, np.uint8)).save(buf, format="JPEG")
            for suffix, data in (("jpg", buf.getvalue()), ("txt", text.encode())):
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    ds = dataset([str(path)], views=2)
    images, caption = ds[1]
    assert caption == "a dog" and images.shape == (2, 3, 4, 4)


# the dataset that refused the shard is collected without an error of its own
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_a_truncated_shard_is_named(tmp_path):
    urls, _ = build_shards(tmp_path, shards=2)
    data = open(urls[1], "rb").read()
    open(urls[1], "wb").write(data[: len(data) // 2 + 100])
    with pytest.raises(ValueError, match=f"{urls[1]}: truncated or corrupt shard"):
        ds = dataset(urls)
        [ds[i] for i in range(len(ds))]


def open_fds(under=None) -> int:
    """Descriptors this process holds open; with ``under``, only those on files below that folder
    (other threads of a long test session, MLflow's or a progress bar's, open files of their own)."""
    if under is None:
        return len(os.listdir("/proc/self/fd"))
    held = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            held += os.readlink(f"/proc/self/fd/{fd}").startswith(str(under))
        except OSError:  # closed between the listing and the read
            pass
    return held


def test_sidecar_and_header_scan_give_the_same_samples(tmp_path):
    from synrep.data.shards import members_path

    urls, _ = build_shards(tmp_path, shards=3, l=3)
    with_sidecar = dataset(urls, images=2, l=3)
    assert all(members_path(u).exists() for u in urls)
    for u in urls:
        members_path(u).rename(str(members_path(u)) + ".away")
    scanned = dataset(urls, images=2, l=3)
    assert len(scanned) == len(with_sidecar)
    for i in range(len(scanned)):
        a, b = scanned[i], with_sidecar[i]
        assert a[1] == b[1] and torch.equal(a[0], b[0])
        assert scanned.read_sample(i)["__key__"] == with_sidecar.read_sample(i)["__key__"]


def test_an_8300_shard_index_opens_and_holds_a_bounded_number_of_files(tmp_path):
    """The index's counts place every caption: nothing is opened to build the dataset, and reading
    captions from every shard keeps at most ``open_files`` descriptors and ``cached_shards`` tables."""
    import shutil
    import tracemalloc

    from synrep.data.shards import members_path

    urls, _ = build_shards(tmp_path, shards=1, per_shard=3)
    many = []
    for s in range(8300):
        url = tmp_path / "many" / f"shard-{s:06d}.tar"
        url.parent.mkdir(exist_ok=True)
        os.link(urls[0], url)
        os.link(members_path(urls[0]), members_path(url))
        many.append(str(url))
    before = open_fds(tmp_path)
    ds = stream.GroupDataset(many, SampleSpec(images=1, views=1, use_first=None), raw, seed=0, counts=[3] * 8300,
                             cached_shards=8, open_files=4)
    assert len(ds) == 3 * 8300 and open_fds(tmp_path) == before
    step = 3 * 8300 // 600
    peak_fds = 0

    def read_600_shards(ds, start: int) -> None:  # 600 captions, each from another shard
        nonlocal peak_fds
        for i in range(start, len(ds), step):
            image, caption = ds[i]
            assert caption == f"label0 caption {ds.locate(i)[1]}"
            peak_fds = max(peak_fds, open_fds(tmp_path) - before)

    # the first pass also fills what pyarrow and PIL load and cache once (pyarrow's dataset module, pandas,
    # PIL's PNG plugin), whatever their versions hold; the second reads 600 other shards
    read_600_shards(ds, 0)
    tracemalloc.start()
    read_600_shards(ds, step // 2)
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert peak_fds <= 4 and len(ds._tables) <= 8
    # what reading 600 more shards left behind is a few shards' tables and the libraries' small caches (30 to
    # 40 kB here, level over further passes), not one table per shard touched (600 x 576 B)
    one_table = 3 * 3 * 64
    assert held < 8 * one_table + 64_000
    del ds
    assert open_fds(tmp_path) == before
    shutil.rmtree(tmp_path / "many")


def test_index_counts_that_disagree_with_a_shard_are_named(tmp_path):
    urls, _ = build_shards(tmp_path, shards=2)
    ds = stream.GroupDataset(urls, SampleSpec(images=1, views=1, use_first=None), raw, seed=0, counts=[16, 17])
    with pytest.raises(ValueError, match=f"{urls[1]}: holds 16 samples; its index says 17"):
        ds[20]


def test_persistent_workers_see_each_pass(tmp_path):
    """One loader for every pass: the pass travels with each index to persistent workers, and the
    batches are those of a fresh single-process loader for that pass."""
    urls, _ = build_shards(tmp_path, l=4)
    ds = dataset(urls, images=2, l=4)

    def batches(workers, loader=None):
        sampler = stream.EpochIndices(stream.group_sampler(ds, seed=3, rank=0, world=1))
        loader = torch.utils.data.DataLoader(ds, batch_size=8, sampler=sampler, collate_fn=stream.collate_groups,
                                             num_workers=workers, persistent_workers=workers > 0)
        out = []
        for epoch in (0, 1, 2):
            sampler.set_epoch(epoch)
            ds.set_epoch(epoch)
            out.append(torch.cat([b["images"] for b in loader]))
        return out

    single, persistent = batches(0), batches(2)
    assert not torch.equal(single[0], single[1])
    for a, b in zip(single, persistent):
        assert torch.equal(a, b)

