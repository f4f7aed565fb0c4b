"""``npfrcnn`` subcommands for data, training and evaluation: ``synth``, ``train``, ``eval``,
``demo``. :func:`register` adds them to the main parser (:mod:`npfrcnn.cli`).

Every command follows the main CLI's conventions: results on stdout or in files written
atomically, logs and progress on stderr, exit status 0 ok, 2 set-up or usage error, 130
interrupted. ``train`` (and ``eval --tf``) need TensorFlow (``pip install npfrcnn[train]``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["register", "default_weights", "DEFAULT_WEIGHTS"]

#: The shipped demo model, used by ``detect`` and ``demo`` when no ``--weights`` is given.
DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "demo.h5"


def default_weights() -> str | None:
    """Path of the shipped demo weights, or None when they are not installed."""
    for p in (DEFAULT_WEIGHTS, Path(__file__).resolve().parent / "weights" / "demo.h5"):
        if p.is_file():
            return str(p)
    try:
        import npfrcnn.weights as w

        p = Path(w.__file__).resolve().parent / "demo.h5"
        if p.is_file():
            return str(p)
    except ImportError:  # pragma: no cover
        pass
    return None


def _atomic_json(path: str | Path, obj: Any) -> None:
    from npfrcnn._io import atomic_write

    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def _read(args: argparse.Namespace) -> Any:
    from npfrcnn.data import read_dataset

    kwargs: dict[str, Any] = {}
    if args.format == "wheat" and getattr(args, "classes_from_source", False):
        kwargs["classes_from_source"] = True
    return read_dataset(args.data, args.format, **kwargs)


# synth ----------------------------------------------------------------------------------------


def cmd_synth(args: argparse.Namespace, log: Any) -> int:
    from npfrcnn.data import make_synthetic

    if args.n < 1 or args.size < 32:
        log.error("--n must be >= 1 and --size >= 32")
        return 2
    make_synthetic(args.out, args.n, args.seed, size=args.size, layouts=tuple(args.layouts))
    log.info(f"wrote {args.n} synthetic images (seed {args.seed}) to {args.out}")
    return 0


# train ----------------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace, log: Any) -> int:
    from npfrcnn.data import DataError

    try:
        from npfrcnn.train import TrainConfig, small_config, train
    except ImportError as e:  # pragma: no cover - TF missing
        log.error(f"training needs TensorFlow: pip install 'npfrcnn[train]' ({e})")
        return 2
    if args.profile != "workshop":
        log.error(f"--profile: only 'workshop' can be trained, got {args.profile!r}")
        return 2
    try:
        ds = _read(args)
    except (DataError, ValueError) as e:
        log.error(str(e))
        return 2
    if len(ds.classes) == 0:
        log.error("the dataset has no classes")
        return 2
    try:
        config = small_config(len(ds.classes), depth=args.depth, width=args.width,
                              output_stride=args.output_stride,
                              anchor_base_size=args.anchor_base,
                              anchor_scales=args.anchor_scales,
                              anchor_ratios=args.anchor_ratios)
        tc = TrainConfig(
            steps=args.steps, learning_rate=args.lr, seed=args.seed,
            checkpoint_every=args.checkpoint_every,
            warmup=min(200, max(1, args.steps // 10)), anchor_border=args.anchor_border,
        )
    except ValueError as e:
        log.error(str(e))
        return 2
    given = getattr(args, "argv", sys.argv[1:])
    command = (
        "npfrcnn " + " ".join(shlex.quote(a) for a in given)
        if args.command_line is None
        else args.command_line
    )
    log.info(
        f"training ResNet-{config.depth} (width {args.width}) on {len(ds)} images, "
        f"{len(ds.classes)} classes {ds.classes}, {args.steps} steps"
    )
    try:
        result = train(ds, args.out, config=config, train_config=tc, resume=args.resume,
                       command=command)
    except (FileNotFoundError, ValueError, FloatingPointError) as e:
        log.error(str(e))
        return 2
    except KeyboardInterrupt:
        log.error("interrupted; continue with --resume (the last checkpoint is kept)")
        return 130
    log.info(f"wrote {result['out']} after {result['steps']} steps")
    return 0


# eval -----------------------------------------------------------------------------------------


def evaluate_model(
    weights: str, dataset: Any, *, use_tf: bool = False, backend: str = "cpu"
) -> dict[str, Any]:
    """Detect on every sample of ``dataset`` and compute COCO metrics and VOC AP.

    ``use_tf`` runs the same weights through the TensorFlow reference network instead of
    npfrcnn's NumPy model. Returns ``{"coco": {...}, "voc": {"mAP", "AP_per_class"}, ...}``.
    """
    from npfrcnn.data import load_image
    from npfrcnn.evaluate import coco_metrics, voc_metrics
    from npfrcnn.weights.hdf5 import read

    wf = read(weights)
    missing = [c for c in dataset.classes if c not in wf.classes]
    if missing:
        raise ValueError(
            f"the dataset's classes {missing} are not classes of {weights} ({wf.classes}); "
            "evaluate a model trained on these classes"
        )
    # Dataset class id -> model class id, by name (readers may order classes differently).
    to_model = np.asarray([wf.classes.index(c) for c in dataset.classes], dtype=np.int64)
    if use_tf:
        from npfrcnn.config import FPNConfig
        from npfrcnn.weights.tf_reference import TFReference

        if isinstance(wf.config, FPNConfig):
            raise ValueError(
                f"{weights} holds a {wf.config.name} model; the TensorFlow reference (--tf) runs "
                "the C4 (workshop) models only: evaluate it without --tf"
            )

        ref = TFReference(wf.config, wf.tensors)

        def run(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            out = ref.run(image)
            return out["boxes"], out["labels"], out["probs"]
    else:
        from npfrcnn.model import FasterRCNN

        model = FasterRCNN(wf.config, wf.classes, wf.tensors, backend=backend)

        def run(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            d = model.detect(image)
            return d.boxes, d.labels, d.scores

    gts, dets = [], []
    for s in dataset.samples:
        boxes, labels, scores = run(load_image(s.path))
        gts.append({"boxes": s.boxes, "classes": to_model[s.classes]})
        dets.append({"boxes": np.asarray(boxes, np.float64).reshape(-1, 4),
                     "scores": np.asarray(scores, np.float64),
                     "classes": np.asarray(labels, np.int64)})
    coco = coco_metrics(gts, dets).as_dict()
    voc = voc_metrics(gts, dets, plus_one=False)
    voc_dict = _voc_dict(voc, wf.classes)
    return {"weights": str(weights), "engine": "tensorflow" if use_tf else f"npfrcnn-{backend}",
            "images": len(dataset), "coco": coco, "voc": voc_dict}


def _voc_dict(voc: Any, classes: list[str]) -> dict[str, Any]:
    """``{"mAP", "AP_per_class": {name: AP}}`` from :class:`npfrcnn.evaluate.VocMetrics`."""
    per = {
        (classes[c] if 0 <= c < len(classes) else str(c)): float(a)
        for c, a in sorted(voc.ap.items())
    }
    return {"mAP": float(voc.mean_ap), "AP_per_class": per}


def cmd_eval(args: argparse.Namespace, log: Any) -> int:
    from npfrcnn.data import DataError

    weights = args.weights or default_weights()
    if weights is None:
        log.error("--weights is required (no shipped demo weights found)")
        return 2
    try:
        ds = _read(args)
    except (DataError, ValueError) as e:
        log.error(str(e))
        return 2
    try:
        result = evaluate_model(weights, ds, use_tf=args.tf, backend=args.backend)
    except (DataError, ValueError, OSError) as e:
        log.error(str(e))
        return 2
    result["data"] = str(args.data)
    c, v = result["coco"], result["voc"]
    print(f"{result['engine']} on {result['images']} images of {args.data}")
    for k, val in c.items():
        print(f"  COCO {k:<8} {val:.4f}")
    print(f"  VOC mAP@0.5  {v['mAP']:.4f}  " + "  ".join(
        f"{k} {a:.4f}" for k, a in v["AP_per_class"].items()))
    if args.json:
        _atomic_json(args.json, result)
        log.info(f"wrote {args.json}")
    return 0


# demo -----------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace, log: Any) -> int:
    from PIL import Image, ImageDraw

    from npfrcnn.data import synthetic_sample
    from npfrcnn.model import FasterRCNN

    weights = args.weights or default_weights()
    if weights is None:
        log.error("no demo weights found (weights/demo.h5); pass --weights")
        return 2
    model = FasterRCNN.from_hdf5(weights)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    colours = [(255, 255, 0), (255, 0, 255), (0, 255, 255), (255, 128, 0)]
    results = []
    for i in range(args.n):
        image, _, _ = synthetic_sample(args.seed, i)
        dets = model.detect(image, min_prob=args.min_prob)
        scale = 3
        im = Image.fromarray(image).resize((image.shape[1] * scale, image.shape[0] * scale),
                                           Image.Resampling.NEAREST)
        draw = ImageDraw.Draw(im)
        items = []
        for b, lab, sc, name in zip(dets.boxes.tolist(), dets.labels.tolist(),
                                    dets.scores.tolist(), dets.class_names, strict=True):
            col = colours[int(lab) % len(colours)]
            draw.rectangle([v * scale for v in b], outline=col, width=2)
            draw.text((b[0] * scale + 3, b[1] * scale + 2), f"{name} {sc:.2f}", fill=col)
            items.append({"box": [round(v, 2) for v in b], "label": name,
                          "class_id": int(lab), "score": round(float(sc), 4)})
        name = f"demo_{i}.png"
        im.save(out / name)
        results.append({
            "image": name, "seed": args.seed, "index": i, "width": int(image.shape[1]),
            "height": int(image.shape[0]), "drawn_scale": scale, "detections": items,
        })
        log.info(f"{out / name}: {len(items)} detections " + ", ".join(
            f"{d['label']} {d['score']:.2f}" for d in items))
    _atomic_json(out / "detections.json", results)
    log.info(f"wrote {args.n} images and {out / 'detections.json'} (weights {weights})")
    return 0


# Parser -------------------------------------------------------------------------------------


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (v > 0 and np.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def _float_list(text: str) -> tuple[float, ...]:
    """``"0.5,1,2"`` -> ``(0.5, 1.0, 2.0)``: positive numbers separated by commas."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}")
    return tuple(_positive_float(p) for p in parts)


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="DIR", help="dataset folder")
    p.add_argument("--format", required=True, choices=("wheat", "coco"),
                   help="wheat: DIR/train.csv + DIR/train/*.jpg; coco: DIR/annotations.json")
    p.add_argument("--classes-from-source", action="store_true",
                   help="wheat layout: the source column names the class (synthetic data)")


def register(sub: Any) -> None:
    """Add ``synth``, ``train``, ``eval`` and ``demo`` to ``sub`` (from ``add_subparsers``)."""
    s = sub.add_parser("synth", help="write a synthetic dataset (wheat and COCO layouts)",
                       description="Deterministic synthetic images of 3 shape classes.")
    s.add_argument("--out", required=True, metavar="DIR")
    s.add_argument("--n", type=int, default=200, help="images (default 200)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    s.add_argument("--layouts", nargs="+", default=["wheat", "coco"], choices=("wheat", "coco"))
    s.set_defaults(func=cmd_synth)

    t = sub.add_parser(
        "train", help="train a model from scratch (needs TensorFlow: npfrcnn[train])",
        description="Train the workshop network end to end with npfrcnn's targets and losses "
        "and export an npfrcnn HDF5 file. A checkpoint OUT.ckpt.npz is written every "
        "--checkpoint-every steps; --resume continues from it.",
    )
    _data_args(t)
    t.add_argument("--out", required=True, metavar="MODEL.h5")
    t.add_argument("--profile", default="workshop", help="model profile (workshop)")
    t.add_argument("--depth", type=int, default=14,
                   help="ResNet depth: 50/101/152 or 12u+2 (14 = one unit per block; default)")
    t.add_argument("--width", type=int, default=16,
                   help="block1 bottleneck width W (blocks: W, 2W, 4W, 4W; default 16)")
    t.add_argument("--output-stride", type=int, default=16, choices=(8, 16),
                   help="feature stride: 16 (workshop) or 8 (dilated block3, small objects)")
    t.add_argument("--steps", type=int, default=8000, help="steps, one image each (8000)")
    t.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (1e-3)")
    t.add_argument("--seed", type=int, default=0, help="data order / sampling seed")
    t.add_argument("--checkpoint-every", type=int, default=500, metavar="N")
    t.add_argument("--anchor-border", type=float, default=0.0, metavar="PIXELS",
                   help="train anchors straddling the image border by up to PIXELS (default 0, "
                   "Luminoth's; use e.g. 64 on small images)")
    t.add_argument("--anchor-base", type=_positive_float, default=32.0, metavar="PIXELS",
                   help="anchor base size in input pixels (default 32); anchors are base x "
                   "scale, shaped by each ratio")
    t.add_argument("--anchor-scales", type=_float_list, default=(0.5, 1.0, 2.0),
                   metavar="S,S,...", help="anchor scales (default 0.5,1,2: 16, 32, 64 px; "
                   "Kaggle wheat heads on 1,024-px photos: --anchor-base 64 gives 32..128 px)")
    t.add_argument("--anchor-ratios", type=_float_list, default=(0.5, 1.0, 2.0),
                   metavar="R,R,...", help="anchor aspect ratios, height / width (0.5,1,2)")
    t.add_argument("--resume", action="store_true", help="continue from OUT.ckpt.npz")
    t.add_argument("--command-line", default=None, help=argparse.SUPPRESS)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="COCO metrics and VOC AP of a model on a dataset",
                       description="Detect on every image of the dataset; print COCO numbers "
                       "and VOC AP (IoU 0.5, area under the curve); --json writes them.")
    _data_args(e)
    e.add_argument("--weights", metavar="FILE.h5", help="default: the shipped demo model")
    e.add_argument("--json", metavar="FILE", help="write the results as JSON (atomically)")
    e.add_argument("--tf", action="store_true",
                   help="run the TensorFlow reference network instead (needs TensorFlow)")
    e.add_argument("--backend", default="cpu", choices=("cpu", "numpy"))
    e.set_defaults(func=cmd_eval)

    d = sub.add_parser("demo", help="detect on a few synthetic images with the demo model",
                       description="Generate synthetic images (npfrcnn.data.synthetic_sample), "
                       "detect with the shipped demo weights, write the drawn results (PNGs "
                       "enlarged 3x) and detections.json (boxes in the generated image's "
                       "pixels) to --out.")
    d.add_argument("--out", default="npfrcnn-demo", metavar="DIR")
    d.add_argument("--weights", metavar="FILE.h5", help="default: the shipped demo model")
    d.add_argument("--n", type=int, default=4, help="images (default 4)")
    d.add_argument("--seed", type=int, default=2024, help="generator seed (default 2024)")
    d.add_argument("--min-prob", type=float, default=0.5, help="score threshold (0.5)")
    d.set_defaults(func=cmd_demo)
