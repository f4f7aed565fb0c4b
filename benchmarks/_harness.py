"""Helpers shared by the benchmark scripts: a thin layer over :mod:`npfrcnn.bench`.

Timing, the machine description and the revision come from the package (``npfrcnn bench``
uses the same code), so there is one harness. Rules (DESIGN.md): every figure is the median of
several runs after a warm-up; the first call (Numba compilation, TF tracing) is reported apart;
the reference is measured in the same run.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from npfrcnn._io import atomic_write
from npfrcnn.bench import timing as _timing


@dataclass
class Timing:
    first_s: float  # the first call: compilation / tracing + one run
    runs_s: list[float]  # the timed runs after warm-up

    @property
    def median_s(self) -> float:
        import statistics

        return statistics.median(self.runs_s)

    @property
    def compile_s(self) -> float:
        """First call minus a steady-state run: the one-off cost (compilation, tracing)."""
        return max(self.first_s - self.median_s, 0.0)


def time_call(
    fn: Callable[[], object], repeats: int = 5, warmup: int = 1
) -> tuple[Timing, object]:
    """Time ``fn`` with :func:`npfrcnn.bench.timing.measure` (CPU): one first call,
    ``warmup`` more untimed calls, then ``repeats`` runs. Returns the timing and the first
    call's result (for the caller's correctness check)."""
    t, first = _timing.measure(fn, repeats=repeats, warmup=max(warmup, 1), memory="none")
    return Timing(t.first_ms / 1e3, [ms / 1e3 for ms in t.runs_ms]), first


def machine_description() -> str:
    v = _timing.versions()
    libs = ", ".join(f"{k} {v[k]}" for k in ("numpy", "numba", "tensorflow", "torch") if k in v)
    return f"{_timing.machine_line(_timing.machine())}, {libs}"


def git_revision() -> str:
    return _timing.git_revision()


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
    with atomic_write(path) as f:  # npfrcnn's one atomic writer
        f.write(text.rstrip() + "\n")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
