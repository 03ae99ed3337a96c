"""What every benchmark table names first: the date, the host, its CPU count and model."""

from __future__ import annotations

import os
import platform
from datetime import date
from pathlib import Path


def cpu_model() -> str:
    """/proc/cpuinfo's model name (Linux); platform's guess elsewhere."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine() -> str:
    """'2026-12-07, host (2 CPUs, Intel(R) Xeon(R) CPU @ 2.80GHz)'."""
    return f"{date.today()}, {platform.node()} ({os.cpu_count()} CPUs, {cpu_model()})"
