"""``npfrcnn`` subcommands for data, training and evaluation: ``synth``, ``train``, ``eval``,
``demo``. :func:`register` adds them to the main parser (:mod:`npfrcnn.cli`).

Every command follows the main CLI's conventions: results on stdout or in files written
atomically, logs and progress on stderr (``-q`` silences both; errors still show), exit status
as :data:`npfrcnn.cli.EXIT_CODES` (0 ok, 2 usage or set-up error: nothing was run, 74 a file
could not be written, 130 interrupted). Every option is checked by its argparse ``type`` before
anything runs or any file or folder is created (a bad value is a usage error); problems with
the data or the weights raise npfrcnn's own errors (``DataError``, ``TrainError``,
``WeightsError``, ``CommandError``), which :func:`npfrcnn.cli.main` prints without a
traceback. ``train`` (and ``eval --tf``) need TensorFlow (``pip install npfrcnn[train]``).

Datasets (``--data``, shared by ``train`` and ``eval``): a folder in the wheat layout
(``DIR/train.csv``), a folder in the COCO layout (``DIR/annotations.json``), or a COCO
annotations file itself (``--data instances_val2017.json --images val2017/``; images are
looked up under ``--images``, default the JSON's folder). ``--format`` is inferred when not
given: a ``.json`` file or a folder with ``annotations.json`` is COCO (also when ``train.csv``
is there too, unless ``--classes-from-source`` asks for the wheat reading), a folder with only
``train.csv`` is wheat.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["register", "default_weights", "DEFAULT_WEIGHTS", "evaluate_model",
           "evaluate_detections", "format_eval"]

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
        json.dump(obj, f, indent=2, sort_keys=True, allow_nan=False)
        f.write("\n")


def _command_error(message: str, usage: bool = False) -> Exception:
    from npfrcnn.cli import CommandError

    return CommandError(message, usage=usage)


def _read(args: argparse.Namespace) -> Any:
    """The dataset ``--data`` (with ``--format``, ``--images``, ``--classes-from-source``)
    names; the rules are in the module docstring."""
    from npfrcnn.data import read_dataset

    data = Path(args.data)
    fmt = args.format
    images = getattr(args, "images", None)
    from_source = getattr(args, "classes_from_source", False)
    if data.is_file():
        if fmt not in (None, "coco"):
            raise _command_error(
                f"--data {args.data} is a file: only a COCO annotations JSON can be given as a "
                f"file, not --format {fmt} (give the wheat dataset's folder)", usage=True)
        if from_source:
            raise _command_error("--classes-from-source is for the wheat layout; a COCO file "
                                 "names its classes in 'categories'", usage=True)
        root = Path(images) if images is not None else (data.parent if str(data.parent) else
                                                        Path("."))
        if not root.is_dir():
            raise _command_error(f"--images {images}: no such folder", usage=True)
        return read_dataset(root, "coco", annotations=data)
    if not data.is_dir():
        raise _command_error(f"--data {args.data}: no such file or folder; give a dataset "
                             "folder or a COCO annotations .json file", usage=True)
    if fmt is None:
        if from_source or not (data / "annotations.json").is_file():
            fmt = "wheat" if (data / "train.csv").is_file() or from_source else None
        else:
            fmt = "coco"
        if fmt is None:
            raise _command_error(
                f"--data {args.data}: neither train.csv (wheat) nor annotations.json (COCO) is "
                "in this folder; give --format, or the COCO JSON file itself", usage=True)
    if fmt == "coco":
        if from_source:
            raise _command_error("--classes-from-source is for the wheat layout (--format "
                                 "wheat); COCO names its classes in 'categories'", usage=True)
        if images is not None:
            if not Path(images).is_dir():
                raise _command_error(f"--images {images}: no such folder", usage=True)
            return read_dataset(images, "coco", annotations=data / "annotations.json")
        return read_dataset(data, "coco")
    if images is not None:
        raise _command_error("--images is for a COCO dataset; the wheat layout's images are "
                             "in DIR/train/", usage=True)
    kwargs: dict[str, Any] = {"classes_from_source": True} if from_source else {}
    return read_dataset(data, "wheat", **kwargs)


Named = list[tuple[str, "str | Path"]]


def _refuse_inputs(outputs: Named, inputs: Named) -> None:
    """``CommandError`` (a usage error) if an output names the same file as an input (by
    device and inode, so a link or another spelling of the path counts too)."""
    from npfrcnn.data import file_key

    keys = {file_key(i): (wi, i) for wi, i in inputs if os.path.exists(i)}
    for wo, o in outputs:
        hit = keys.get(file_key(o)) if os.path.exists(o) else None
        if hit is not None:
            raise _command_error(f"{wo} {o} is {hit[0]} {hit[1]}: writing it would destroy an "
                                 "input; choose another name", usage=True)


def _dataset_inputs(ds: Any) -> Named:
    """The dataset's annotation files and images, named for messages."""
    inputs: Named = [("the dataset's annotations", f) for f in ds.files]
    inputs += [(f"the image of {s.image_id!r}", s.path) for s in ds.samples]
    return inputs


# synth ----------------------------------------------------------------------------------------


def cmd_synth(args: argparse.Namespace, log: Any) -> int:
    from npfrcnn.data import make_synthetic

    make_synthetic(args.out, args.n, args.seed, size=args.size, layouts=tuple(args.layouts))
    log.info(f"wrote {args.n} synthetic images (seed {args.seed}) to {args.out}")
    return 0


# train ----------------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace, log: Any) -> int:
    try:
        from npfrcnn.train import TrainConfig, TrainError, small_config, train
    except ImportError as e:  # pragma: no cover - TF missing
        raise _command_error(
            f"training needs TensorFlow: pip install 'npfrcnn[train]' ({e})") from None
    if args.profile != "workshop":
        raise _command_error(f"--profile: only 'workshop' can be trained, got {args.profile!r}",
                             usage=True)
    ds = _read(args)
    if len(ds.classes) == 0:
        raise _command_error(f"the dataset {args.data} has no classes")
    try:
        config = small_config(len(ds.classes), depth=args.depth, width=args.width,
                              output_stride=args.output_stride,
                              anchor_base_size=args.anchor_base,
                              anchor_scales=args.anchor_scales,
                              anchor_ratios=args.anchor_ratios)
    except TrainError:
        raise
    except ValueError as e:  # the model config's own checks (a combination of options)
        raise _command_error(f"these options give no valid model: {e}", usage=True) from None
    tc = TrainConfig(
        steps=args.steps, learning_rate=args.lr, seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        warmup=min(200, max(1, args.steps // 10)), anchor_border=args.anchor_border,
    )
    metrics = args.metrics if args.metrics is not None else str(args.out) + ".metrics.jsonl"
    given = getattr(args, "argv", sys.argv[1:])
    command = (
        "npfrcnn " + " ".join(shlex.quote(a) for a in given)
        if args.command_line is None
        else args.command_line
    )
    log.info(
        f"training ResNet-{config.depth} (width {args.width}: blocks {list(config.base_depths)}) "
        f"on {len(ds)} images, {len(ds.classes)} classes {ds.classes}, {args.steps} steps; "
        f"metrics in {metrics}"
    )
    try:
        result = train(ds, args.out, config=config, train_config=tc, resume=args.resume,
                       overwrite=args.overwrite, command=command, progress=not args.quiet,
                       metrics=metrics, log_every=args.log_every, log=log.info)
    except KeyboardInterrupt as e:
        ckpt = str(args.out) + ".ckpt.npz"
        log.error(f"interrupted; the last checkpoint {ckpt} is kept: continue with --resume")
        return 128 + int(getattr(e, "signum", 2))
    log.info(f"wrote {result['out']} after {result['steps']} steps")
    return 0


# eval -----------------------------------------------------------------------------------------


def _ground_truth(dataset: Any, to_model: np.ndarray) -> list[dict[str, Any]]:
    """COCO/VOC ground truth of every sample, classes mapped to the model's ids: the regular
    boxes, then the crowd boxes (``iscrowd``; VOC's ``difficult``: neither a hit nor a miss),
    with the annotations' ``area`` where the dataset has it (COCOeval's area ranges use it)."""
    gts = []
    for s in dataset.samples:
        boxes = np.concatenate([s.boxes, s.crowd]).astype(np.float64).reshape(-1, 4)
        crowd_classes = getattr(s, "crowd_classes", np.zeros(0, np.int64))
        if crowd_classes.shape[0] != s.crowd.shape[0]:  # a reader that gives no crowd classes
            crowd_classes = np.zeros(s.crowd.shape[0], np.int64)
        classes = np.concatenate([to_model[s.classes], to_model[crowd_classes]]).astype(np.int64)
        flags = np.zeros(boxes.shape[0], bool)
        flags[s.boxes.shape[0]:] = True
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        area = w * h
        if s.areas is not None and s.areas.shape[0] == s.boxes.shape[0]:
            area[: s.boxes.shape[0]] = s.areas
        if s.crowd_areas is not None and s.crowd_areas.shape[0] == s.crowd.shape[0]:
            area[s.boxes.shape[0]:] = s.crowd_areas
        gts.append({"boxes": boxes, "classes": classes, "iscrowd": flags, "difficult": flags,
                    "area": area})
    return gts


def evaluate_detections(
    dataset: Any, detections: list[dict[str, Any]], classes: list[str]
) -> dict[str, Any]:
    """COCO metrics and VOC AP of ``detections`` (one ``{"boxes" xyxy, "scores", "classes"}``
    per sample, classes as indices into ``classes``, the model's) on ``dataset``.

    Dataset classes are matched to ``classes`` by name. VOC AP is computed for the classes
    with ground truth (AP of a class without any is undefined); crowd boxes are VOC's
    ``difficult``. Returns ``{"coco": {...12 numbers}, "voc": {"mAP", "AP_per_class"},
    "ground_truth": {name: boxes}, "detections": {name: count}}``.

    Raises:
        DataError: a dataset class the model does not have, an empty dataset, no ground-truth
            box at all.
    """
    from npfrcnn.data import DataError
    from npfrcnn.evaluate import coco_metrics, voc_metrics

    missing = [c for c in dataset.classes if c not in classes]
    if missing:
        raise DataError(
            f"the dataset's classes {missing} are not classes of the model ({classes}); "
            "evaluate a model trained on these classes"
        )
    if len(dataset) == 0:
        raise DataError(f"the dataset {str(dataset.root)!r} has no image: nothing to evaluate")
    if len(detections) != len(dataset):
        raise DataError(f"{len(detections)} detection sets for {len(dataset)} images")
    to_model = np.asarray([classes.index(c) for c in dataset.classes], dtype=np.int64)
    gts = _ground_truth(dataset, to_model)
    n_gt = {c: 0 for c in classes}
    for g in gts:
        for c in g["classes"][~g["iscrowd"]].tolist():
            n_gt[classes[c]] += 1
    if not any(n_gt.values()):
        raise DataError(
            f"the dataset {str(dataset.root)!r} has no annotated box: its metrics would be "
            "undefined (COCO -1, VOC NaN); evaluate on annotated images"
        )
    n_dt = {c: 0 for c in classes}
    for d in detections:
        for c in np.asarray(d["classes"]).tolist():
            n_dt[classes[int(c)]] += 1
    coco = coco_metrics(gts, detections).as_dict()
    with_gt = [classes.index(c) for c in classes if n_gt[c]]
    voc = voc_metrics(gts, detections, plus_one=False, classes=with_gt)
    per = {classes[c]: float(voc.ap[c]) for c in with_gt}
    return {"coco": coco, "voc": {"mAP": float(voc.mean_ap), "AP_per_class": per},
            "ground_truth": {c: n for c, n in n_gt.items() if c in dataset.classes},
            "detections": n_dt}


def evaluate_model(
    weights: str, dataset: Any, *, use_tf: bool = False, backend: str = "cpu",
    on_image: Any = None, executor: Any = None,
) -> dict[str, Any]:
    """Detect on every sample of ``dataset`` and compute COCO metrics and VOC AP
    (:func:`evaluate_detections`).

    ``use_tf`` runs the same weights through the TensorFlow reference network instead of
    npfrcnn's NumPy model. ``on_image(k, n, sample, detections, seconds)`` is called after
    each image (``k`` 1-based). Every image must have the size its annotation states (as
    ``train`` requires). ``executor`` (a :class:`npfrcnn.distributed.DaskExecutor`) detects on
    its workers instead; the metrics are computed here from the gathered detections.
    Returns ``{"weights", "engine", "images", "coco": {...}, "voc":
    {"mAP", "AP_per_class"}, "ground_truth", "detections"}``.

    Raises:
        DataError: see :func:`evaluate_detections`; an image that cannot be read or whose
            size disagrees with its annotation.
        WeightsError: unusable weights.
    """
    from npfrcnn.data import DataError, check_image_size, load_image
    from npfrcnn.weights.hdf5 import read

    if len(dataset) == 0:
        raise DataError(f"the dataset {str(dataset.root)!r} has no image: nothing to evaluate")
    wf = read(weights)
    missing = [c for c in dataset.classes if c not in wf.classes]
    if missing:
        raise DataError(
            f"the dataset's classes {missing} are not classes of {weights} ({wf.classes}); "
            "evaluate a model trained on these classes"
        )
    if executor is not None:
        if use_tf:
            raise DataError("--tf runs in this process only; leave out --workers/--scheduler")
        return _evaluate_on_dask(weights, dataset, wf.classes, executor, on_image)
    if use_tf:
        from npfrcnn.config import ModelConfig

        if not isinstance(wf.config, ModelConfig):
            raise DataError(
                f"{weights} holds a {wf.config.name} model; the TensorFlow reference (--tf) runs "
                "the C4 (workshop) models only: evaluate it without --tf"
            )
        from npfrcnn.weights.tf_reference import TFReference

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

    dets = []
    n = len(dataset)
    for k, s in enumerate(dataset.samples, 1):
        t = time.perf_counter()
        image = load_image(s.path)
        check_image_size(image, s)
        boxes, labels, scores = run(image)
        d = {"boxes": np.asarray(boxes, np.float64).reshape(-1, 4),
             "scores": np.asarray(scores, np.float64).reshape(-1),
             "classes": np.asarray(labels, np.int64).reshape(-1)}
        dets.append(d)
        if on_image is not None:
            on_image(k, n, s, d, time.perf_counter() - t)
    result = evaluate_detections(dataset, dets, list(wf.classes))
    return {"weights": str(weights), "engine": "tensorflow" if use_tf else f"npfrcnn-{backend}",
            "images": len(dataset), **result}


def _evaluate_on_dask(
    weights: str, dataset: Any, classes: list[str], executor: Any, on_image: Any
) -> dict[str, Any]:
    """:func:`evaluate_model` with the detections from Dask workers (images decoded there as
    :func:`npfrcnn.data.load_image` does: stored orientation)."""
    from npfrcnn.data import DataError
    from npfrcnn.distributed import DaskError

    samples = list(dataset.samples)
    dets = []
    n = len(samples)
    t = time.perf_counter()
    try:
        results = executor.map("detect", [(k, str(s.path)) for k, s in enumerate(samples)],
                               {"decoder": "stored"})
        for k, res in results:
            s = samples[k]
            if not res.get("ok"):
                raise DataError(f"image {str(s.path)!r}: {res.get('error')}")
            if (int(res["height"]), int(res["width"])) != (s.height, s.width):
                raise DataError(
                    f"image {str(s.path)!r} is {res['width']}x{res['height']} but its "
                    f"annotation says {s.width}x{s.height}; fix the annotation's width and "
                    "height (or the image)"
                )
            d = {"boxes": np.asarray(res["boxes"], np.float64).reshape(-1, 4),
                 "scores": np.asarray(res["scores"], np.float64).reshape(-1),
                 "classes": np.asarray(res["labels"], np.int64).reshape(-1)}
            dets.append(d)
            if on_image is not None:
                now = time.perf_counter()
                on_image(k + 1, n, s, d, now - t)
                t = now
    except DaskError as e:
        raise DataError(f"the Dask cluster failed: {e}") from None
    result = evaluate_detections(dataset, dets, list(classes))
    return {"weights": str(weights), "engine": f"npfrcnn-{executor.backend} on Dask",
            "images": len(dataset), **result}


def _table(rows: list[list[str]], right: set[int]) -> list[str]:
    """Rows of cells as lines with every column padded to its widest cell (columns in
    ``right`` right-aligned, so numbers of one column line up), two spaces apart."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(c.rjust(widths[i]) if i in right else c.ljust(widths[i])
                  for i, c in enumerate(r)).rstrip()
        for r in rows
    ]


def format_eval(result: dict[str, Any], data: str) -> str:
    """The text ``npfrcnn eval`` prints: a header, the COCO table and the VOC table."""
    lines = [f"{result['engine']} on {result['images']} images of {data}", "",
             "COCO bbox metrics (as pycocotools; -1: no ground truth of that size)"]
    coco_rows = [["metric", "value"]] + [[k, f"{v:.4f}"] for k, v in result["coco"].items()]
    lines += ["  " + t for t in _table(coco_rows, {1})]
    lines += ["", "Pascal VOC AP (IoU > 0.5, area under the curve; crowd boxes are difficult)"]
    voc = result["voc"]
    rows = [["class", "AP", "boxes", "detections"]]
    for name, n in result.get("ground_truth", {}).items():
        ap = voc["AP_per_class"].get(name)
        rows.append([name, "n/a" if ap is None else f"{ap:.4f}", str(n),
                     str(result.get("detections", {}).get(name, 0))])
    rows.append(["mean (mAP)", f"{voc['mAP']:.4f}", "", ""])
    lines += ["  " + t for t in _table(rows, {1, 2, 3})]
    return "\n".join(lines)


def cmd_eval(args: argparse.Namespace, log: Any) -> int:
    from npfrcnn.cli import _Progress

    weights = args.weights or default_weights()
    if weights is None:
        raise _command_error("--weights is required (no shipped demo weights found)",
                             usage=True)
    ds = _read(args)
    if args.json is not None:
        _refuse_inputs([("--json", args.json)],
                       [("the weights", weights), *_dataset_inputs(ds)])
    progress = _Progress(log, len(ds), every_s=math.inf)

    def on_image(k: int, n: int, s: Any, d: dict[str, Any], seconds: float) -> None:
        log.line(f"image {k}/{n} {s.path}: {d['boxes'].shape[0]} detections, "
                 f"{s.boxes.shape[0]} ground truth, {seconds:.2f} s")
        progress.update(k, str(s.path))

    from npfrcnn.cli import _dask_executor, _wants_dask

    args.weights = weights
    executor = _dask_executor(args, log) if _wants_dask(args) else None
    try:
        result = evaluate_model(weights, ds, use_tf=args.tf, backend=args.backend,
                                on_image=on_image, executor=executor)
    finally:
        progress.close()
        if executor is not None:
            executor.close()
    result["data"] = str(args.data)
    sys.stdout.write(format_eval(result, str(args.data)) + "\n")
    sys.stdout.flush()
    if args.json:
        _atomic_json(args.json, result)
        log.info(f"wrote {args.json}")
    return 0


# demo -----------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace, log: Any) -> int:
    """Synthetic images through the model, written as ``detect`` writes its results (the
    description in :func:`register`)."""
    from PIL import Image

    from npfrcnn._io import atomic_write
    from npfrcnn.cli import coco_image_ids, detection_record, draw_and_save
    from npfrcnn.data import synthetic_sample
    from npfrcnn.draw import drawing_names
    from npfrcnn.model import FasterRCNN

    weights = args.weights or default_weights()
    if weights is None:
        raise _command_error("no demo weights found (weights/demo.h5); pass --weights",
                             usage=True)
    out = Path(args.out)
    inputs = [os.path.join(args.out, "inputs", f"demo_{i}.png") for i in range(args.n)]
    draws = drawing_names(inputs)
    targets = [out / name for name, _ in draws]
    jsonl = out / "detections.jsonl"
    outputs: Named = [("the demo's output", jsonl), *(("the demo's input", p) for p in inputs),
                      *(("the demo's drawing", t) for t in targets)]
    _refuse_inputs(outputs, [("--weights", weights)])
    model = FasterRCNN.from_hdf5(weights)
    classes = list(model.classes)
    ids = coco_image_ids(inputs)
    (out / "inputs").mkdir(parents=True, exist_ok=True)
    records = []
    for i, path in enumerate(inputs):
        image, _, _ = synthetic_sample(args.seed, i)
        with atomic_write(path, "wb") as f:
            Image.fromarray(image).save(f, format="PNG")
        dets = model.detect(image, min_prob=args.min_prob)
        h, w = int(image.shape[0]), int(image.shape[1])
        record = detection_record(path, ids[i], w, h, dets.boxes, dets.labels, dets.scores,
                                  classes)
        records.append(record)
        draw_and_save(image, dets.boxes, dets.labels, dets.scores, classes, targets[i],
                      draws[i][1])
        log.info(f"{targets[i]}: {len(record['detections'])} detections " + ", ".join(
            f"{d['label']} {d['score']:.2f}" for d in record["detections"]))
    with atomic_write(jsonl) as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    log.info(f"wrote {args.n} drawings, their inputs in {out / 'inputs'} and {jsonl} "
             f"(weights {weights})")
    return 0


# Parser -------------------------------------------------------------------------------------


def _positive_float(text: str) -> float:
    """A finite number > 0."""
    from npfrcnn.cli import _number

    try:
        v = _number(text)
    except argparse.ArgumentTypeError:
        if text.strip().lower().lstrip("+-") in ("nan", "inf", "infinity"):
            raise argparse.ArgumentTypeError(
                f"expected a positive number, got {text!r}") from None
        raise
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def _non_negative_int(text: str) -> int:
    """An integer >= 0 (seeds)."""
    from npfrcnn.cli import int_at_least

    return int_at_least(text, 0)


def _depth(text: str) -> int:
    """A ResNet depth :func:`npfrcnn.train.units_for_depth` accepts."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer depth, got {text!r}") from None
    if v not in (50, 101, 152) and not (v >= 14 and (v - 2) % 12 == 0):
        raise argparse.ArgumentTypeError(
            f"must be 50, 101, 152 or 12 * u + 2 (14, 26, 38, ...), got {text}")
    return v


def _image_side(text: str) -> int:
    """An image side in pixels, >= 32."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 32:
        raise argparse.ArgumentTypeError(f"must be at least 32 pixels, got {text}")
    return v


def _float_list(text: str) -> tuple[float, ...]:
    """``"0.5,1,2"`` -> ``(0.5, 1.0, 2.0)``: positive numbers separated by commas."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}")
    return tuple(_positive_float(p) for p in parts)


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="PATH",
                   help="dataset folder (wheat: DIR/train.csv + DIR/train/*.jpg; COCO: "
                   "DIR/annotations.json), or a COCO annotations file (instances_val2017.json)")
    p.add_argument("--format", default=None, choices=("wheat", "coco"),
                   help="dataset layout (default: inferred; a .json file or a folder with "
                   "annotations.json is coco, a folder with train.csv only is wheat)")
    p.add_argument("--images", default=None, metavar="DIR",
                   help="COCO: the folder the images' file_name is relative to (default: the "
                   "dataset folder, or the JSON file's folder)")
    p.add_argument("--classes-from-source", action="store_true",
                   help="wheat layout: the source column names the class (synthetic data)")


def _quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", "-q", action="store_true",
                   help="no progress or info messages (errors still shown)")


def register(sub: Any) -> None:
    """Add ``synth``, ``train``, ``eval`` and ``demo`` to ``sub`` (from ``add_subparsers``)."""
    from npfrcnn.cli import (
        non_negative_float,
        output_file,
        output_folder,
        positive_int,
        probability,
    )

    s = sub.add_parser("synth", help="write a synthetic dataset (wheat and COCO layouts)",
                       description="Deterministic synthetic images of 3 shape classes: "
                       "DIR/train/*.jpg, DIR/train.csv (wheat layout, the class in 'source'), "
                       "DIR/annotations.json (COCO, category ids 1..3) and DIR/synthetic.json.")
    s.add_argument("--out", required=True, metavar="DIR", type=output_folder)
    s.add_argument("--n", type=positive_int, default=200, help="images (default 200)")
    s.add_argument("--seed", type=_non_negative_int, default=0)
    s.add_argument("--size", type=_image_side, default=128,
                   help="image side in pixels, >= 32 (default 128)")
    s.add_argument("--layouts", nargs="+", default=["wheat", "coco"], choices=("wheat", "coco"))
    _quiet(s)
    s.set_defaults(func=cmd_synth)

    t = sub.add_parser(
        "train", help="train a model from scratch (needs TensorFlow: npfrcnn[train])",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train the workshop network end to end with npfrcnn's targets and losses "
        "and export an npfrcnn HDF5 file.",
        epilog="""\
files:   OUT (the model, written at the end), OUT.ckpt.npz (checkpoint: every
         --checkpoint-every steps, at the end and on Ctrl-C), OUT.metrics.jsonl (or
         --metrics): one JSON object per logged step, {"step", "losses": {"rpn_cls",
         "rpn_box", "cls", "box", "total"}, "lr", "time" (Unix), "elapsed_s", "step_s"},
         appended and fsynced as each step ends.
resume:  --resume continues from OUT.ckpt.npz and says the step it resumed from; the
         metrics file keeps its lines up to that step. Without --resume an existing
         checkpoint is refused unless --overwrite.
widths:  --width W gives bottleneck widths W, 2W, 4W, 8W (blocks 1-4), root W and RPN 8W,
         as `npfrcnn random-model --width` (W = 64 is the standard ResNet).""",
    )
    _data_args(t)
    t.add_argument("--out", required=True, metavar="MODEL.h5", type=output_file)
    t.add_argument("--profile", default="workshop", help="model profile (workshop)")
    t.add_argument("--depth", type=_depth, default=14,
                   help="ResNet depth: 50/101/152 or 12u+2 (14 = one unit per block; default)")
    t.add_argument("--width", type=positive_int, default=16, metavar="W",
                   help="block1 bottleneck width W; blocks 2-4 use 2W, 4W, 8W, as "
                   "random-model --width (default 16)")
    t.add_argument("--output-stride", type=int, default=16, choices=(8, 16),
                   help="feature stride: 16 (workshop) or 8 (dilated block3, small objects)")
    t.add_argument("--steps", type=positive_int, default=8000,
                   help="steps, one image each (8000)")
    t.add_argument("--lr", type=_positive_float, default=1e-3,
                   help="Adam learning rate, a positive number (1e-3)")
    t.add_argument("--seed", type=_non_negative_int, default=0,
                   help="data order / sampling seed")
    t.add_argument("--checkpoint-every", type=positive_int, default=500, metavar="N")
    t.add_argument("--anchor-border", type=non_negative_float, default=0.0, metavar="PIXELS",
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
    t.add_argument("--overwrite", action="store_true",
                   help="start afresh even if OUT.ckpt.npz exists (it is replaced)")
    t.add_argument("--metrics", type=output_file, default=None, metavar="FILE.jsonl",
                   help="metrics file (default OUT.metrics.jsonl)")
    t.add_argument("--log-every", type=positive_int, default=1, metavar="N",
                   help="a metrics line every N steps (default 1: every step)")
    _quiet(t)
    t.add_argument("--command-line", default=None, help=argparse.SUPPRESS)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="COCO metrics and VOC AP of a model on a dataset",
                       description="Detect on every image of the dataset (one progress line "
                       "per image on stderr); print the 12 COCO numbers and VOC AP per class "
                       "(IoU 0.5, area under the curve) as aligned tables; --json writes them. "
                       "Dataset classes are matched to the model's by name. An image whose "
                       "size disagrees with its annotation, an empty dataset or one without "
                       "any box is refused.")
    _data_args(e)
    e.add_argument("--weights", metavar="FILE.h5", help="default: the shipped demo model")
    e.add_argument("--json", metavar="FILE", type=output_file,
                   help="write the results as JSON (atomically)")
    e.add_argument("--tf", action="store_true",
                   help="run the TensorFlow reference network instead (needs TensorFlow)")
    e.add_argument("--backend", default="cpu", choices=("cpu", "numpy"))
    from npfrcnn.cli import add_dask_arguments

    add_dask_arguments(e)
    _quiet(e)
    e.set_defaults(func=cmd_eval)

    d = sub.add_parser("demo", help="detect on a few synthetic images with the demo model",
                       description="Generate synthetic images (npfrcnn.data.synthetic_sample), "
                       "detect with the shipped demo weights and write, as `npfrcnn detect "
                       "DIR/inputs --output DIR/detections.jsonl --draw DIR` would: the inputs "
                       "(DIR/inputs/demo_<i>.png), the drawings (DIR/demo_<i>.png) and the "
                       "JSON Lines records (DIR/detections.jsonl).")
    d.add_argument("--out", default="npfrcnn-demo", metavar="DIR", type=output_folder)
    d.add_argument("--weights", metavar="FILE.h5", help="default: the shipped demo model")
    d.add_argument("--n", type=positive_int, default=4, help="images (default 4)")
    d.add_argument("--seed", type=_non_negative_int, default=2024,
                   help="generator seed (default 2024)")
    d.add_argument("--min-prob", type=probability, default=0.5,
                   help="score threshold in [0, 1] (0.5)")
    _quiet(d)
    d.set_defaults(func=cmd_demo)
