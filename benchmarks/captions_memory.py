"""Peak memory and time of the captions step on a CC12M-sized caption file.

Writes a CC12M-style TSV (``url<TAB>caption``, no header; web-like captions from
``benchmarks/dedup.py``'s generator, ~15 % exact and ~5 % near repeats, about a third with a case
or whitespace change, ~1 % bad rows: blank lines, rows without a tab, bytes that are not UTF-8,
over-long captions) into a scratch folder, runs ``synrep.data.captions.run`` on it in a fresh
process per source tree and prints each one's peak RSS (``VmHWM``, Linux) and seconds.
``--src DIR`` adds another source tree to compare, e.g. the code before a change:

    git archive <commit> src | tar -x -C /tmp/captions_before
    python benchmarks/captions_memory.py [--rows 12000000] [--src /tmp/captions_before/src]

Outputs of every tree are compared (captions.parquet rows, bad_rows.csv bytes, stats.json less
its timing and run id); the file is deleted afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dedup import iter_captions  # noqa: E402  (the sibling benchmark)
from machine import machine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# Repeats are drawn from the last POOL captions, so the generator itself stays small.
POOL = 200_000


def write_tsv(path: Path, rows: int, seed: int) -> None:
    """A CC12M-like ``url<TAB>caption`` file; captions average about 100 characters, urls about 75."""
    rng = random.Random(seed)
    with open(path, "wb") as out:
        lines: list[bytes] = []
        # CC12M captions are longer than one template: 60 % of the new ones are two
        for i, text in enumerate(iter_captions(rows, rng, messy=0.3, pool=POOL, longer=0.6)):
            text = text.replace("\t", " ").replace("\r", " ").replace("\n", " ")
            url = f"https://img{i % 97}.example.com/{rng.getrandbits(64):016x}/{i}/photo-{rng.randrange(10**6)}.jpg"
            bad = rng.random()
            if bad < 0.003:
                line = b""
            elif bad < 0.006:
                line = text.encode()
            elif bad < 0.008:
                line = f"{url}\t".encode() + text.encode("latin-1", "replace") + b"\xe9"
            elif bad < 0.010:
                line = f"{url}\t{text * 8}".encode()
            else:
                line = f"{url}\t{text}".encode()
            lines.append(line)
            if len(lines) == 100_000:
                out.write(b"\n".join(lines) + b"\n")
                lines = []
        if lines:
            out.write(b"\n".join(lines) + b"\n")


CHILD = """
import json, sys, time
from synrep.config import load_config
from synrep.data.captions import run
cfg = load_config(sys.argv[1:])
start = time.perf_counter()
run(cfg)
seconds = time.perf_counter() - start
# VmHWM: this process's peak RSS (ru_maxrss would carry over the parent's through fork + exec)
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "peak_rss_mb": peak / 1024}))
"""


def measure(src: Path, tsv: Path, results: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src))
    overrides = [f"paths.results_dir={results}", f"paths.data_dir={results / 'data'}", "name=bench",
                 "captions.format=cc12m", f"captions.path={tsv}", "captions.limit=null"]
    # run from the tree's checkout, so that it reads its own config/
    proc = subprocess.run([sys.executable, "-c", CHILD, *overrides], env=env, capture_output=True, text=True,
                          cwd=src.parent)
    if proc.returncode:
        raise SystemExit(f"{src}: the captions step failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def outputs(results: Path) -> tuple:
    out = results / "bench" / "captions"
    stats = json.loads((out / "stats.json").read_text())
    for key in ("seconds", "mlflow_run_id"):
        stats.pop(key, None)
    return pl.read_parquet(out / "captions.parquet"), (out / "bad_rows.csv").read_bytes(), stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=12_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--src", action="append", default=[], type=Path,
                        help="another source tree (a folder holding the synrep package) to measure")
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the generated file")
    args = parser.parse_args(argv)

    scratch = args.dir or Path(tempfile.mkdtemp(prefix="captions_memory_"))
    scratch.mkdir(parents=True, exist_ok=True)
    tsv = scratch / f"cc12m_{args.rows}.tsv"
    try:
        if not tsv.exists():
            t0 = time.perf_counter()
            write_tsv(tsv, args.rows, args.seed)
            print(f"wrote {tsv} ({tsv.stat().st_size / 1e6:,.0f} MB) in {time.perf_counter() - t0:.0f} s", flush=True)
        trees = [("this tree", REPO / "src"), *((str(s), s) for s in args.src)]
        rows, reference = [], None
        for label, src in trees:
            results = scratch / f"results_{len(rows)}"
            shutil.rmtree(results, ignore_errors=True)
            got = measure(src, tsv, results)
            out = outputs(results)
            if reference is None:
                reference, same = out, "reference"
            else:
                same = str(out[0].equals(reference[0]) and out[1] == reference[1] and out[2] == reference[2])
            rows.append((label, got["peak_rss_mb"], got["seconds"], same, out[2]["rows_out"]))
            shutil.rmtree(results, ignore_errors=True)
            print(f"  {label}: {got['peak_rss_mb']:,.0f} MB, {got['seconds']:.0f} s", flush=True)
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(scratch, ignore_errors=True)
        elif not args.keep:
            tsv.unlink(missing_ok=True)

    print(f"\n{machine()}, polars {pl.__version__} "
          f"({pl.thread_pool_size()} threads); {args.rows:,} rows, {tsv.name}")
    print("\n| source tree | peak RSS (MB) | seconds | rows/s | captions kept | same output |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for label, rss, seconds, same, kept in rows:
        print(f"| {label} | {rss:,.0f} | {seconds:,.0f} | {args.rows / seconds:,.0f} | {kept:,} | {same} |")
    return 0 if all(r[3] in ("reference", "True") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
