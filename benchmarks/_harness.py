"""Timing helpers shared by the benchmark scripts.

Rules (DESIGN.md, DEVELOPERS.md): every figure is the median of several runs after a warm-up;
the first call (which includes Numba compilation or TF graph tracing) is reported apart; the
reference is measured in the same run and the table shows ratios to it.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Timing:
    first_s: float  # the first call: compilation / tracing + one run
    runs_s: list[float]  # the timed runs after warm-up

    @property
    def median_s(self) -> float:
        return statistics.median(self.runs_s)

    @property
    def compile_s(self) -> float:
        """First call minus a steady-state run: the one-off cost (compilation, tracing)."""
        return max(self.first_s - self.median_s, 0.0)


def time_call(
    fn: Callable[[], object], repeats: int = 5, warmup: int = 1
) -> tuple[Timing, object]:
    """Time ``fn``: one first call, ``warmup - 1`` more untimed calls, then ``repeats`` runs.

    Returns the timing and the first call's result (for the caller's correctness check, so the
    check costs no extra call and the first call really is the first).
    """
    t0 = time.perf_counter()
    first_result = fn()
    first = time.perf_counter() - t0
    for _ in range(max(warmup - 1, 0)):
        fn()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return Timing(first, runs), first_result


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = []
    for mod in ("numpy", "numba", "tensorflow"):
        try:
            m = __import__(mod)
            versions.append(f"{mod} {m.__version__}")
        except Exception:
            pass
    return (
        f"{cpu}, {os.cpu_count()} logical cores, Linux {platform.release()}, "
        f"Python {platform.python_version()}, " + ", ".join(versions)
    )


def git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except Exception:  # no git (e.g. a copy of the tree on a GPU machine): the caller may say
        return os.environ.get("NPFRCNN_REVISION", "unknown")


def fmt_ms(seconds: float) -> str:
    ms = seconds * 1e3
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    return f"{ms:.2f}"


def replace_section(path: Path, heading: str, body: str) -> None:
    """Replace (or append) the ``## heading`` section of a Markdown file, atomically."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    marker = f"## {heading}"
    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.rstrip() == marker), None)
    new_block = f"{marker}\n\n{body.rstrip()}\n\n"
    if start is None:
        if not text.endswith("\n"):
            text += "\n"
        text += "\n" + new_block
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        text = "".join(lines[:start]) + new_block + "".join(lines[end:])
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text.rstrip() + "\n")
    os.replace(tmp, path)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
