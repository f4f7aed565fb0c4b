"""The ``npfrcnn`` command: ``detect``, ``convert``, ``info`` and ``random-model`` here;
``synth``, ``train``, ``eval`` and ``demo`` in :mod:`npfrcnn.cli_train`; ``bench`` in
:mod:`npfrcnn.bench.cli`.

Exit status: 0 on success; 1 when some input image (or an unmatched input pattern) failed, after
the others were processed, or when ``info`` finds problems; 2 for a usage or set-up error
(missing or invalid weights, bad option value, no inputs); 130 when interrupted; 141 when
stdout is closed early (``| head``).

Results go to stdout (or a file); logs, the progress bar and the timing summary go to stderr.
Output files are written atomically (a temporary file in the same folder, then a rename), so an
interrupted or failed run never leaves a half-written file or replaces a good one.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from npfrcnn import __version__
from npfrcnn._io import atomic_write

#: Model stages in pipeline order, as ``FasterRCNN.detect(timings=...)`` reports them.
STAGES = ("preprocess", "features", "rpn", "proposals", "roi_pool", "head", "detections")

_NO_WEIGHTS = """\
--weights is required: the shipped demo weights (weights/demo.h5) are not installed. Either
  * convert a torchvision checkpoint (torch.save(model.state_dict(), "model.pth"); no torch needed):
      npfrcnn convert model.pth model.h5 --profile torchvision-r50-fpn
  * convert the workshop's TensorFlow checkpoint (needs tensorflow installed):
      npfrcnn convert checkpoint/fasterrcnn model.h5 --classes checkpoint/classes.json
      npfrcnn detect photo.jpg --weights model.h5
  * or make a model with RANDOM weights to try the pipeline (its detections are meaningless):
      npfrcnn random-model random.h5
      npfrcnn detect photo.jpg --weights random.h5"""

_GLOB_CHARS = frozenset("*?[")


class _Log:
    """Messages on stderr, prefixed ``npfrcnn:``; cooperates with the progress bar."""

    def __init__(self, stream: IO[str], quiet: bool = False) -> None:
        self.stream = stream
        self.quiet = quiet
        self.bar_visible = False

    def _clear_bar(self) -> None:
        if self.bar_visible:
            self.stream.write("\r\x1b[K")
            self.bar_visible = False

    def info(self, msg: str) -> None:
        if not self.quiet:
            self._clear_bar()
            self.stream.write(f"npfrcnn: {msg}\n")
            self.stream.flush()

    def error(self, msg: str) -> None:
        self._clear_bar()
        self.stream.write(f"npfrcnn: error: {msg}\n")
        self.stream.flush()


class _Progress:
    """A one-line progress bar on a TTY; elsewhere a log line every ``every_s`` seconds."""

    def __init__(self, log: _Log, total: int, every_s: float = 30.0) -> None:
        self.log = log
        self.total = total
        self.tty = bool(getattr(log.stream, "isatty", lambda: False)()) and not log.quiet
        self.every_s = every_s
        self.start = time.perf_counter()
        self.last_log = self.start

    def update(self, done: int, label: str) -> None:
        now = time.perf_counter()
        elapsed = now - self.start
        rate = elapsed / done if done else 0.0
        eta = rate * (self.total - done)
        if self.tty:
            width = 24
            filled = int(width * done / max(self.total, 1))
            bar = "#" * filled + "-" * (width - filled)
            name = label if len(label) <= 30 else "..." + label[-27:]
            self.log.stream.write(
                f"\r\x1b[K[{bar}] {done}/{self.total} {rate:.2f} s/img "
                f"ETA {_fmt_duration(eta)} {name}"
            )
            self.log.stream.flush()
            self.log.bar_visible = True
        elif not self.log.quiet and (now - self.last_log >= self.every_s) and done < self.total:
            self.last_log = now
            self.log.info(
                f"{done}/{self.total} images, {rate:.2f} s/img, ETA {_fmt_duration(eta)}"
            )

    def close(self) -> None:
        self.log._clear_bar()


def _fmt_duration(s: float) -> str:
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


# --- inputs ----------------------------------------------------------------------------------


def expand_inputs(inputs: Sequence[str]) -> tuple[list[str], list[str]]:
    """Expand files, folders and glob patterns into a deterministic list of image paths.

    Rules, applied to each argument in order:

    * an existing file is taken as it is (whatever its extension: a non-image then fails to
      load and is reported);
    * an existing folder gives its image files (``npfrcnn.image.IMAGE_EXTENSIONS``, any case),
      not recursive, hidden files skipped, sorted by name;
    * otherwise, an argument with ``*``, ``?`` or ``[`` is a glob pattern (``**`` recurses):
      its matches sorted; a matched folder is expanded as above;
    * anything else is a missing file.

    A path that appears twice (after normalisation) is kept once, at its first position.

    Returns:
        ``(paths, problems)``: the image paths, and one message per argument that matched nothing.
    """
    from npfrcnn.image import IMAGE_EXTENSIONS

    def folder_images(d: str) -> list[str]:
        names = sorted(os.listdir(d))
        return [
            os.path.join(d, n)
            for n in names
            if not n.startswith(".")
            and os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS
            and os.path.isfile(os.path.join(d, n))
        ]

    out: list[str] = []
    problems: list[str] = []
    seen: set[str] = set()

    def add(p: str) -> None:
        key = os.path.normcase(os.path.abspath(p))
        if key not in seen:
            seen.add(key)
            out.append(p)

    for arg in inputs:
        if os.path.isfile(arg):
            add(arg)
        elif os.path.isdir(arg):
            images = folder_images(arg)
            if not images:
                problems.append(f"{arg}: folder has no image files ({', '.join(IMAGE_EXTENSIONS)})")
            for p in images:
                add(p)
        elif _GLOB_CHARS & set(arg):
            matches = sorted(glob.glob(arg, recursive=True))
            found: list[str] = []
            for m in matches:
                if os.path.isdir(m):
                    found.extend(folder_images(m))
                elif os.path.isfile(m):
                    found.append(m)
            if not matches:
                problems.append(f"{arg}: no files match this pattern")
            elif not found:
                problems.append(f"{arg}: the pattern matches only folders without image files")
            for p in found:
                add(p)
        else:
            problems.append(f"{arg}: no such file or folder")
    return out, problems


def coco_image_ids(paths: Sequence[str]) -> list[int]:
    """COCO ``image_id`` per input: the file stems if every stem is a distinct decimal number
    (COCO's own ``000000397133.jpg`` gives 397133), else the 0-based position in the input list.

    One rule for the whole run, so ids never collide.
    """
    stems = [Path(p).stem for p in paths]
    if stems and all(s.isascii() and s.isdigit() for s in stems):
        ids = [int(s) for s in stems]
        if len(set(ids)) == len(ids):
            return ids
    return list(range(len(paths)))


# --- detect ----------------------------------------------------------------------------------


def _f32(x: Any) -> float:
    """A float32 value as the shortest decimal that reads back to the same float32."""
    return float(str(np.float32(x)))


def _load_model(weights: str, backend: str) -> Any:
    """``FasterRCNN.from_hdf5``; a separate function so tests can substitute a fake model."""
    from npfrcnn.model import FasterRCNN

    return FasterRCNN.from_hdf5(weights, backend=backend)


def _provenance(weights: str) -> dict[str, Any]:
    """The weights file's ``provenance`` attribute (attributes only, no tensors); {} if absent."""
    try:
        import h5py

        with h5py.File(weights, "r") as f:
            v = f.attrs.get("provenance")
        d = json.loads(v.decode() if isinstance(v, bytes) else str(v))
        return d if isinstance(d, dict) else {}
    except Exception:  # a fake model in tests, or a file without provenance: no warning
        return {}


@dataclass
class _Timings:
    """Seconds per stage per image, first image kept apart (it includes Numba's compilation
    or cache load)."""

    order: list[str] = field(default_factory=list)
    rows: list[dict[str, float]] = field(default_factory=list)

    def add(self, row: dict[str, float]) -> None:
        for k in row:
            if k not in self.order:
                self.order.append(k)
        self.rows.append(row)

    def summary(self, model_load_s: float, backend: str) -> str:
        n = len(self.rows)
        lines = [f"timing over {n} image(s), seconds (model load {model_load_s:.3f} s):"]
        if n == 0:
            return lines[0]
        rest = self.rows[1:]
        head = f"  {'stage':<16}{'first image':>12}"
        if rest:
            head += f"{f'median of {len(rest)}':>14}"
        lines.append(head)
        labels = {"load": "load image", "detect": "detect (all)", "draw": "draw + save"}
        for k in self.order:
            name = f"  {k}" if k not in labels and k != "total" else labels.get(k, k)
            line = f"  {name:<16}{self.rows[0].get(k, math.nan):>12.4f}"
            if rest:
                vals = [r[k] for r in rest if k in r]
                med = statistics.median(vals) if vals else math.nan
                line += f"{med:>14.4f}"
            lines.append(line)
        if rest:
            first = self.rows[0].get("total", math.nan)
            med = statistics.median([r["total"] for r in rest if "total" in r] or [math.nan])
            why = "Numba compilation or cache load, " if backend == "cpu" else ""
            lines.append(
                f"  first image minus median: {first - med:.3f} s (one-time {why}caches; "
                "image sizes matter too)"
            )
        elif backend == "cpu":
            lines.append(
                "  (one image: its time includes Numba's one-time set-up: compilation on a "
                "machine's first run, a load from its on-disk cache after that)"
            )
        return "\n".join(lines)


_PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
)


def draw_detections(
    image: np.ndarray, boxes: np.ndarray, class_ids: np.ndarray, scores: np.ndarray,
    class_names: Sequence[str],
) -> Any:
    """An RGB ``PIL.Image`` of ``image`` with one labelled box per detection.

    Each box is outlined in its class colour with ``"label score"`` (score to 2 decimals) on a
    filled tab above it (inside the box when there is no room above). Pillow's default font.
    """
    from PIL import Image, ImageDraw, ImageFont

    img = Image.fromarray(image, mode="RGB")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    line = max(1, round(min(img.size) / 300))
    for box, cid, score in zip(boxes, class_ids, scores, strict=True):
        x1, y1, x2, y2 = (float(v) for v in box)
        colour = _PALETTE[int(cid) % len(_PALETTE)]
        draw.rectangle([x1, y1, max(x1, x2), max(y1, y2)], outline=colour, width=line)
        name = class_names[int(cid)] if 0 <= int(cid) < len(class_names) else str(int(cid))
        text = f"{name} {float(score):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 4, bottom - top + 4
        ty = y1 - th if y1 - th >= 0 else y1
        draw.rectangle([x1, ty, x1 + tw, ty + th], fill=colour)
        brightness = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
        ink = (0, 0, 0) if brightness > 140 else (255, 255, 255)
        draw.text((x1 + 2 - left, ty + 2 - top), text, fill=ink, font=font)
    return img


def _draw_name(path: str, used: set[str]) -> str:
    """``<stem>.png``, or ``<stem>-2.png``, ``-3``, ... when two inputs share a stem."""
    stem = Path(path).stem or "image"
    name, k = f"{stem}.png", 1
    while name in used:
        k += 1
        name = f"{stem}-{k}.png"
    used.add(name)
    return name


def cmd_detect(args: argparse.Namespace, log: _Log) -> int:
    if getattr(args, "max_pixels", None) is None or args.max_pixels < 1:
        return _detect(args, log)
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = args.max_pixels  # Pillow's guard is process-wide: restore it after
    try:
        return _detect(args, log)
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _detect(args: argparse.Namespace, log: _Log) -> int:
    from npfrcnn.image import ImageError, load

    if not args.weights:
        from npfrcnn import cli_train

        args.weights = cli_train.default_weights()
        if not args.weights:
            log.error(_NO_WEIGHTS)
            return 2
        log.info(
            f"no --weights: using the shipped demo model {args.weights} (trained on synthetic "
            "shapes: rectangle, ellipse, triangle); pass --weights for your own model"
        )
    if args.min_prob is not None and not 0.0 <= args.min_prob <= 1.0:
        log.error(f"--min-prob must be in [0, 1], got {args.min_prob}; e.g. --min-prob 0.5")
        return 2
    if args.max_detections is not None and args.max_detections < 1:
        log.error(f"--max-detections must be a positive integer, got {args.max_detections}")
        return 2
    if args.max_pixels is not None and args.max_pixels < 1:
        log.error(f"--max-pixels must be a positive integer, got {args.max_pixels}")
        return 2
    for opt, value in (("--output", args.output), ("--coco", args.coco)):
        if value is not None:
            parent = Path(value).parent
            if not parent.is_dir():
                log.error(f"{opt} {value}: folder {parent} does not exist; create it first")
                return 2
            if Path(value).is_dir():
                log.error(f"{opt} {value} is a folder; give a file name")
                return 2
    if args.output is not None and args.coco is not None and (
        os.path.abspath(args.output) == os.path.abspath(args.coco)
    ):
        log.error("--output and --coco name the same file; give them different names")
        return 2

    draw_dir = Path(args.draw) if args.draw is not None else None
    if draw_dir is not None:
        try:
            draw_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            log.error(f"--draw {args.draw}: cannot create the folder ({e})")
            return 2

    paths, problems = expand_inputs(args.inputs)
    for p in problems:
        log.error(p)
    failed = len(problems)
    if not paths:
        log.error("no input images; give image files, folders or glob patterns")
        return 2

    t0 = time.perf_counter()
    try:
        model = _load_model(args.weights, args.backend)
    except (ValueError, OSError, NotImplementedError) as e:  # WeightsError is a ValueError
        log.error(f"cannot load weights {args.weights}: {e}")
        return 2
    model_load_s = time.perf_counter() - t0
    provenance = getattr(model, "provenance", None) or _provenance(args.weights)
    if isinstance(provenance, dict) and provenance.get("random"):
        log.info(
            f"{args.weights} holds RANDOM weights: detections are meaningless (pipeline demo)"
        )
    classes = list(model.classes)
    ids = coco_image_ids(paths)
    used_names: set[str] = set()
    coco: list[dict[str, Any]] = []
    timings = _Timings()
    log.info(f"{len(paths)} image(s), backend {args.backend}")
    progress = _Progress(log, len(paths))

    def run(out: IO[str]) -> int:
        nfail = 0
        for i, path in enumerate(paths):
            row: dict[str, float] = {}
            try:
                t = time.perf_counter()
                image = load(path)
                row["load"] = time.perf_counter() - t
                stage: dict[str, float] = {}
                t = time.perf_counter()
                dets = model.detect(
                    image, min_prob=args.min_prob, max_detections=args.max_detections,
                    timings=stage,
                )
                detect_s = time.perf_counter() - t
                for k in (*STAGES, *sorted(set(stage) - set(STAGES))):
                    if k in stage:
                        row[k] = float(stage[k])
                row["detect"] = detect_s
            except ImageError as e:
                log.error(f"skipped: {e}")
                nfail += 1
                progress.update(i + 1, path)
                continue
            except Exception as e:  # keep going past one bad image; report it
                log.error(f"skipped {path}: {type(e).__name__}: {e}")
                nfail += 1
                progress.update(i + 1, path)
                continue
            h, w = int(image.shape[0]), int(image.shape[1])
            boxes = np.asarray(dets.boxes, dtype=np.float32).reshape(-1, 4)
            labels = np.asarray(dets.labels).reshape(-1)
            scores = np.asarray(dets.scores, dtype=np.float32).reshape(-1)
            record = {
                "path": path,
                "image_id": ids[i],
                "width": w,
                "height": h,
                "detections": [
                    {
                        "box": [_f32(v) for v in b],
                        "label": classes[int(c)],
                        "class_id": int(c),
                        "score": _f32(s),
                    }
                    for b, c, s in zip(boxes, labels, scores, strict=True)
                ],
            }
            out.write(json.dumps(record) + "\n")
            out.flush()
            for b, c, s in zip(boxes, labels, scores, strict=True):
                x1, y1, x2, y2 = (_f32(v) for v in b)
                coco.append(
                    {
                        "image_id": ids[i],
                        "category_id": int(c) + 1,
                        "bbox": [x1, y1, _f32(np.float32(x2) - np.float32(x1)),
                                 _f32(np.float32(y2) - np.float32(y1))],
                        "score": _f32(s),
                    }
                )
            if draw_dir is not None:
                t = time.perf_counter()
                target = draw_dir / _draw_name(path, used_names)
                try:
                    pic = draw_detections(image, boxes, labels, scores, classes)
                    with atomic_write(target, "wb") as f:
                        pic.save(f, format="PNG")
                except OSError as e:  # e.g. disk full: the detections above still stand
                    log.error(f"{path}: could not write the drawing {target}: {e}")
                    nfail += 1
                row["draw"] = time.perf_counter() - t
            row["total"] = sum(v for k, v in row.items() if k in ("load", "detect", "draw"))
            timings.add(row)
            progress.update(i + 1, path)
        return nfail

    try:
        if args.output is not None:
            with atomic_write(args.output) as f:
                failed += run(f)
        else:
            failed += run(sys.stdout)
        if args.coco is not None:
            with atomic_write(args.coco) as f:
                json.dump(coco, f)
                f.write("\n")
    except BrokenPipeError:
        # stdout was closed early (e.g. `npfrcnn detect ... | head`): stop quietly, as Unix
        # tools do, and keep Python from complaining again when it flushes stdout at exit.
        progress.close()
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 141
    except KeyboardInterrupt:
        progress.close()
        files = [f for f in (args.output, args.coco) if f is not None]
        if files:
            log.error(f"interrupted: {' and '.join(files)} not written (left as they were)")
        else:
            log.error("interrupted")
        return 130
    progress.close()
    if not args.quiet:
        log.info(timings.summary(model_load_s, args.backend))
    ok = len(timings.rows)
    if draw_dir is not None and ok:
        log.info(f"drawings in {draw_dir}")
    if failed:
        log.error(f"{failed} input(s) failed, {ok} image(s) processed")
        return 1
    log.info(f"{ok} image(s) processed")
    return 0


# --- convert, info, random-model -------------------------------------------------------------


def _parse_set(items: list[str] | None) -> dict[str, Any]:
    """``--set key=value`` pairs; values are JSON (numbers, lists) or plain strings."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {item!r} (e.g. --set min_size=640)")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _convert_torchvision(args: argparse.Namespace, log: _Log) -> int:
    from npfrcnn.config.profiles.torchvision import TORCHVISION_PROFILES
    from npfrcnn.weights.convert_torchvision import torchvision_to_hdf5
    from npfrcnn.weights.hdf5 import WeightsError
    from npfrcnn.weights.torch_checkpoint import CheckpointError

    if args.profile not in TORCHVISION_PROFILES:
        log.error(
            f"--profile {args.profile!r} is not a torchvision profile; choose one of "
            f"{', '.join(TORCHVISION_PROFILES)}"
        )
        return 2
    try:
        changes = _parse_set(args.set)
    except ValueError as e:
        log.error(str(e))
        return 2
    try:
        result = torchvision_to_hdf5(
            args.checkpoint, args.out, args.profile, classes_json_path=args.classes,
            bn_eps=args.bn_eps, changes=changes,
        )
    except (CheckpointError, WeightsError, ValueError, OSError, TypeError) as e:
        log.error(f"cannot convert {args.checkpoint}: {e}")
        return 2
    cfg = result["config"]
    for note in result["notes"][:5]:
        log.info(f"key upgrade: {note}")
    log.info(
        f"wrote {args.out}: {cfg.name}, ResNet-{cfg.depth}, {cfg.num_classes} classes, "
        f"{cfg.body_norm} (eps {cfg.bn_eps:g}); check it with `npfrcnn info {args.out}`"
    )
    return 0


def cmd_convert(args: argparse.Namespace, log: _Log) -> int:
    if not Path(args.out).parent.is_dir():
        log.error(f"{args.out}: folder {Path(args.out).parent} does not exist; create it first")
        return 2
    source = args.source
    if source is None:
        source = "torchvision" if args.profile or Path(args.checkpoint).is_file() else "tf"
    if source == "torchvision":
        if args.profile is None:
            log.error("--from torchvision needs --profile (e.g. --profile torchvision-r50-fpn)")
            return 2
        return _convert_torchvision(args, log)
    if args.classes is None:
        log.error(
            "converting a TF checkpoint needs --classes classes.json (for a torchvision "
            "checkpoint pass --profile)"
        )
        raise SystemExit(2)  # a usage error, as argparse gives
    try:
        from npfrcnn.weights.convert import checkpoint_to_hdf5
    except ImportError as e:
        log.error(
            f"converting needs TensorFlow to read the checkpoint ({e}); "
            "install it with `pip install tensorflow-cpu`"
        )
        return 2
    try:
        provenance = checkpoint_to_hdf5(args.checkpoint, args.out, args.classes)
    except ImportError as e:
        log.error(f"converting needs TensorFlow ({e}); `pip install tensorflow-cpu`")
        return 2
    except (ValueError, OSError) as e:
        log.error(f"cannot convert {args.checkpoint}: {e}")
        return 2
    skipped = provenance.get("skipped_training_variables") if isinstance(provenance, dict) else None
    if skipped:
        log.info(f"left out {len(skipped)} training-only variable(s) (optimizer slots, step)")
    log.info(f"wrote {args.out}; check it with `npfrcnn info {args.out}`")
    return 0


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def cmd_info(args: argparse.Namespace, log: _Log) -> int:
    from npfrcnn.weights.hdf5 import inspect

    info = inspect(args.file)
    problems = list(info.get("problems") or [])
    if args.json:
        sys.stdout.write(json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")
        return 1 if problems else 0
    out: list[str] = [f"file:        {args.file}"]
    if os.path.isfile(args.file):
        out[0] += f" ({_mb(os.path.getsize(args.file))} on disk)"
    if info.get("format") is not None:
        out.append(f"format:      {info['format']} version {info.get('format_version')}")
    prov = info.get("provenance") or {}
    if prov:
        out.append("provenance:")
        for k in sorted(prov):
            out.append(f"  {k}: {prov[k]}")
        if prov.get("random"):
            out.append("  NOTE: random weights; detections from this file are meaningless")
    out.append(f"integrity:   {info.get('integrity')}")
    cfg = info.get("config")
    if cfg:
        units = cfg.get("units_per_block", [])
        depth = 3 * sum(units) + 2 if units else "?"
        out.append(
            f"config:      profile {cfg.get('name')!r}, ResNet-{depth} (units {units}), "
            f"{cfg.get('num_classes')} classes"
        )
        for k in sorted(cfg):
            out.append(f"  {k}: {cfg[k]}")
    classes = info.get("classes") or []
    if classes:
        shown = ", ".join(classes[:10]) + (", ..." if len(classes) > 10 else "")
        out.append(f"classes:     {len(classes)}: {shown}")
    out.append(
        f"tensors:     {info.get('num_tensors', 0)}, {_mb(info.get('total_bytes', 0))} in total"
    )
    shapes = info.get("shapes") or {}
    if args.tensors:
        for name, shape in shapes.items():
            out.append(f"  {name}: {shape}")
    elif shapes:
        out.append("  (list them with --tensors)")
    if problems:
        out.append(f"problems:    {len(problems)}")
        out.extend(f"  - {p}" for p in problems)
    else:
        out.append("problems:    none")
    sys.stdout.write("\n".join(out) + "\n")
    return 1 if problems else 0


def _parse_units(s: str) -> tuple[int, int, int, int]:
    try:
        parts = tuple(int(x) for x in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 4 comma-separated integers, got {s!r}"
        ) from None
    if len(parts) != 4 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected 4 positive integers, got {s!r}")
    return parts[0], parts[1], parts[2], parts[3]


def cmd_random_model(args: argparse.Namespace, log: _Log) -> int:
    from npfrcnn.config import workshop
    from npfrcnn.weights.random import make_random_model

    classes = None
    if args.classes is not None:
        try:
            with open(args.classes, encoding="utf-8") as f:
                classes = json.load(f)
        except (OSError, ValueError) as e:
            log.error(f"--classes {args.classes}: cannot read a JSON list of names: {e}")
            return 2
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            log.error(f"--classes {args.classes}: must be a JSON list of class names")
            return 2
    num_classes = args.num_classes if args.num_classes is not None else (
        len(classes) if classes is not None else 80
    )
    if classes is not None and len(classes) != num_classes:
        log.error(f"--classes has {len(classes)} names but --num-classes is {num_classes}")
        return 2
    changes: dict[str, Any] = {}
    if args.width is not None:
        w = args.width
        changes["base_depths"] = (w, 2 * w, 4 * w, 8 * w)
        changes["root_depth"] = w
        changes["rpn_depth"] = 8 * w
    try:
        config = workshop(
            depth=args.depth, num_classes=num_classes, units_per_block=args.units, **changes
        )
    except ValueError as e:
        log.error(str(e))
        return 2
    if not Path(args.out).parent.is_dir():
        log.error(f"{args.out}: folder {Path(args.out).parent} does not exist; create it first")
        return 2
    make_random_model(args.out, config, seed=args.seed, classes=classes)
    log.info(
        f"wrote {args.out}: RANDOM weights, ResNet-{config.depth}, {config.num_classes} classes, "
        f"seed {args.seed}. Detections from it are meaningless: it exists to try the pipeline "
        "and to benchmark it."
    )
    return 0


# --- parser ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="npfrcnn", description="Framework-free Faster R-CNN (NumPy + Numba)."
    )
    parser.add_argument("--version", action="version", version=f"npfrcnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser(
        "detect",
        help="detect objects in images",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Detect objects in images; one JSON line per image on stdout (or --output).",
        epilog="""\
inputs:  files, folders (their image files, sorted, not recursive) and glob patterns
         ('photos/**/*.jpg'); a path that appears twice is processed once.
output:  one JSON object per image: {"path", "image_id", "width", "height", "detections":
         [{"box": [x1, y1, x2, y2], "label", "class_id", "score"}]}; boxes are in pixels of
         the image as displayed (EXIF orientation applied); class_id is the 0-based index into
         the model's class list. Images that fail are reported on stderr and skipped.
--coco:  COCO results, a JSON list of {"image_id", "category_id", "bbox": [x, y, w, h],
         "score"} ([] when nothing is found). image_id is the file stem when every stem is a
         distinct number (COCO's 000000397133.jpg -> 397133), else the 0-based position in the
         expanded input list. category_id is class_id + 1 (1-based, 0 left for background):
         map it to your dataset's ids by class name (COCO's own ids are not these).
exit:    0 ok; 1 some input failed (the rest were processed); 2 set-up error; 130 interrupted.""",
    )
    d.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or globs")
    d.add_argument(
        "--weights", metavar="FILE.h5",
        help="npfrcnn HDF5 weights (default: the shipped demo model, weights/demo.h5)",
    )
    d.add_argument(
        "--min-prob", type=float, default=None, metavar="P",
        help="drop detections below this probability (default: the model's config)",
    )
    d.add_argument(
        "--max-detections", type=int, default=None, metavar="N",
        help="keep at most N detections per image (default: the model's config)",
    )
    d.add_argument("--backend", choices=("cpu", "numpy"), default="cpu",
                   help="cpu: Numba kernels (default); numpy: the pure NumPy reference")
    d.add_argument("--output", "-o", metavar="FILE.jsonl", help="write JSON Lines here")
    d.add_argument("--coco", metavar="FILE.json", help="also write COCO-format results")
    d.add_argument("--draw", metavar="DIR", help="write a PNG with labelled boxes per image")
    d.add_argument(
        "--max-pixels", type=int, default=None, metavar="N",
        help="refuse images with more pixels (decompression-bomb guard; default Pillow's "
        "89,478,485)",
    )
    d.add_argument("--quiet", "-q", action="store_true",
                   help="no progress, summary or info messages (errors still shown)")
    d.set_defaults(func=cmd_detect)

    c = sub.add_parser(
        "convert",
        help="convert a torchvision checkpoint or a TF checkpoint (workshop naming) to HDF5",
        description="Convert a checkpoint to an npfrcnn HDF5 weights file. "
        "--from torchvision: a torchvision Faster R-CNN state dict saved with torch.save (a bare "
        "state dict, or a training checkpoint holding it under 'model'/'state_dict') or a "
        ".safetensors file, read WITHOUT torch (a restricted unpickler that refuses anything but "
        "tensors); the architecture and class count are read from the keys and shapes. "
        "--from tf: a TensorFlow checkpoint in the workshop's variable naming (needs TensorFlow).",
    )
    c.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="MODEL.pth / MODEL.safetensors, or a TF checkpoint prefix (without "
                   ".index / .data-*)")
    c.add_argument("out", metavar="OUT.h5")
    c.add_argument("--from", dest="source", choices=("torchvision", "tf"), default=None,
                   help="checkpoint kind (default: torchvision when --profile is given or "
                   "CHECKPOINT is a file, else tf)")
    c.add_argument("--profile", default=None,
                   help="torchvision-r50-fpn, torchvision-r50-fpn-v2 or torchvision-r101-fpn")
    c.add_argument("--classes", default=None, metavar="classes.json",
                   help="JSON list of class names (index = class id; torchvision: the object "
                   "classes, or all of them with the background first). Default for "
                   "torchvision: COCO's 91-entry list for 91 classes, else class_1, ...")
    c.add_argument("--bn-eps", type=float, default=None,
                   help="FrozenBatchNorm2d epsilon, which a checkpoint cannot show (default "
                   "0.0 for torchvision-r50-fpn, as torchvision's COCO_V1 model, else 1e-5)")
    c.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="set an inference knob of the profile, e.g. --set min_size=640 "
                   "--set box_score_thresh=0.3 (repeatable; see npfrcnn.config.FPNConfig)")
    c.set_defaults(func=cmd_convert)

    i = sub.add_parser(
        "info", help="describe a weights file",
        description="Show a weights file's config, classes, tensors, provenance and integrity. "
        "Exit status 1 if the file has problems.",
    )
    i.add_argument("file", metavar="FILE.h5")
    i.add_argument("--json", action="store_true", help="print everything as JSON")
    i.add_argument("--tensors", action="store_true", help="list every tensor and its shape")
    i.set_defaults(func=cmd_info)

    r = sub.add_parser(
        "random-model",
        help="write a model with RANDOM weights (meaningless detections; to try the pipeline)",
        description="Write an HDF5 model with RANDOM weights in the workshop profile. Its "
        "detections are MEANINGLESS: it is not trained. It exists to try the pipeline end to "
        "end and to benchmark it until trained weights ship.",
    )
    r.add_argument("out", metavar="OUT.h5")
    r.add_argument("--depth", type=int, default=101, choices=(50, 101, 152),
                   help="ResNet depth (default 101)")
    r.add_argument("--num-classes", type=int, default=None,
                   help="object classes (default 80, or the length of --classes)")
    r.add_argument("--classes", metavar="classes.json", default=None,
                   help="JSON list of class names (default class_0, class_1, ...)")
    r.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    r.add_argument("--units", type=_parse_units, default=None, metavar="A,B,C,D",
                   help="units per block for a small test network (overrides --depth), "
                   "e.g. 1,1,1,1")
    r.add_argument("--width", type=int, default=None, metavar="W",
                   help="block1 bottleneck width for a narrow test network (default 64; "
                   "blocks 2-4 use 2W, 4W, 8W)")
    r.set_defaults(func=cmd_random_model)

    from npfrcnn.cli_train import register

    register(sub)  # synth, train, eval, demo
    from npfrcnn.bench.cli import register as register_bench

    register_bench(sub)  # bench
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (see the module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # The arguments as given, for commands that record their own command line (train).
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    log = _Log(sys.stderr, quiet=bool(getattr(args, "quiet", False)))
    func: Callable[[argparse.Namespace, _Log], int] = args.func
    return func(args, log)


if __name__ == "__main__":
    sys.exit(main())
