"""``npfrcnn trace`` and ``npfrcnn compare``: find where a port first departs from npfrcnn.

``trace`` writes every stage of every image to one file (:mod:`npfrcnn.trace.schema`);
``compare`` prints one row per stage in pipeline order, names the first stage out of
tolerance, re-runs it on the candidate's inputs to tell rounding from a departure, and can
write a self-contained HTML report. Exit status: 0 every stage within tolerance, 1 some stage
out of tolerance, 2 unusable inputs (a file that is not a trace, traces of different images).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from typing import Any

__all__ = ["register", "cmd_trace", "cmd_compare"]


def register(sub: Any) -> None:
    from npfrcnn.cli import _EXIT_EPILOG, non_negative_float, output_file

    t = sub.add_parser(
        "trace", help="write every stage of every image to a trace file (for compare)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the model on images and write every stage (input, features, RPN, "
        "anchors, proposals, pooled RoIs, head, detections) to one HDF5 file, or .npz with the "
        "same names (schema: npfrcnn.trace.schema; docs/validating-a-port.md).",
        epilog=_EXIT_EPILOG,
    )
    t.add_argument("inputs", nargs="+", metavar="IMAGE", help="image files, folders or globs")
    t.add_argument("--weights", required=True, metavar="W.h5", help="npfrcnn weights file")
    t.add_argument("--out", required=True, metavar="TRACE.h5", type=output_file,
                   help="the trace file (.h5, or .npz)")
    t.add_argument("--backend", choices=("cpu", "numpy"), default="cpu")
    t.add_argument("--no-image", action="store_true",
                   help="do not store the decoded images (smaller file; the report then "
                   "draws on a blank background and the input stage cannot be re-run)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    t.add_argument("-q", "--quiet", action="store_true")
    from npfrcnn.cli import add_dask_arguments

    add_dask_arguments(t)
    t.set_defaults(func=cmd_trace)

    c = sub.add_parser(
        "compare", help="compare two traces stage by stage; name the first departure",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Compare a candidate trace (a port) with a reference trace, stage by stage "
        "in pipeline order: shapes, max abs and relative error, float32 ulps, agreement of the "
        "discrete stages, boxes matched by IoU and label. Names the first stage out of "
        "tolerance; with --weights every stage out of tolerance is re-run by the reference on "
        "the candidate's inputs, which tells rounding from a real departure.",
        epilog="exit status:\n  0    every stage within tolerance\n  1    some stage out of "
        "tolerance\n  2    unusable inputs (not a trace, different images, bad options)\n",
    )
    c.add_argument("reference", metavar="REFERENCE", help="the reference trace (.h5 or .npz)")
    c.add_argument("candidate", metavar="CANDIDATE", help="the candidate trace (.h5 or .npz)")
    c.add_argument("--rtol", type=non_negative_float, default=None,
                   help="tolerance relative to each stage's scale, max |reference| "
                   "(default 1e-4)")
    c.add_argument("--atol", type=non_negative_float, default=None, help="absolute tolerance "
                   "(default 0)")
    c.add_argument("--weights", metavar="W.h5", default=None,
                   help="the reference's weights, to re-run stages on the candidate's inputs "
                   "(default: the file the reference trace was written from, if it is there "
                   "and its sha256 matches)")
    c.add_argument("--no-rerun", action="store_true", help="do not re-run stages")
    c.add_argument("--report", metavar="REPORT.html", type=output_file, default=None,
                   help="write a self-contained HTML report (table, error heatmaps, "
                   "detections drawn)")
    c.add_argument("--json", metavar="FILE.json", type=output_file, default=None,
                   dest="json_out", help="write the comparison as JSON")
    c.add_argument("-q", "--quiet", action="store_true", help="only the verdict lines")
    c.set_defaults(func=cmd_compare)


def cmd_trace(args: argparse.Namespace, log: Any) -> int:
    from npfrcnn.cli import CommandError, expand_inputs, load_weights
    from npfrcnn.image import ImageError, load
    from npfrcnn.trace._npfrcnn import model_meta, trace_image
    from npfrcnn.trace.io import TraceWriter
    from npfrcnn.weights.hdf5 import file_sha256

    paths, problems = expand_inputs(args.inputs)
    if problems:
        raise CommandError("; ".join(problems))
    if not paths:
        raise CommandError("no input images; give image files, folders or glob patterns")
    if os.path.exists(args.out) and not args.overwrite:
        raise CommandError(f"{args.out} exists; pass --overwrite to replace it")
    for p in paths:
        if os.path.exists(args.out) and os.path.samefile(p, args.out):
            raise CommandError(f"--out {args.out} is the input image {p}")
    if not os.path.isfile(args.weights):
        raise CommandError(f"--weights {args.weights}: no such file")
    from npfrcnn.cli import _wants_dask

    if _wants_dask(args):
        return _trace_on_dask(args, log, paths)
    model = load_weights(args.weights, args.backend)
    try:
        meta = model_meta(model, file_sha256(args.weights),
                          weights_path=os.path.abspath(args.weights))
    except ValueError as e:
        raise CommandError(str(e)) from None
    t0 = time.perf_counter()
    with TraceWriter(args.out, meta) as w:
        for i, path in enumerate(paths):
            t = time.perf_counter()
            try:
                image = load(path)
            except ImageError as e:
                raise CommandError(f"{path}: {e}") from None
            trace_image(model, image, w, os.path.basename(path), not args.no_image)
            log.info(f"[{i + 1}/{len(paths)}] {path}: traced in {time.perf_counter() - t:.2f} s")
    size = os.path.getsize(args.out)
    log.info(f"wrote {args.out}: {len(paths)} image{'s' if len(paths) != 1 else ''}, "
             f"{size / 2**20:.1f} MiB, {time.perf_counter() - t0:.1f} s")
    return 0


def _trace_on_dask(args: argparse.Namespace, log: Any, paths: list[str]) -> int:
    """``npfrcnn trace`` on Dask: each worker traces its images into single-image ``.npz``
    traces that come back in input order and are copied into the one trace file here."""
    import contextlib
    import io

    from npfrcnn.cli import CommandError, _ClientModel, _dask_executor, load_weights
    from npfrcnn.distributed import DaskError
    from npfrcnn.trace.io import TraceWriter, read_trace
    from npfrcnn.weights.hdf5 import file_sha256

    load_weights(args.weights, args.backend, lambda w, _: _ClientModel(w))  # checked here first
    extra = {"weights_sha256": file_sha256(args.weights),
             "weights_path": os.path.abspath(args.weights)}
    executor = _dask_executor(args, log)
    t0 = time.perf_counter()
    try:
        results = executor.map("trace", list(enumerate(paths)),
                               {"store_image": not args.no_image})
        with contextlib.ExitStack() as stack:
            writer: TraceWriter | None = None
            for k, res in results:
                if not res.get("ok"):
                    raise CommandError(f"{paths[k]}: {res.get('error')}; no trace was written")
                with read_trace(io.BytesIO(res["npz"])) as part:
                    if writer is None:
                        writer = stack.enter_context(
                            TraceWriter(args.out, dict(part.meta, **extra)))
                    im = part.images[0]
                    dst = writer.image(dict(im.meta, name=os.path.basename(paths[k])))
                    for name in im.names:
                        dst.put(name, im.raw(name))
                log.info(f"[{k + 1}/{len(paths)}] {paths[k]}: traced on "
                         f"{res.get('worker', '?')}")
    except DaskError as e:
        raise CommandError(f"the Dask cluster failed: {e}; no trace was written") from None
    finally:
        executor.close()
    size = os.path.getsize(args.out)
    log.info(f"wrote {args.out}: {len(paths)} image{'s' if len(paths) != 1 else ''}, "
             f"{size / 2**20:.1f} MiB, {time.perf_counter() - t0:.1f} s")
    return 0


def _rerun_model(args: argparse.Namespace, ref: Any, log: Any) -> Any:
    """The model for re-runs: --weights, else the reference trace's own weights file."""
    from npfrcnn.cli import CommandError, load_weights
    from npfrcnn.weights.hdf5 import file_sha256

    if args.no_rerun:
        return None
    want = ref.meta.get("weights_sha256", "")
    path = args.weights
    if path is None:
        path = ref.meta.get("weights_path")
        if not path or not os.path.isfile(path) or (want and file_sha256(path) != want):
            log.info("no --weights: stages out of tolerance are not re-run (give the "
                     "reference's weights to tell rounding from a departure)")
            return None
    elif not os.path.isfile(path):
        raise CommandError(f"--weights {path}: no such file")
    elif want and file_sha256(path) != want:
        raise CommandError(
            f"--weights {path} are not the weights the reference trace was written with "
            f"(sha256 {want[:16]}...); give those"
        )
    model = load_weights(path, "cpu")
    family = "fpn" if model.is_fpn else "c4"
    if family != ref.meta["family"]:
        raise CommandError(f"--weights {path} is a {family} model but the traces are "
                           f"{ref.meta['family']}")
    return model


def cmd_compare(args: argparse.Namespace, log: Any) -> int:
    from npfrcnn.cli import CommandError
    from npfrcnn.trace.compare import (
        DEFAULT_ATOL,
        DEFAULT_RTOL,
        compare_traces,
        format_table,
        verdict,
    )
    from npfrcnn.trace.io import TraceError, read_trace

    rtol = DEFAULT_RTOL if args.rtol is None else args.rtol
    atol = DEFAULT_ATOL if args.atol is None else args.atol
    try:
        ref = read_trace(args.reference)
    except TraceError as e:
        raise CommandError(f"REFERENCE: {e}") from None
    with ref:
        try:
            cand = read_trace(args.candidate)
        except TraceError as e:
            raise CommandError(f"CANDIDATE: {e}") from None
        with cand:
            model = _rerun_model(args, ref, log)
            try:
                result = compare_traces(ref, cand, rtol=rtol, atol=atol, model=model,
                                        heatmaps=args.report is not None)
            except TraceError as e:
                raise CommandError(str(e)) from None
            if args.quiet:
                for im in result.images:
                    print(f"image {im.index}: {verdict(im)}")
            else:
                print(format_table(result))
            if args.report is not None:
                from npfrcnn.trace.report import write_report

                write_report(result, ref, cand, args.report)
                log.info(f"wrote {args.report}")
    if args.json_out is not None:
        from npfrcnn._io import atomic_write

        doc = {
            "reference": result.reference, "candidate": result.candidate, "rtol": rtol,
            "atol": atol, "ok": result.ok, "notes": result.notes,
            "images": [
                {"index": im.index, "name": im.name, "verdict": verdict(im),
                 "first_failure": im.first_failure.stage if im.first_failure else None,
                 "rows": [r.to_dict() for r in im.rows]}
                for im in result.images
            ],
        }
        with atomic_write(args.json_out) as f:
            f.write(json.dumps(doc, indent=1, default=_jsonable))
    return 0 if result.ok else 1


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return list(v)
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    raise TypeError(type(v).__name__)
