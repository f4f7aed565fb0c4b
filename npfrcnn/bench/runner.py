"""One benchmark run: implementations x workloads, correctness first, then timing.

``plan(config)`` checks everything that can be wrong with the request (op, semantics, ``--impl``
imports, device, the CUDA simulator, sizes, files) and raises :class:`UsageError` before any work
is done; ``execute(plan)`` then runs every implementation:

1. calls it once on the smallest workload, timed: that first call carries the one-off costs
   (Numba compilation or a cache load, TF start-up, CUDA context and module loads). These first
   calls are made for all implementations before anything else runs, so that none finds its
   kernels already compiled by another one, a reference or the suite;
2. runs the adversarial suite against the reference of its semantics (:mod:`.gate`);
3. times it on every workload, smallest first (:func:`.timing.measure`), and compares each
   workload's result with the reference too. Once a warm-up call takes longer than
   ``slow_s``, that size gets ``SLOW_REPEATS`` runs and larger ones are skipped (recorded as
   such), so a slow reference does not hold the sweep hostage.

An implementation that is not exact is still timed; its records say where it first differs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from npfrcnn.bench import gate, impls, specs, timing, workloads
from npfrcnn.bench.arrays import KINDS, default_kind, synchronize, to_numpy
from npfrcnn.bench.impls import Impl, UsageError
from npfrcnn.bench.report import Record, Report
from npfrcnn.bench.workloads import RoiConfig, Workload

__all__ = ["DEFAULT_SIZES", "BenchConfig", "Plan", "execute", "plan", "run"]

DEFAULT_SIZES = {
    "nms": [1000, 3000, 10000, 30000, 100000, 200000],
    "batched-nms": [1000, 3000, 10000, 30000, 100000, 200000],
    "soft-nms": [1000, 3000, 10000, 30000],
    "crop-and-resize": [100, 300, 1000, 3000],
    "crop-and-pool": [100, 300, 1000, 3000],
    "roi-align": [100, 300, 1000, 3000],
    "roi-pool": [100, 300, 1000, 3000],
}


@dataclass
class BenchConfig:
    """What to run (the CLI's options; ``None`` means the default)."""

    op: str
    impls: list[str] = field(default_factory=list)  # user implementations, MODULE:FUNCTION
    semantics: str | None = None  # their convention and reference; default: the op's first
    inputs: str | None = None  # their array kind; default: numpy (cpu), torch or numba (cuda)
    builtins: list[str] | None = None  # None: every available one; []: none
    sizes: list[int] | None = None  # synthetic sizes; None: DEFAULT_SIZES[op]
    layouts: list[str] = field(default_factory=lambda: ["clustered"])  # [] for no synthetic
    workload_files: list[str] | None = None  # None: the shipped files
    device: str = "cpu"
    repeats: int | None = None  # None: 7 on the CPU, 50 on CUDA
    warmup: int = 1
    threads: int | None = None  # None: all of Numba's threads (the machine's cores)
    iou_threshold: float = 0.7
    roi: RoiConfig = field(default_factory=RoiConfig)
    slow_s: float = 2.0
    check_only: bool = False
    seed: int = 0
    command: str = ""


@dataclass
class Plan:
    config: BenchConfig
    impls: list[Impl]
    workloads: list[Workload]
    notes: list[str]
    threads: int
    repeats: int


def _check_config(c: BenchConfig) -> specs.OpSpec:
    try:
        spec = specs.get(c.op)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if c.semantics is not None and c.semantics not in spec.semantics:
        raise UsageError(
            f"--semantics {c.semantics}: {c.op} has only {', '.join(spec.semantics)} semantics"
        )
    if c.device not in ("cpu", "cuda"):
        raise UsageError(f"--device must be cpu or cuda, got {c.device!r}")
    if c.inputs is not None and c.inputs not in KINDS:
        raise UsageError(f"--inputs must be one of {', '.join(KINDS)}, got {c.inputs!r}")
    if c.device == "cpu" and c.inputs == "numba":
        raise UsageError("--inputs numba holds CUDA device arrays: use it with --device cuda")
    if c.device == "cuda" and c.inputs == "numpy":
        raise UsageError(
            "--device cuda times device-resident inputs: pass --inputs torch, tensorflow or "
            "numba (or leave --inputs out)"
        )
    if c.device == "cuda" and timing.simulated() and not c.check_only:
        raise UsageError(
            "--device cuda: refusing to time under numba's CUDA simulator "
            "(NUMBA_ENABLE_CUDASIM=1), whose timings mean nothing; unset it on a machine with "
            "an NVIDIA GPU, or pass --check-only to run the correctness suite alone"
        )
    if c.repeats is not None and c.repeats < 1:
        raise UsageError(f"--repeats must be >= 1, got {c.repeats}")
    if c.warmup < 1:
        raise UsageError(f"--warmup must be >= 1, got {c.warmup}")
    if c.threads is not None and c.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {c.threads}")
    if not 0.0 <= c.iou_threshold <= 1.0:
        raise UsageError(f"--iou-threshold must be in [0, 1], got {c.iou_threshold}")
    if not c.slow_s > 0:
        raise UsageError(f"--max-seconds must be > 0, got {c.slow_s}")
    for n in c.sizes or []:
        if n < 1:
            raise UsageError(f"--sizes must be positive, got {n}")
    for layout in c.layouts:
        try:
            workloads.check_layout(c.op, layout)
        except ValueError as e:
            raise UsageError(f"--synthetic: {e}") from None
    if c.builtins:
        unknown = [b for b in c.builtins if b not in impls.BUILTINS
                   and b not in impls.BUILTIN_NAMES]
        if unknown:
            raise UsageError(
                f"--builtins: unknown {', '.join(unknown)}; choose from "
                f"{', '.join([*impls.BUILTINS, *impls.BUILTIN_NAMES])} or none"
            )
    return spec


def plan(c: BenchConfig) -> Plan:
    """Check the request and build the implementations and workloads (no timing yet)."""
    spec = _check_config(c)
    threads = c.threads or timing.max_threads()
    timing.set_threads(threads)
    semantics = c.semantics or spec.semantics[0]
    kind = c.inputs or default_kind(c.device)
    users = [impls.user_impl(t, c.op, semantics, c.device, kind, threads) for t in c.impls]
    files = workloads.shipped() if c.workload_files is None else [
        Path(f) for f in c.workload_files
    ]
    wls: list[Workload] = []
    for f in files:
        try:
            w = workloads.from_file(c.op, f)
        except ValueError as e:
            raise UsageError(f"--workload: {e}") from None
        if w is not None:
            wls.append(w)
    for layout in c.layouts:
        for n in c.sizes or DEFAULT_SIZES[c.op]:
            wls.append(workloads.synthetic(c.op, n, layout, seed=c.seed,
                                           iou_threshold=c.iou_threshold, roi=c.roi))
    if not wls:
        raise UsageError(
            f"nothing to run {c.op} on: no synthetic layout and no workload file with "
            f"{c.op} inputs"
        )
    wls.sort(key=lambda w: (w.size, w.recorded))
    found, notes = impls.builtins(c.op, c.device, threads, c.builtins)
    all_impls = found + users
    if not all_impls:
        raise UsageError(
            f"no implementation of {c.op} to run on {c.device}"
            + (f" ({'; '.join(notes)})" if notes else "")
        )
    repeats = c.repeats or (50 if c.device == "cuda" else 7)
    return Plan(c, all_impls, wls, notes, threads, repeats)


def _cold_call(impl: Impl, w: Workload) -> tuple[float, Any, Callable[[], Any] | None, str | None]:
    """The first call: ``(ms, result, bound call, error)``."""
    try:
        call = impl.bind(w.inputs)
        synchronize(impl.device)
        t0 = time.perf_counter()
        raw = call()
        synchronize(impl.device)
        return (time.perf_counter() - t0) * 1e3, raw, call, None
    except Exception as e:
        return 0.0, None, None, f"raised {type(e).__name__}: {e}"


def execute(p: Plan, log: Callable[[str], None] = lambda m: None) -> Report:
    """Run the plan (module docstring) and return the report."""
    c = p.config
    info = timing.machine(c.device)
    line = timing.machine_line(info)
    vers = timing.versions()
    unit = specs.get(c.op).unit
    refs: dict[tuple[str, str, int], Any] = {}
    gate_cache: dict[tuple[str, str], Any] = {}
    gates: dict[str, dict[str, Any]] = {}
    records: list[Record] = []
    slow_ms = c.slow_s * 1e3

    def reference(semantics: str, w: Workload) -> Any:
        key = (semantics, w.name, w.size)
        if key not in refs:
            refs[key] = specs.reference(c.op, semantics, w.inputs, backend="cpu")
        return refs[key]

    first_w = p.workloads[0]
    # Every first call before anything else runs, so that none of them finds kernels already
    # compiled (or loaded) by another implementation, a reference or the suite.
    cold = {id(impl): _cold_call(impl, first_w) for impl in p.impls}
    for impl in p.impls:
        cold_ms, cold_raw, cold_call, cold_err = cold.pop(id(impl))
        result = gate.run(impl, expected=gate_cache)
        gates[f"{impl.name} ({impl.semantics})"] = {
            "exact": result.exact, "cases": result.cases, "failed": result.failed,
            "first_mismatch": result.first_mismatch,
        }
        log(f"{impl.name} ({impl.semantics}): {result.summary()}")

        def record(w: Workload, t: timing.Timing | None, msg: str | None,
                   skipped: str | None = None, impl: Impl = impl,
                   result: gate.GateResult = result) -> Record:
            timed = t if skipped is None else None
            return Record(
                impl=impl.name, op=c.op, semantics=impl.semantics, workload=w.name,
                params=w.params, size=w.size, exact=result.exact and msg is None,
                first_mismatch=result.first_mismatch or (
                    f"workload {w.name} ({w.size:,} {unit}): {msg}" if msg else None
                ),
                median_ms=timed.median_ms if timed else None,
                p10_ms=timed.p10_ms if timed else None,
                p90_ms=timed.p90_ms if timed else None,
                first_call_ms=t.first_ms if t else None,
                repeats=len(timed.runs_ms) if timed else 0, threads=impl.threads,
                device=c.device, timer=timed.timer if timed else "-",
                peak_mem_mb=timed.peak_mem_mb if timed else None, skipped=skipped,
                machine=line, versions=vers,
            )

        limit: int | None = None  # sizes above this are skipped (too slow)
        for w in p.workloads:
            if limit is not None and w.size > limit:
                why = f"skipped: slower than {c.slow_s:g} s at {limit:,}"
                records.append(record(w, None, None, why))
                continue
            t: timing.Timing | None = None
            raw: Any = None
            err = cold_err if w is first_w else None
            try:
                if err is None and c.check_only:
                    ms, raw, _, err = (
                        (cold_ms, cold_raw, None, None) if w is first_w else _cold_call(impl, w)
                    )
                    t = timing.Timing(ms)
                elif err is None:
                    call = cold_call if w is first_w and cold_call else impl.bind(w.inputs)
                    t, raw = timing.measure(
                        call, device=c.device, repeats=p.repeats, warmup=c.warmup,
                        slow_ms=slow_ms, memory=impl.memory,
                        first=(cold_ms, cold_raw) if w is first_w else None,
                    )
            except Exception as e:  # the implementation failed on this workload
                err, t = f"raised {type(e).__name__}: {e}", None
            msg = err
            if msg is None:
                try:
                    msg = specs.compare(
                        reference(impl.semantics, w), impl.result(to_numpy(raw), w.inputs)
                    )
                except Exception as e:
                    msg = f"raised {type(e).__name__}: {e}"
            raw = None
            if t is None:
                records.append(record(w, None, msg, "raised an error"))
                continue
            if c.check_only:
                records.append(record(w, t, msg, "check-only"))
                if t.first_ms > slow_ms:
                    limit = w.size
                continue
            records.append(record(w, t, msg))
            log(f"{impl.name} {w.name} {w.size:,}: median {t.median_ms:.3f} ms "
                f"({len(t.runs_ms)} runs), first call {t.first_ms:.1f} ms"
                + ("" if msg is None else "  NOT EXACT"))
            if t.slow:
                limit = w.size
        del cold_raw, cold_call
    settings = {
        "repeats": p.repeats, "warmup": c.warmup, "threads": p.threads, "slow_s": c.slow_s,
        "iou_threshold": c.iou_threshold, "layouts": list(c.layouts), "seed": c.seed,
        "check_only": c.check_only, "roi": {
            "map": [c.roi.height, c.roi.width, c.roi.channels], "stride": c.roi.stride,
            "output_size": list(c.roi.output_size), "sampling_ratio": c.roi.sampling_ratio,
            "aligned": c.roi.aligned, "crop_size": list(c.roi.crop_size),
        },
    }
    return Report(c.op, c.device, c.command, timing.git_revision(), info, vers, settings,
                  gates, records, list(p.notes))


def run(config: BenchConfig, log: Callable[[str], None] = lambda m: None) -> Report:
    """``execute(plan(config))``."""
    return execute(plan(config), log)


def inexact_users(report: Report, p: Plan) -> list[str]:
    """The user implementations (``--impl``) that are not exact anywhere in the report."""
    users = {i.name for i in p.impls if not i.builtin}
    return sorted({r.impl for r in report.records if r.impl in users and not r.exact})
