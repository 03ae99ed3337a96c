"""Peak memory and time of ``index_source`` against the number of shards (the paper's w2 has 8,300).

Generates shard 0 of source w2 (toy generator, ``--captions-per-shard`` captions, l = 4 at 16 px), links it and
its sidecar as shards 1 .. N-1 (every record valid), then runs ``python -m synrep index --source w2``
in a fresh process and prints its peak RSS (``ru_maxrss``) and seconds. ``--src DIR`` runs another
source tree on the same shards, e.g. the code before a change:

    git archive <commit> src | tar -x -C /tmp/shards_before
    python benchmarks/shards.py [--shards 830 8300] [--src /tmp/shards_before/src]

Per shard the index reads its sidecar's metadata and the tar's last 16 KiB; it decodes only the
grid's images of shard 0 and hashes no tar (tests/test_shards.py counts both).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
from machine import machine  # benchmarks/machine.py

REPO = Path(__file__).resolve().parents[1]


def run_index(src: Path, overrides: list[str]) -> tuple[float, float]:
    """Seconds and peak RSS (MB) of one ``synrep index`` process."""
    code = ("import resource, runpy, sys; sys.argv = ['synrep', 'index', '--source', 'w2', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('synrep', run_name='__main__')\nfinally:\n"
            "    print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)")
    env = dict(os.environ, PYTHONPATH=str(src))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *overrides], cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    rss = [int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("MAXRSS")][-1]
    return seconds, rss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, nargs="+", default=[830, 8300])
    parser.add_argument("--src", type=Path, action="append", default=[])
    parser.add_argument("--captions-per-shard", type=int, default=1,
                        help="the size of each shard (the paper's: 1,000 captions of 10 images at 256 px)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    from synrep.config import load_config, run_dir
    from synrep.data.shards import members_path, shard_path
    from synrep.fileio import write_parquet
    from synrep.generation import generate

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.shards:
            overrides = [f"paths.data_dir={tmp}/{n}/data", f"paths.results_dir={tmp}/{n}/results",
                         f"generation.captions_per_shard={args.captions_per_shard}", "train.data=w2", "sweep.grids=[]", "threads=1"]
            cfg = load_config(overrides)
            write_parquet(run_dir(cfg, "captions", "captions.parquet"),
                          pl.DataFrame({"caption_id": list(range(n * args.captions_per_shard)),
                                        "caption": [f"a red circle {i}" for i in range(n * args.captions_per_shard)]}))
            (first,) = generate.run(cfg, source="w2", shard=0)
            for i in range(1, n):
                path = shard_path(run_dir(cfg, "shards"), "w2", i)
                os.link(first, path)
                os.link(members_path(first), members_path(path))
            for src in [REPO / "src", *args.src]:
                seconds, rss = run_index(src, overrides)
                rows.append({"src": str(src), "shards": n, "captions_per_shard": args.captions_per_shard, "seconds": round(seconds, 1), "peak_rss_mb": round(rss),
                             "ms_per_shard": round(1000 * seconds / n, 2)})
                print(rows[-1], flush=True)
    print(f"\n{machine()}; python -m synrep index, one process "
          "(seconds include Python, torch and MLflow start-up)")
    with pl.Config(tbl_rows=-1, tbl_width_chars=200, fmt_str_lengths=80):
        print(pl.DataFrame(rows))


if __name__ == "__main__":
    main()
