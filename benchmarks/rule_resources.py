"""Each rule's peak memory and time per unit of work on a scaled-down paper run, with the factor to
paper scale: the measurement that the SLURM profiles' ``mem_mb`` and ``runtime`` come from.

    python benchmarks/rule_resources.py --captions 1000 4000              # local, 2 cores
    python benchmarks/rule_resources.py --captions 1000 4000 --executor slurm   # the local SLURM

For each caption count it makes the rehearsal's inputs (``config/experiment/paper_rehearsal.yaml``:
CC12M-format captions with duplicates and bad rows, a tiny random-weight Stable Diffusion saved as a
diffusers folder, a fake ImageNet folder, img2dataset-style real shards), runs the whole pipeline
through Snakemake, and reads every job's closing line (``synrep <step>: done in S, peak RSS M MB``)
from the rules' logs. Two caption counts show whether a rule's memory grows with the data set: a
rule sized O(one shard) or O(one batch) keeps its peak when the captions quadruple.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import yaml
from machine import machine  # benchmarks/machine.py
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DONE = re.compile(r"^synrep (\w+): done in ([\d.]+)s, peak RSS (\d+) MB \(largest child (\d+) MB\)$", re.M)
WORDS = ("red green blue small large dog cat house tree river car bird boat street city field flower "
         "mountain beach chair table window light night morning old new wooden stone glass photo").split()
WNIDS = ("n01440764", "n01443537", "n01484850", "n01491361", "n01494475")
# Work per job at paper scale (experiment=paper_cc12m): CC12M's 12.4M rows read once;
# 1,000-caption shards of l = 10 images; 8,300 shards per source; one run's optimizer steps.
PAPER = {"captions": ("caption rows", 12_423_374), "generate": ("images a shard", 10_000),
         "index": ("shards", 8_300)}


def write_captions(path: Path, n: int, seed: int) -> None:
    """CC12M's TSV (url, caption): n distinct captions, 5 % repeated, a few bad rows."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        rows.append(f"http://img.example/{i}.jpg\t{' '.join(rng.choices(WORDS, k=6))} {i}")
    rows += [rows[rng.randrange(n)] for _ in range(n // 20)]
    rows += ["no tab on this line"] * 3
    rng.shuffle(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")


def jpeg(rng: np.random.Generator, size: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_imagenet(root: Path, seed: int, train: int = 30, val: int = 20) -> None:
    """Five classes (few-shot's 5 ways), 20 val images a class (5 shots + 15 queries)."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        for wnid in WNIDS:
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                (folder / f"{wnid}_{i}.JPEG").write_bytes(jpeg(rng, 40))


def write_real_shards(folder: Path, captions: Path, per_shard: int, seed: int) -> None:
    """img2dataset's layout: ``00000.tar`` of ``<key>.jpg`` + ``<key>.txt``, ``00000_stats.json``."""
    rng = np.random.default_rng(seed)
    texts = [line.split("\t", 1)[1] for line in captions.read_text().splitlines() if "\t" in line]
    folder.mkdir(parents=True, exist_ok=True)
    for shard, start in enumerate(range(0, len(texts), per_shard)):
        part = texts[start:start + per_shard]
        with tarfile.open(folder / f"{shard:05d}.tar", "w") as tar:
            for i, text in enumerate(part):
                key = f"{shard:05d}{i:04d}"
                for suffix, data in (("jpg", jpeg(rng, 40)), ("txt", text.encode())):
                    info = tarfile.TarInfo(f"{key}.{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        (folder / f"{shard:05d}_stats.json").write_text(json.dumps({"successes": len(part)}))


def make_inputs(data: Path, n: int) -> None:
    from synrep.diffusion.random_sd import random_sd_pipeline

    base = data / "rehearsal"
    if not (base / "cc12m.tsv").exists():  # rewritten, it would make Snakemake redo everything
        write_captions(base / "cc12m.tsv", n, seed=n)
    if not (base / "sd-tiny" / "model_index.json").exists():
        random_sd_pipeline("tiny", seed=0).save_pretrained(base / "sd-tiny")
    if not (base / "imagenet").exists():
        write_imagenet(base / "imagenet", seed=0)
    if not (base / "real_shards").exists():
        write_real_shards(base / "real_shards", base / "cc12m.tsv", per_shard=250, seed=0)


def run_pipeline(data: Path, results: Path, executor: str) -> float:
    how = ["--profile", "slurm"] if executor == "slurm" else ["--cores", "2"]
    command = [sys.executable, "-m", "snakemake", *how, "--config", "experiment=paper_rehearsal",
               f"paths={{data_dir: {data}, results_dir: {results}}}"]
    start = time.time()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"the rehearsal failed ({' '.join(command)}):\n{done.stderr[-4000:]}")
    return time.time() - start


def job_lines(results: Path) -> dict[str, list[dict]]:
    """Every job's closing line, by step (several ranks of one job: the largest)."""
    steps: dict[str, list[dict]] = {}
    for log in sorted((results / "paper_rehearsal" / "logs").rglob("*.log")):
        # progress bars end their updates with \r: the closing line may share a "line" with them
        lines = DONE.findall(log.read_text(errors="replace").replace("\r", "\n"))
        if not lines:
            continue
        step = lines[0][0]
        steps.setdefault(step, []).append({"log": str(log), "seconds": max(float(s) for _, s, _, _ in lines),
                                           "rss": max(int(r) for _, _, r, _ in lines),
                                           "child": max(int(c) for _, _, _, c in lines)})
    return steps


def work_units(results: Path, step: str, jobs: int) -> tuple[str, float] | None:
    """The rehearsal's work a job, in PAPER's units."""
    root = results / "paper_rehearsal"
    cfg = yaml.safe_load((root / "config.yaml").read_text())
    if step == "captions":
        return PAPER[step][0], json.loads((root / "captions" / "stats.json").read_text())["rows_in"]
    if step == "generate":
        g = cfg["generation"]
        return PAPER[step][0], g["captions_per_shard"] * g["images_per_caption"]
    if step == "index":
        shards = sum(json.loads(p.read_text())["shards"] for p in (root / "shards").glob("*/stats.json"))
        return PAPER[step][0], shards / max(1, jobs)
    return None


def resources(profile: str) -> dict:
    return yaml.safe_load((REPO / profile / "config.yaml").read_text()).get("set-resources", {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captions", type=int, nargs="+", default=[1000, 4000])
    parser.add_argument("--executor", choices=("local", "slurm"), default="local")
    parser.add_argument("--work", type=Path, default=Path("/tmp/synrep-rehearsal"))
    args = parser.parse_args()

    measured = {}
    for n in args.captions:
        data, results = args.work / f"n{n}" / "data", args.work / f"n{n}" / "results"
        make_inputs(data, n)
        wall = run_pipeline(data, results, args.executor)
        measured[n] = (job_lines(results), wall, results)
        print(f"{n} captions: the rehearsal took {wall / 60:.1f} min ({args.executor})", file=sys.stderr)

    small, large = min(measured), max(measured)
    print(f"# Rule resources, experiment=paper_rehearsal, {args.executor} executor, {machine()}\n")
    print(f"| step | jobs ({small} / {large} captions) | peak RSS MB ({small} / {large}) | growth | "
          f"s a job ({large}) | work a job ({large}) | at paper scale (this CPU) | SLURM mem_mb / runtime min (slurm ; slurm-gpu) |")
    print("| --- | --- | --- | ---: | ---: | --- | --- | --- |")
    rule_of = {"generate": "generate_shard", "index": "index_source"}
    cpu_profile, gpu_profile = resources("slurm"), resources("slurm-gpu")
    launch = yaml.safe_load((measured[large][2] / "paper_rehearsal" / "config.yaml").read_text())["launch"]
    for step in measured[large][0]:
        a, b = measured[small][0].get(step, []), measured[large][0][step]
        peak_a = max((j["rss"] for j in a), default=0)
        peak_b = max(j["rss"] for j in b)
        seconds_a = sum(j["seconds"] for j in a) / len(a) if a else None
        seconds = sum(j["seconds"] for j in b) / len(b)
        units = work_units(measured[large][2], step, len(b))
        work = paper = ""
        if units:
            name, amount = units
            work = f"{amount:,.0f} {name}"
            fixed, unit = scaled_seconds(step, measured, small, large, seconds_a, seconds)
            paper = (f"{fixed:.1f} s + {unit * 1e3:.2f} ms x {PAPER[step][1]:,} {PAPER[step][0]} = "
                     f"{(fixed + unit * PAPER[step][1]) / 3600:,.2f} h a job")
        rule = rule_of.get(step, step)
        if step == "sweep_run":  # its resources come from the config's launch section (slurm-gpu's comment)
            requests = f"launch: {launch['mem_gb'] * 1000} a node / {launch['timeout_min']} a run"
        else:
            requests = " ; ".join(f"{p.get(rule, {}).get('mem_mb', '-')} / {p.get(rule, {}).get('runtime', '-')}"
                                  for p in (cpu_profile, gpu_profile))
        print(f"| {step} | {len(a)} / {len(b)} | {peak_a} / {peak_b} | {peak_b / peak_a if peak_a else float('nan'):.2f}x | "
              f"{seconds:.1f} | {work} | {paper} | {requests} |")
    print("\nAt paper scale: a job's seconds = fixed + per unit x the paper's work a job, fixed and per unit fitted "
          "on the two caption counts (where a job's work is the same at both, as generate's shard, in proportion); "
          "this CPU's time, so a GPU stage's figure is a bound, not a forecast (benchmarks/gpu.py, plan). A per-unit cost "
          "smaller than the timing noise of a small rehearsal reads 0: captions and index have their own benchmarks at "
          "paper size (captions_memory.py, shards.py).")


def scaled_seconds(step: str, measured: dict, small: int, large: int, seconds_a: float | None,
                   seconds_b: float) -> tuple[float, float]:
    """A job's fixed seconds (start-up) and seconds per unit of work, from two sizes."""
    amount_b = work_units(measured[large][2], step, len(measured[large][0][step]))[1]
    unit = None
    if seconds_a is not None:
        amount_a = work_units(measured[small][2], step, len(measured[small][0][step]))[1]
        if amount_b > amount_a:
            unit = max(0.0, (seconds_b - seconds_a) / (amount_b - amount_a))
    if unit is None:  # the same work a job at both sizes: in proportion (an upper bound on start-up)
        return 0.0, seconds_b / amount_b
    return max(0.0, seconds_b - unit * amount_b), unit

if __name__ == "__main__":
    main()
