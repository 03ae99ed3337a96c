"""Per-rule job counts and seconds of a Snakemake run, from its log (the newest in
``.snakemake/log/`` unless a file is given): how the default run's time splits.

    snakemake --cores 2 && python benchmarks/rule_times.py [LOG]

Job seconds are from a job's start line to its "Finished jobid" line; jobs that ran side by side
(one-thread generation jobs) overlap, so the rules' sums can exceed the wall time.
"""

from __future__ import annotations

import re
import sys
from datetime import datetime
from pathlib import Path

STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")


def parse(text: str) -> tuple[dict[str, list[float]], float]:
    started: dict[str, tuple[str, datetime]] = {}
    jobs: dict[str, list[float]] = {}
    now = first = last = None
    rule = None
    for line in text.splitlines():
        match = STAMP.match(line.strip())
        if match:
            now = datetime.strptime(match.group(1), "%a %b %d %H:%M:%S %Y")
            first = first or now
            last = now
            continue
        head = re.match(r"^(?:local)?(?:rule|checkpoint) (\w+):$", line.strip())
        if head:
            rule = head.group(1)
            continue
        jobid = re.match(r"^jobid: (\d+)$", line.strip())
        if jobid and rule and now:
            started[jobid.group(1)] = (rule, now)
            rule = None
            continue
        done = re.match(r"^Finished jobid: (\d+)", line.strip())
        if done and done.group(1) in started and now:
            name, start = started.pop(done.group(1))
            jobs.setdefault(re.sub(r"^sweep_run_\w+$", "sweep_run", name), []).append((now - start).total_seconds())
    return jobs, (last - first).total_seconds() if first else 0.0


def main() -> None:
    logs = sorted(Path(".snakemake/log").glob("*.snakemake.log"))
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else (logs[-1] if logs else None)
    if path is None or not path.exists():
        sys.exit("no Snakemake log: run snakemake first, or pass the log's path")
    jobs, wall = parse(path.read_text())
    print(f"{path}: wall {wall:.0f} s ({wall / 60:.1f} min)\n")
    print("| rule | jobs | seconds | seconds a job | share of wall |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for rule, times in sorted(jobs.items(), key=lambda kv: -sum(kv[1])):
        print(f"| {rule} | {len(times)} | {sum(times):.0f} | {sum(times) / len(times):.1f} | {sum(times) / wall:.0%} |")


if __name__ == "__main__":
    main()
