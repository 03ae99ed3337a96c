"""Atomic writes: a killed writer leaves no half file, and its temporary is cleaned by the next
write of the same file, while a writer that is still running keeps its own."""

from __future__ import annotations

import subprocess
import sys
import time

from synrep.fileio import write_text

WRITER = """
import sys, time
from synrep.fileio import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_text("half")
    print("writing", flush=True)
    time.sleep(120)
"""


def test_a_killed_writers_temporary_goes_with_the_next_write(tmp_path):
    target = tmp_path / "metrics.json"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    (temporary,) = tmp_path.glob(".metrics.json.*.tmp")

    write_text(target, "first")  # the other writer still runs: its file stays
    assert temporary.exists() and target.read_text() == "first"

    writer.kill()
    writer.wait()
    assert not target.read_text() == "half"
    time.sleep(0.1)
    write_text(target, "second")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    assert target.read_text() == "second"
