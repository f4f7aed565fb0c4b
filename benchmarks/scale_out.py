"""Scale-out benchmark: ``npfrcnn detect`` in-process against Dask with 1 and 2 workers.

Each configuration is the real command line (``python -m npfrcnn.cli detect ... -o out.jsonl``)
in a fresh process, on the same synthetic images, with the same weights:

* ``in-process``: no Dask; the process's thread pools sized to ``--threads`` (default: all
  cores);
* ``dask-1``: ``--workers 1`` (a LocalCluster of one worker process with all the cores);
* ``dask-2``: ``--workers 2`` (two worker processes, the cores split between them).

Throughput is images / wall time of the detection loop (the command's own ``Dask: N image(s)
in T s`` line, and for in-process its per-image totals), so cluster start-up and model loading
are reported apart (whole command wall time). The outputs of the three runs must be identical
(checked). The per-task scheduling overhead is the mean round trip of an empty Dask task on the
2-worker cluster (``DaskExecutor.round_trip``).

Models: ``demo`` (the shipped demo model, 320x320 images) and ``r101`` (a seeded random-weight
torchvision ResNet-101 FPN at 800x1333, converted; needs torch).

Usage::

    python benchmarks/scale_out.py --model demo --images 48
    python benchmarks/scale_out.py --model r101 --images 6
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
_REPO = _HERE.parent
sys.path.insert(0, str(_REPO / "tests"))
sys.path.insert(0, str(_HERE))


def _images(folder: Path, n: int, h: int, w: int) -> list[str]:
    from model import synthetic_image
    from PIL import Image

    out = []
    for i in range(n):
        p = folder / f"img_{i:03d}.png"
        Image.fromarray(synthetic_image(h, w, i)).save(p)
        out.append(str(p))
    return out


def _run(name: str, paths: list[str], weights: str, out: Path, extra: list[str],
         threads: int) -> dict[str, Any]:
    env = dict(os.environ)
    if not extra:  # in-process: size this process's pools; the workers size their own
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
            env[var] = str(threads)
    cmd = [sys.executable, "-m", "npfrcnn.cli", "detect", *paths, "--weights", weights,
           "-o", str(out), *extra]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=_REPO)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"{name} failed:\n{p.stderr}")
    m = re.search(r"(\d+) image\(s\) (?:processed )?in ([0-9.]+) s", p.stderr)
    if not m:
        raise SystemExit(f"{name}: no 'N image(s) in T s' line:\n{p.stderr}")
    loop = float(m.group(2))
    return {"wall_s": wall, "loop_s": loop, "images_per_s": len(paths) / loop}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("demo", "r101"), default="demo")
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch-size", type=int, default=2)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="npfrcnn-scale-") as d:
        folder = Path(d)
        if args.model == "demo":
            weights = str(_REPO / "weights" / "demo.h5")
            size = (320, 320)
        else:
            import torch
            import tv_models

            from npfrcnn.weights.convert_torchvision import torchvision_to_hdf5

            tv = tv_models.build("r101", small=False, seed=0)
            torch.save(tv.state_dict(), folder / "m.pth")
            del tv
            weights = str(folder / "m.h5")
            torchvision_to_hdf5(folder / "m.pth", weights, "torchvision-r101-fpn")
            size = (800, 1333)
        paths = _images(folder, args.images, *size)
        res: dict[str, Any] = {}
        outs = {}
        for name, extra in (("in-process", []), ("dask-1", ["--workers", "1"]),
                            ("dask-2", ["--workers", "2"])):
            print(f"{name} ...", file=sys.stderr, flush=True)
            outs[name] = folder / f"{name}.jsonl"
            res[name] = _run(name, paths, weights, outs[name],
                             extra + (["--batch-size", str(args.batch_size)] if extra else []),
                             args.threads)

        def strip(line: str) -> dict[str, Any]:
            r = json.loads(line)
            r.pop("timings", None)
            return r

        same = all(
            [strip(x) for x in outs[n].read_text().splitlines()]
            == [strip(x) for x in outs["in-process"].read_text().splitlines()]
            for n in ("dask-1", "dask-2")
        )
        from npfrcnn.distributed import DaskExecutor

        with DaskExecutor(weights, workers=2) as ex:
            rt = ex.round_trip(50)
    base = res["in-process"]["images_per_s"]
    print(f"\n{args.model}: {args.images} images {size[0]}x{size[1]}, {os.cpu_count()} cores, "
          f"batch size {args.batch_size}; outputs identical: {same}")
    print("| run | images/s | vs in-process | detection loop, s | whole command, s |")
    print("|---|---:|---:|---:|---:|")
    for name, r in res.items():
        print(f"| {name} | {r['images_per_s']:.2f} | {r['images_per_s'] / base:.2f}x | "
              f"{r['loop_s']:.1f} | {r['wall_s']:.1f} |")
    print(f"\nempty-task round trip on the 2-worker LocalCluster: {rt * 1e3:.1f} ms")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
