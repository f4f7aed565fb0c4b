"""Benchmark results: records, the stdout table, the JSON file and the log-log plot.

JSON (``--json``), format ``npfrcnn-bench/1``::

    {"format": "npfrcnn-bench/1", "op", "device", "command", "revision",
     "machine": {"cpu", "logical_cores", "os", "python", ["gpu"]},
     "versions": {"npfrcnn", "numpy", "numba", ...},
     "settings": {"repeats", "warmup", "threads", "slow_s"},
     "gate": {"<impl> (<semantics>)": {"exact", "cases", "failed", "first_mismatch"}},
     "notes": [...],
     "records": [{"impl", "op", "semantics", "workload", "params", "size", "exact",
                  "first_mismatch", "median_ms", "p10_ms", "p90_ms", "first_call_ms",
                  "repeats", "threads", "device", "timer", "peak_mem_mb", "skipped",
                  "machine", "versions"}, ...]}

One record per (implementation, op, workload and size). ``exact`` is true when the
implementation matched the reference on every adversarial case *and* on this workload;
``first_mismatch`` is then ``null``, else the first case (or ``workload <name>``) that
differed with the expected and returned values. Times are ``null`` when the size was
``skipped`` (its reason: a smaller size was already slower than the limit, or the run was
``--check-only``). ``peak_mem_mb`` is ``null`` where it cannot be measured.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["FORMAT", "Record", "Report", "pivot", "plot", "table", "validate", "write_json"]

FORMAT = "npfrcnn-bench/1"


@dataclass
class Record:
    impl: str
    op: str
    semantics: str
    workload: str
    params: str
    size: int
    exact: bool
    first_mismatch: str | None
    median_ms: float | None
    p10_ms: float | None
    p90_ms: float | None
    first_call_ms: float | None
    repeats: int
    threads: int
    device: str
    timer: str
    peak_mem_mb: float | None = None
    skipped: str | None = None
    machine: str = ""
    versions: dict[str, str] = field(default_factory=dict)


@dataclass
class Report:
    op: str
    device: str
    command: str
    revision: str
    machine: dict[str, Any]
    versions: dict[str, str]
    settings: dict[str, Any]
    gate: dict[str, dict[str, Any]]
    records: list[Record]
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Report:
        """The report a ``--json`` file holds (check it with :func:`validate` first)."""
        fields = {k: obj[k] for k in ("op", "device", "command", "revision", "machine",
                                      "versions", "settings", "gate", "notes")}
        return cls(**fields, records=[Record(**r) for r in obj["records"]])

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": FORMAT}
        out.update({k: v for k, v in asdict(self).items() if k != "records"})
        out["records"] = [asdict(r) for r in self.records]
        return out


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 0.1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def table(report: Report) -> str:
    """The Markdown table of a report, then each inexact implementation's first mismatch."""
    rows = [
        "| implementation | semantics | workload | params | size | exact | median ms "
        "| p10-p90 ms | first call ms | threads | peak MiB |",
        "|---|---|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    order = {name: k for k, name in enumerate(dict.fromkeys(r.impl for r in report.records))}
    records = sorted(
        report.records, key=lambda r: (r.workload.startswith("synthetic"), r.workload, r.size,
                                       order[r.impl])
    )
    for r in records:
        exact = "exact" if r.exact else "**NO**"
        if r.skipped:
            spread = r.skipped
        else:
            spread = f"{_ms(r.p10_ms)}-{_ms(r.p90_ms)}"
        peak = "-" if r.peak_mem_mb is None else f"{r.peak_mem_mb:.1f}"
        rows.append(
            f"| {r.impl} | {r.semantics} | {r.workload} | {r.params} | {r.size:,} | {exact} | "
            f"{_ms(r.median_ms)} | {spread} | {_ms(r.first_call_ms)} | {r.threads} | {peak} |"
        )
    out = "\n".join(rows)
    bad = {}
    for r in report.records:
        if not r.exact and r.impl not in bad:
            bad[r.impl] = r.first_mismatch
    if bad:
        out += "\n\nNot exact (still timed):\n" + "\n".join(
            f"* {impl}: {msg}" for impl, msg in bad.items()
        )
    return out


def pivot(report: Report) -> str:
    """Median ms per workload and size (rows) and implementation (columns); ``NOT EXACT``
    marks an implementation that differs from its reference, ``-`` a skipped size."""
    keys = list(dict.fromkeys((r.impl, r.semantics) for r in report.records))
    exact = {k: all(r.exact for r in report.records if (r.impl, r.semantics) == k)
             for k in keys}
    head = [f"{i} ({s})" + ("" if exact[(i, s)] else " NOT EXACT") for i, s in keys]
    rows = [
        "| workload | size | " + " | ".join(head) + " |",
        "|---|---:|" + "---:|" * len(keys),
    ]
    cells: dict[tuple[str, int], dict[tuple[str, str], str]] = {}
    for r in report.records:
        cells.setdefault((r.workload, r.size), {})[(r.impl, r.semantics)] = _ms(r.median_ms)
    order = sorted(cells, key=lambda k: (not k[0].startswith("synthetic"), k[0], k[1]))
    for w, n in order:
        rows.append(f"| {w} | {n:,} | " + " | ".join(cells[(w, n)].get(k, "-") for k in keys)
                    + " |")
    return "\n".join(rows)


def write_json(report: Report, path: str | os.PathLike[str]) -> None:
    from npfrcnn._io import atomic_write

    with atomic_write(path, "w") as f:
        json.dump(report.to_json(), f, indent=1, allow_nan=False)
        f.write("\n")


# --------------------------------------------------------------------------------------------
# Validation (a schema check of our own: no extra dependency)
# --------------------------------------------------------------------------------------------

_TOP = {
    "format": str, "op": str, "device": str, "command": str, "revision": str, "machine": dict,
    "versions": dict, "settings": dict, "gate": dict, "notes": list, "records": list,
}
_RECORD: dict[str, tuple[type, ...]] = {
    "impl": (str,), "op": (str,), "semantics": (str,), "workload": (str,), "params": (str,),
    "size": (int,),
    "exact": (bool,), "first_mismatch": (str, type(None)), "median_ms": (float, type(None)),
    "p10_ms": (float, type(None)), "p90_ms": (float, type(None)),
    "first_call_ms": (float, type(None)), "repeats": (int,), "threads": (int,),
    "device": (str,), "timer": (str,), "peak_mem_mb": (float, type(None)),
    "skipped": (str, type(None)), "machine": (str,), "versions": (dict,),
}


def validate(obj: Any) -> list[str]:
    """Problems with a report's JSON form (an empty list when it is valid)."""
    if not isinstance(obj, dict):
        return ["the report must be a JSON object"]
    problems = []
    for key, kind in _TOP.items():
        if key not in obj:
            problems.append(f"missing {key!r}")
        elif not isinstance(obj[key], kind):
            problems.append(f"{key!r} must be a {kind.__name__}")
    if obj.get("format") != FORMAT:
        problems.append(f"format must be {FORMAT!r}, got {obj.get('format')!r}")
    if obj.get("device") not in ("cpu", "cuda"):
        problems.append(f"device must be 'cpu' or 'cuda', got {obj.get('device')!r}")
    for i, rec in enumerate(obj.get("records") or []):
        if not isinstance(rec, dict):
            problems.append(f"records[{i}] must be an object")
            continue
        for key, kinds in _RECORD.items():
            if key not in rec:
                problems.append(f"records[{i}]: missing {key!r}")
                continue
            v = rec[key]
            ok = isinstance(v, kinds) and not (isinstance(v, bool) and bool not in kinds)
            if float in kinds and isinstance(v, int) and not isinstance(v, bool):
                ok = True  # JSON has one number type
            if not ok:
                problems.append(f"records[{i}].{key}: {v!r} is not {kinds}")
        extra = set(rec) - set(_RECORD)
        if extra:
            problems.append(f"records[{i}]: unknown keys {sorted(extra)}")
        if rec.get("exact") is True and rec.get("first_mismatch") is not None:
            problems.append(f"records[{i}]: exact but with a first_mismatch")
        if rec.get("exact") is False and not rec.get("first_mismatch"):
            problems.append(f"records[{i}]: not exact but no first_mismatch")
        times = [rec.get(k) for k in ("p10_ms", "median_ms", "p90_ms")]
        if rec.get("skipped") is None:
            if any(t is None for t in times):
                problems.append(f"records[{i}]: timed but a time is null")
            elif not all(isinstance(t, (int, float)) and math.isfinite(t) and t >= 0
                         for t in times):
                problems.append(f"records[{i}]: times must be finite and >= 0")
            elif not float(times[0] or 0) <= float(times[1] or 0) <= float(times[2] or 0):
                problems.append(f"records[{i}]: p10 <= median <= p90 does not hold")
        elif any(t is not None for t in times):
            problems.append(f"records[{i}]: skipped but timed")
    return problems


# --------------------------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------------------------


def plot(report: Report, path: str | os.PathLike[str], title: str | None = None) -> None:
    """A log-log chart of median time against size, one line per implementation (synthetic
    sweep; recorded workloads as separate markers), p10-p90 as error bars. Needs matplotlib
    (the ``bench`` extra). Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from npfrcnn._io import atomic_write

    fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=110)
    impls = list(dict.fromkeys((r.impl, r.semantics) for r in report.records))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, key in enumerate(impls):
        color = colors[k % len(colors)]
        mine = [r for r in report.records if (r.impl, r.semantics) == key and r.median_ms]
        exact = all(r.exact for r in report.records if (r.impl, r.semantics) == key)
        label = f"{key[0]} ({key[1]})" + ("" if exact else " NOT EXACT")
        synth = sorted((r for r in mine if r.workload.startswith("synthetic")),
                       key=lambda r: r.size)
        for name in dict.fromkeys(r.workload for r in synth):
            line = [r for r in synth if r.workload == name]
            xs = [r.size for r in line]
            ys = [r.median_ms or 0.0 for r in line]
            lo = [max(y - (r.p10_ms or y), 0.0) for y, r in zip(ys, line, strict=True)]
            hi = [max((r.p90_ms or y) - y, 0.0) for y, r in zip(ys, line, strict=True)]
            ax.errorbar(xs, ys, yerr=[lo, hi], color=color, marker="o", ms=4, capsize=2,
                        linestyle="-" if exact else "--", label=label)
            label = "_nolegend_"
        for r in (r for r in mine if not r.workload.startswith("synthetic")):
            ax.plot([r.size], [r.median_ms or 0.0], color=color, marker="*", ms=11,
                    linestyle="none", label=label)
            label = "_nolegend_"
    recorded = [r for r in report.records if r.median_ms and not r.workload.startswith("synth")]
    for name in dict.fromkeys(r.workload for r in recorded):
        top = max((r for r in recorded if r.workload == name), key=lambda r: r.median_ms or 0)
        ax.annotate(name, (top.size, top.median_ms or 0.0), xytext=(6, 4),
                    textcoords="offset points", fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    unit = "RoIs" if report.op in ("roi-align", "roi-pool", "crop-and-resize",
                                   "crop-and-pool") else "boxes"
    ax.set_xlabel(f"{unit} (stars: recorded from a model run)")
    ax.set_ylabel("median time per call (ms)")
    gpu = report.machine.get("gpu")
    where = gpu if report.device == "cuda" and gpu else report.machine.get("cpu", "")
    ax.set_title(title or f"npfrcnn bench {report.op} ({report.device}: {where})", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    suffix = Path(path).suffix.lstrip(".") or "png"
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format=suffix)
    plt.close(fig)
