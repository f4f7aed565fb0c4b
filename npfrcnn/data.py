"""Datasets for training and evaluation: readers, and a synthetic generator.

Readers (each returns a :class:`Dataset`; any problem raises :class:`DataError` naming the file,
row or annotation and what is wrong):

* :func:`read_wheat`: the Kaggle Global Wheat layout, ``DIR/train.csv`` (columns ``image_id``,
  ``width``, ``height``, ``bbox`` as ``"[x, y, w, h]"``, ``source``) and ``DIR/train/<id>.jpg``.
  Every JPEG in ``train/`` is an image; those without a row have no boxes (Kaggle's convention).
  One class, ``"wheat"``, unless ``classes_from_source=True``: then the ``source`` column names
  the class (how :func:`make_synthetic` writes a multi-class set in this layout).
* :func:`read_coco`: a COCO detection JSON (``images``, ``annotations``, ``categories``), such
  as COCO's own ``instances_val2017.json``. ``DIR/annotations.json`` by default (or any JSON
  file, ``annotations=``), ``file_name`` relative to ``DIR`` (or ``DIR/images``).
  **Class ids**: categories become 0-based classes in increasing category ``id`` order
  (ids 1, 3, 7 give classes 0, 1, 2 whatever their order in the file); a model is matched to
  a dataset by class *name* (``npfrcnn eval``), never by index. Duplicate image, annotation or
  category ids, two categories of one name and two images of one file are errors.
  ``iscrowd`` annotations are kept apart (``Sample.crowd``, with their classes and areas) and
  not trained on; the evaluators treat them as COCOeval does. An annotation's ``area`` (COCO:
  the segmentation's area, which COCOeval's area ranges use) is kept in ``Sample.areas``.
* :func:`read_folder`: every image file of a folder, for inference (no boxes).

Every reader visits each file once: names are sorted, hidden files (``.name``) are skipped, and
two names of one file (a symbolic or hard link, ``a`` and ``./a``) are one file (device and
inode). The walks do not recurse, so a symbolic-link loop cannot trap them. A dataset without
any image is an error (:class:`DataError`), not an empty dataset.

Boxes are float32 ``(x1, y1, x2, y2)`` in pixel-edge coordinates: ``[x, y, w, h]`` becomes
``(x, y, x + w, y + h)``, the convention of the evaluators (``npfrcnn.evaluate``).

The synthetic generator (:func:`synthetic_sample`, :func:`make_synthetic`) draws rectangles,
ellipses and triangles of three colour families, varied in size, aspect ratio, shade and overlap,
on textured backgrounds; it is deterministic by seed (image ``i`` depends only on ``(seed, i)``).
"""

from __future__ import annotations

import ast
import csv
import hashlib
import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "DataError",
    "Sample",
    "Dataset",
    "IMAGE_SUFFIXES",
    "SYNTHETIC_CLASSES",
    "load_image",
    "check_image_size",
    "file_key",
    "same_file",
    "read_wheat",
    "read_coco",
    "read_folder",
    "read_dataset",
    "synthetic_sample",
    "make_synthetic",
    "dataset_sha256",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

#: Classes of the synthetic generator, in label order.
SYNTHETIC_CLASSES = ("rectangle", "ellipse", "triangle")

F32 = npt.NDArray[np.float32]


class DataError(ValueError):
    """A dataset problem; the message names the file and row or annotation, and the fix."""


def file_key(path: str | os.PathLike[str]) -> tuple[Any, ...]:
    """Identity of a file: ``(device, inode)`` (one key for every name of it: symbolic and
    hard links, ``a`` and ``./a``); its normalised real path when it cannot be stat'ed."""
    try:
        st = os.stat(path)
        return ("inode", st.st_dev, st.st_ino)
    except OSError:
        return ("path", os.path.normcase(os.path.realpath(path)))


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether ``a`` and ``b`` name the same file (:func:`file_key`); a path that does not
    exist yet is compared by its real path."""
    return file_key(a) == file_key(b)


@dataclass
class Sample:
    """One image and its annotations.

    Attributes:
        image_id: the dataset's id (wheat ``image_id``; COCO image ``id`` as a string).
        path: the image file.
        width, height: image size as the annotations state it (checked against the file when
            the image is loaded).
        boxes: float32 ``[G, 4]`` ``(x1, y1, x2, y2)``.
        classes: int64 ``[G]`` 0-based class ids.
        crowd: float32 ``[C, 4]`` COCO ``iscrowd`` boxes (not trained on; ignored regions).
        crowd_classes: int64 ``[C]`` the class of each crowd box.
        areas, crowd_areas: float32 ``[G]`` / ``[C]`` the annotations' ``area`` (COCO), or
            None: the box areas ``w * h``.
    """

    image_id: str
    path: Path
    width: int
    height: int
    boxes: F32 = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    classes: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    crowd: F32 = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    crowd_classes: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    areas: F32 | None = None
    crowd_areas: F32 | None = None


@dataclass
class Dataset:
    """Samples plus the class names (index = 0-based class id) and where they came from.

    ``files`` are the annotation files read (``train.csv``, the COCO JSON): with the image
    files, the inputs that no output may overwrite.
    """

    samples: list[Sample]
    classes: list[str]
    root: Path
    format: str
    meta: dict[str, Any] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)


def _image_errors() -> tuple[type[BaseException], ...]:
    """What Pillow raises for a file it cannot decode (corrupt, truncated, unknown, a
    decompression bomb, unreadable)."""
    from PIL import Image

    return (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def load_image(path: str | os.PathLike[str]) -> npt.NDArray[np.uint8]:
    """An image file as uint8 ``[H, W, 3]`` RGB (``convert("RGB")``, stored orientation: the
    pixel grid annotations refer to). ``DataError`` naming the file if it cannot be read."""
    from PIL import Image

    p = Path(path)
    if not p.is_file():
        raise DataError(f"image file {str(p)!r} does not exist; check the dataset's file names")
    try:
        with Image.open(p) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except _image_errors() as e:
        raise DataError(
            f"image file {str(p)!r} cannot be read as an image ({e}); replace or remove it"
        ) from None


def check_image_size(image: npt.NDArray[Any], sample: Sample) -> None:
    """``DataError`` unless ``image`` (``[H, W, 3]``) has the size ``sample``'s annotation
    states: boxes made for another size would give silently wrong training or metrics."""
    if image.shape[:2] != (sample.height, sample.width):
        raise DataError(
            f"image {str(sample.path)!r} is {image.shape[1]}x{image.shape[0]} but its "
            f"annotation says {sample.width}x{sample.height}; fix the annotation's width and "
            "height (or the image)"
        )


def _image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the file's header; ``DataError`` naming the file."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except _image_errors() as e:
        raise DataError(
            f"image file {str(path)!r} cannot be read ({e}); replace or remove it"
        ) from None


def _images_in(folder: Path, suffixes: Sequence[str]) -> list[Path]:
    """The files of ``folder`` (not recursive) with one of ``suffixes`` (any case), hidden
    names skipped, sorted by name, each file once (:func:`file_key`)."""
    out: list[Path] = []
    seen: set[tuple[Any, ...]] = set()
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in suffixes:
            continue
        if not path.is_file():
            continue
        key = file_key(path)
        if key in seen:
            continue
        seen.add(key)
        out.append(path)
    return out


def _check_distinct_files(samples: Sequence[Sample], where: str) -> None:
    """Two samples must not be one image file (it would be counted twice)."""
    seen: dict[tuple[Any, ...], Sample] = {}
    for s in samples:
        key = file_key(s.path)
        if key in seen:
            first = seen[key]
            raise DataError(
                f"{where}: images {first.image_id!r} ({str(first.path)!r}) and {s.image_id!r} "
                f"({str(s.path)!r}) are the same file; keep one of them"
            )
        seen[key] = s


def _positive_int(value: str, what: str, where: str) -> int:
    try:
        v = int(str(value).strip())
    except ValueError:
        raise DataError(f"{where}: {what} must be a positive integer, got {value!r}") from None
    if v < 1:
        raise DataError(f"{where}: {what} must be a positive integer, got {value!r}")
    return v


def _xywh(values: Any, width: int, height: int, where: str) -> list[float]:
    """Check one ``[x, y, w, h]`` box and return it as ``[x1, y1, x2, y2]``."""
    if not isinstance(values, (list, tuple)) or len(values) != 4:
        raise DataError(f"{where}: bbox must be 4 numbers [x, y, w, h], got {values!r}")
    try:
        x, y, w, h = (float(v) for v in values)
    except (TypeError, ValueError):
        raise DataError(f"{where}: bbox must be 4 numbers [x, y, w, h], got {values!r}") from None
    if not all(np.isfinite([x, y, w, h])):
        raise DataError(f"{where}: bbox has a non-finite value: {values!r}")
    if w <= 0 or h <= 0:
        raise DataError(f"{where}: bbox width and height must be positive, got {values!r}")
    # Half a pixel of slack for annotation tools that round outwards.
    if x < -0.5 or y < -0.5 or x + w > width + 0.5 or y + h > height + 0.5:
        raise DataError(
            f"{where}: bbox {values!r} lies outside the {width}x{height} image; fix the row"
        )
    return [x, y, x + w, y + h]


def _boxes_array(rows: list[list[float]]) -> F32:
    return np.asarray(rows, dtype=np.float32).reshape(-1, 4)


# Kaggle Global Wheat ------------------------------------------------------------------------

_WHEAT_COLUMNS = ("image_id", "width", "height", "bbox", "source")


def read_wheat(
    root: str | os.PathLike[str], *, classes_from_source: bool = False, check_files: bool = True
) -> Dataset:
    """Read the Kaggle Global Wheat layout (module docstring).

    Args:
        root: folder holding ``train.csv`` and ``train/``.
        classes_from_source: the ``source`` column is the class name (sorted names = ids);
            default: one class ``"wheat"``.
        check_files: require ``train/<image_id>.jpg`` for every row.

    Returns:
        A :class:`Dataset` sorted by ``image_id``.

    Raises:
        DataError: missing ``train.csv`` or column, malformed row (named by its line number),
            inconsistent sizes for one image, a row whose image file is missing, two image ids
            of one file, or no image at all.
    """
    root = Path(root)
    csv_path = root / "train.csv"
    img_dir = root / "train"
    if not csv_path.is_file():
        raise DataError(f"wheat layout: {str(csv_path)!r} does not exist (expected train.csv)")
    per_image: dict[str, dict[str, Any]] = {}
    try:
        _read_wheat_rows(csv_path, per_image)
    except UnicodeDecodeError as e:
        raise DataError(f"{csv_path}: not a UTF-8 text file ({e}); save it as UTF-8 CSV") from None
    except csv.Error as e:
        raise DataError(f"{csv_path}: not a valid CSV file ({e})") from None
    return _wheat_dataset(root, csv_path, img_dir, per_image, classes_from_source, check_files)


def _read_wheat_rows(csv_path: Path, per_image: dict[str, dict[str, Any]]) -> None:
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in _WHEAT_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(
                f"{csv_path}: missing column(s) {missing}; the header must be "
                f"{','.join(_WHEAT_COLUMNS)}"
            )
        for row in reader:
            where = f"{csv_path} line {reader.line_num}"
            image_id = (row["image_id"] or "").strip()
            if not image_id:
                raise DataError(f"{where}: empty image_id")
            width = _positive_int(row["width"], "width", where)
            height = _positive_int(row["height"], "height", where)
            try:
                raw = ast.literal_eval((row["bbox"] or "").strip())
            except (ValueError, SyntaxError):
                raise DataError(
                    f"{where}: bbox must look like \"[x, y, w, h]\", got {row['bbox']!r}"
                ) from None
            box = _xywh(raw, width, height, where)
            entry = per_image.setdefault(
                image_id, {"width": width, "height": height, "boxes": [], "sources": []}
            )
            if (entry["width"], entry["height"]) != (width, height):
                raise DataError(
                    f"{where}: image {image_id!r} has size {width}x{height} here but "
                    f"{entry['width']}x{entry['height']} on an earlier row"
                )
            entry["boxes"].append(box)
            entry["sources"].append((row["source"] or "").strip())


def _wheat_dataset(
    root: Path, csv_path: Path, img_dir: Path, per_image: dict[str, dict[str, Any]],
    classes_from_source: bool, check_files: bool,
) -> Dataset:
    if classes_from_source:
        classes = sorted({s for e in per_image.values() for s in e["sources"]})
        if "" in classes:
            raise DataError(
                f"{csv_path}: classes_from_source needs a non-empty source on every row"
            )
    else:
        classes = ["wheat"]
    index = {c: i for i, c in enumerate(classes)}
    samples = []
    for image_id in sorted(per_image):
        e = per_image[image_id]
        path = img_dir / f"{image_id}.jpg"
        if check_files and not path.is_file():
            raise DataError(
                f"wheat layout: image {str(path)!r} of image_id {image_id!r} is missing"
            )
        cls = [index[s] if classes_from_source else 0 for s in e["sources"]]
        samples.append(
            Sample(image_id, path, e["width"], e["height"], _boxes_array(e["boxes"]),
                   np.asarray(cls, dtype=np.int64))
        )
    if check_files:
        _check_distinct_files(samples, str(csv_path))
    # Images without any row have no boxes (Kaggle ships some); their size comes from the file.
    # Each file once: a second name of an annotated image is that image, not a new one.
    if img_dir.is_dir():
        seen = {file_key(s.path) for s in samples}
        for path in _images_in(img_dir, (".jpg",)):
            if path.suffix != ".jpg" or path.stem in per_image or file_key(path) in seen:
                continue
            seen.add(file_key(path))
            w, h = _image_size(path)
            samples.append(Sample(path.stem, path, w, h))
        samples.sort(key=lambda s: s.image_id)
    if not samples:
        raise DataError(
            f"wheat layout: {str(csv_path)!r} has no rows and {str(img_dir)!r} no .jpg image: "
            "the dataset is empty"
        )
    return Dataset(samples, classes, root, "wheat", _read_meta(root), [csv_path])


# COCO ---------------------------------------------------------------------------------------


def read_coco(
    root: str | os.PathLike[str],
    *,
    annotations: str | os.PathLike[str] | None = None,
    check_files: bool = True,
) -> Dataset:
    """Read a COCO detection JSON (module docstring).

    Args:
        root: dataset folder; image ``file_name`` is looked up relative to it, then to
            ``root/images``.
        annotations: the JSON file (e.g. COCO's ``instances_val2017.json``); default
            ``root/annotations.json``.
        check_files: require every image file to exist (and two images not to be one file).

    Returns:
        A :class:`Dataset` in the JSON's image order; class ids follow increasing category id.

    Raises:
        DataError: unreadable JSON, a missing key, an annotation with a bad bbox or area or an
            unknown image or category (named by its index and id), duplicate image,
            annotation or category ids, two categories of one name, two images of one file,
            a missing image file, or no image at all.
    """
    root = Path(root)
    ann_path = Path(annotations) if annotations is not None else root / "annotations.json"
    if not ann_path.is_file():
        what = "is a folder, not a JSON file" if ann_path.is_dir() else "does not exist"
        raise DataError(f"COCO layout: {str(ann_path)!r} {what}")
    try:
        with open(ann_path, encoding="utf-8") as f:
            doc = json.load(f)
    except UnicodeDecodeError:
        raise DataError(
            f"{ann_path}: not a UTF-8 JSON file; give a COCO annotations file"
        ) from None
    except json.JSONDecodeError as e:
        raise DataError(f"{ann_path}: not valid JSON: {e}") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
            raise DataError(
                f"{ann_path}: needs a list under {key!r} (a COCO annotations file, not a "
                "results file)"
            )
    cats: dict[int, str] = {}
    names: dict[str, int] = {}
    for i, c in enumerate(doc["categories"]):
        try:
            cid, name = _int_id(c["id"]), str(c["name"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{ann_path}: categories[{i}] needs an integer id and a name") from None
        if cid in cats:
            raise DataError(
                f"{ann_path}: categories[{i}]: duplicate category id {cid} ({cats[cid]!r} and "
                f"{name!r}); give every category its own id"
            )
        if name in names:
            raise DataError(
                f"{ann_path}: categories[{i}]: categories {names[name]} and {cid} are both "
                f"named {name!r}; classes are matched by name, so names must be distinct"
            )
        cats[cid] = name
        names[name] = cid
    cat_ids = sorted(cats)
    cat_index = {cid: i for i, cid in enumerate(cat_ids)}
    images: dict[int, Sample] = {}
    order: list[int] = []
    for i, im in enumerate(doc["images"]):
        where = f"{ann_path}: images[{i}]"
        if not isinstance(im, dict):
            raise DataError(f"{where} must be an object with id, file_name, width, height")
        try:
            iid = _int_id(im["id"])
            name = str(im["file_name"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{where} needs an integer id and a file_name") from None
        if iid in images:
            raise DataError(f"{where}: duplicate image id {iid}; give every image its own id")
        width = _positive_int(im.get("width", ""), "width", where)
        height = _positive_int(im.get("height", ""), "height", where)
        path = root / name
        if not path.is_file() and (root / "images" / name).is_file():
            path = root / "images" / name
        if check_files and not path.is_file():
            raise DataError(
                f"{where} (id {iid}): image file {str(path)!r} is missing; give the image "
                "folder (--images DIR) or fix file_name"
            )
        images[iid] = Sample(str(iid), path, width, height)
        order.append(iid)
    if not images:
        raise DataError(f"{ann_path}: 'images' is empty: the dataset has no image")
    if check_files:
        _check_distinct_files([images[i] for i in order], str(ann_path))
    per: dict[int, dict[str, list[Any]]] = {
        k: {"boxes": [], "classes": [], "areas": [], "crowd": [], "crowd_classes": [],
            "crowd_areas": []}
        for k in images
    }
    ann_ids: dict[int, int] = {}
    for i, a in enumerate(doc["annotations"]):
        ann_id = a.get("id", "?") if isinstance(a, dict) else "?"
        where = f"{ann_path}: annotations[{i}] (id {ann_id})"
        if not isinstance(a, dict):
            raise DataError(f"{where} must be an object")
        if "id" in a:
            try:
                aid = _int_id(a["id"])
            except (TypeError, ValueError):
                raise DataError(f"{where}: id must be an integer") from None
            if aid in ann_ids:
                raise DataError(
                    f"{where}: duplicate annotation id {aid} (also annotations[{ann_ids[aid]}]); "
                    "give every annotation its own id"
                )
            ann_ids[aid] = i
        try:
            iid = _int_id(a["image_id"])
            cid = _int_id(a["category_id"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{where} needs integer image_id and category_id") from None
        if iid not in images:
            raise DataError(f"{where}: image_id {iid} is not in images")
        if cid not in cats:
            raise DataError(f"{where}: category_id {cid} is not in categories")
        s = images[iid]
        box = _xywh(a.get("bbox"), s.width, s.height, where)
        area = a.get("area")
        if area is None:
            area = (box[2] - box[0]) * (box[3] - box[1])
        else:
            try:
                area = float(area)
            except (TypeError, ValueError):
                raise DataError(f"{where}: area must be a number, got {area!r}") from None
            if not (np.isfinite(area) and area >= 0):
                raise DataError(f"{where}: area must be a finite number >= 0, got {area!r}")
        p = per[iid]
        if a.get("iscrowd", 0):
            p["crowd"].append(box)
            p["crowd_classes"].append(cat_index[cid])
            p["crowd_areas"].append(area)
        else:
            p["boxes"].append(box)
            p["classes"].append(cat_index[cid])
            p["areas"].append(area)
    for iid, s in images.items():
        p = per[iid]
        s.boxes = _boxes_array(p["boxes"])
        s.classes = np.asarray(p["classes"], dtype=np.int64)
        s.areas = np.asarray(p["areas"], dtype=np.float32)
        s.crowd = _boxes_array(p["crowd"])
        s.crowd_classes = np.asarray(p["crowd_classes"], dtype=np.int64)
        s.crowd_areas = np.asarray(p["crowd_areas"], dtype=np.float32)
    return Dataset(
        [images[i] for i in order], [cats[c] for c in cat_ids], root, "coco", _read_meta(root),
        [ann_path],
    )


def _int_id(v: Any) -> int:
    """A JSON id: an integer (or an integral float such as ``3.0``); ``ValueError`` else."""
    if isinstance(v, bool):
        raise ValueError(v)
    if isinstance(v, float):
        if not v.is_integer():
            raise ValueError(v)
        return int(v)
    if isinstance(v, int):
        return v
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        return int(v)
    raise ValueError(v)


def read_folder(root: str | os.PathLike[str]) -> Dataset:
    """Every image file (``IMAGE_SUFFIXES``, any case) directly in ``root``, no boxes.

    Sorted by name, hidden files skipped, each file once (module docstring); a sample's
    ``image_id`` is its file name (``a.jpg`` and ``a.png`` are two images). Sizes are read
    from the files. ``DataError`` if the folder is missing, has no image, or one is unreadable.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {str(root)!r} does not exist")
    samples = []
    for path in _images_in(root, IMAGE_SUFFIXES):
        w, h = _image_size(path)
        samples.append(Sample(path.name, path, w, h))
    if not samples:
        raise DataError(
            f"image folder {str(root)!r} has no image files ({', '.join(IMAGE_SUFFIXES)})"
        )
    return Dataset(samples, [], root, "folder", {})


def read_dataset(root: str | os.PathLike[str], format: str, **kwargs: Any) -> Dataset:
    """Dispatch on ``format``: ``"wheat"``, ``"coco"`` or ``"folder"``."""
    readers = {"wheat": read_wheat, "coco": read_coco, "folder": read_folder}
    if format not in readers:
        raise DataError(f"format must be one of {sorted(readers)}, got {format!r}")
    return readers[format](root, **kwargs)  # type: ignore[operator]


def _read_meta(root: Path) -> dict[str, Any]:
    p = root / "synthetic.json"
    if p.is_file():
        try:
            meta = json.loads(p.read_text(encoding="utf-8"))
            return meta if isinstance(meta, dict) else {}
        except json.JSONDecodeError:
            return {}
    return {}


def dataset_sha256(dataset: Dataset) -> str:
    """SHA-256 over every sample's id, boxes, classes and image file bytes (in sample order)."""
    h = hashlib.sha256()
    h.update(json.dumps(dataset.classes).encode())
    for s in dataset.samples:
        h.update(s.image_id.encode())
        h.update(np.ascontiguousarray(s.boxes, np.float32).tobytes())
        h.update(np.ascontiguousarray(s.classes, np.int64).tobytes())
        if s.path.is_file():
            h.update(s.path.read_bytes())
    return h.hexdigest()


# Synthetic data -----------------------------------------------------------------------------

# Colour families (RGB centres) of the three classes; each object jitters its shade.
_CLASS_COLOURS = ((205, 55, 45), (50, 170, 60), (55, 80, 210))


def _background(rng: np.random.Generator, size: int) -> npt.NDArray[np.float64]:
    """A muted textured background: smooth blotches, stripes or checks, and pixel noise."""
    base = rng.uniform(90, 170, size=3)
    coarse = rng.normal(0, 18, size=(size // 16 + 2, size // 16 + 2, 3))
    # Bilinear upsampling of the coarse noise gives smooth blotches.
    ys = np.linspace(0, coarse.shape[0] - 1.001, size)
    xs = np.linspace(0, coarse.shape[1] - 1.001, size)
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    c00 = coarse[y0][:, x0]
    c01 = coarse[y0][:, x0 + 1]
    c10 = coarse[y0 + 1][:, x0]
    c11 = coarse[y0 + 1][:, x0 + 1]
    img = base + (1 - fy) * ((1 - fx) * c00 + fx * c01) + fy * ((1 - fx) * c10 + fx * c11)
    yy, xx = np.mgrid[0:size, 0:size]
    kind = rng.integers(3)
    if kind == 0:  # stripes at a random angle
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(6, 20)
        wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
        img += (rng.uniform(8, 20) * wave)[:, :, None]
    elif kind == 1:  # checks
        cell = int(rng.integers(6, 20))
        img += (rng.uniform(8, 18) * (((xx // cell) + (yy // cell)) % 2 * 2 - 1))[:, :, None]
    img += rng.normal(0, 6, size=img.shape)
    return img


def _too_close(box: npt.NDArray[np.float64], others: npt.NDArray[np.float64]) -> bool:
    """IoU above 0.35 with another box, or more than 40% of the smaller box covered."""
    iw = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    inter = iw * ih
    a = (box[2] - box[0]) * (box[3] - box[1])
    b = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return bool(np.any(inter > 0.35 * (a + b - inter)) or np.any(inter > 0.4 * np.minimum(a, b)))


def synthetic_sample(
    seed: int, index: int, size: int = 128, max_objects: int = 6
) -> tuple[npt.NDArray[np.uint8], F32, npt.NDArray[np.int64]]:
    """One synthetic image: ``(image uint8 [size, size, 3], boxes float32 [G, 4], classes [G])``.

    Deterministic in ``(seed, index)``. Objects: 1..``max_objects`` of the 3 classes
    (:data:`SYNTHETIC_CLASSES`: rectangles, ellipses, triangles, each in its colour family with a
    jittered shade), sides 14..``0.45 * size`` pixels, aspect ratio 1:2..2:1, placed so that no
    two boxes overlap with IoU above 0.35 or cover more than 40% of the smaller one (later
    objects are drawn over earlier ones). Each box
    is the tight extent of the object's drawn pixels, ``(x1, y1, x2, y2)`` pixel edges.
    """
    from PIL import Image, ImageDraw

    rng = np.random.default_rng([int(seed), int(index)])
    img = _background(rng, size)
    canvas = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    n = int(rng.integers(1, max_objects + 1))
    boxes: list[list[float]] = []
    classes: list[int] = []
    for _ in range(n):
        for _attempt in range(20):
            cls = int(rng.integers(3))
            area = rng.uniform(14, 0.45 * size) ** 2
            aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0)))  # h / w
            w = int(np.clip(round(np.sqrt(area / aspect)), 10, size - 2))
            h = int(np.clip(round(np.sqrt(area * aspect)), 10, size - 2))
            x = int(rng.integers(0, size - w + 1))
            y = int(rng.integers(0, size - h + 1))
            cand = np.array([[x, y, x + w, y + h]], dtype=np.float64)
            if boxes and _too_close(cand[0], np.asarray(boxes, np.float64)):
                continue
            colour = np.clip(
                np.asarray(_CLASS_COLOURS[cls]) * rng.uniform(0.75, 1.15)
                + rng.normal(0, 12, size=3), 0, 255,
            ).astype(int)
            mask = Image.new("L", (size, size), 0)
            mdraw = ImageDraw.Draw(mask)
            xy = (x, y, x + w - 1, y + h - 1)
            if cls == 0:
                shape_args: Any = ("rectangle", xy)
            elif cls == 1:
                shape_args = ("ellipse", xy)
            else:
                flip = bool(rng.integers(2))
                apex_x = x + int(rng.integers(0, w))
                pts = [(apex_x, y), (x, y + h - 1), (x + w - 1, y + h - 1)]
                if flip:
                    pts = [(apex_x, y + h - 1), (x, y), (x + w - 1, y)]
                shape_args = ("polygon", pts)
            getattr(mdraw, shape_args[0])(shape_args[1], fill=255)
            getattr(draw, shape_args[0])(shape_args[1], fill=tuple(int(c) for c in colour))
            m = np.asarray(mask) > 0
            ys_, xs_ = np.nonzero(m)
            boxes.append([xs_.min(), ys_.min(), xs_.max() + 1.0, ys_.max() + 1.0])
            classes.append(cls)
            break
    return (
        np.asarray(canvas, dtype=np.uint8).copy(),
        np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        np.asarray(classes, dtype=np.int64),
    )


def make_synthetic(
    out_dir: str | os.PathLike[str],
    n: int,
    seed: int,
    *,
    size: int = 128,
    max_objects: int = 6,
    layouts: Sequence[str] = ("wheat", "coco"),
) -> Path:
    """Write ``n`` synthetic images (:func:`synthetic_sample`) in the wheat and/or COCO layout.

    Layout on disk (both layouts share the JPEGs): ``out_dir/train/<image_id>.jpg``,
    ``out_dir/train.csv`` (wheat; ``source`` = class name, read with
    ``read_wheat(..., classes_from_source=True)``), ``out_dir/annotations.json`` (COCO, ids
    1..3 = :data:`SYNTHETIC_CLASSES`, ``file_name`` ``train/<image_id>.jpg``) and
    ``out_dir/synthetic.json`` (the generator's seed and settings). JPEG quality 95; the
    boxes come from the drawn pixels, not from the JPEG. Every file is written atomically
    (:func:`npfrcnn._io.atomic_write`). ``DataError`` for ``n < 1``, ``size < 32`` or an
    unknown layout.
    """
    from PIL import Image

    from npfrcnn._io import atomic_write

    for layout in layouts:
        if layout not in ("wheat", "coco"):
            raise DataError(f"layouts must be 'wheat' and/or 'coco', got {layout!r}")
    if n < 1:
        raise DataError(f"n must be a positive number of images, got {n!r}")
    if size < 32:
        raise DataError(f"size must be at least 32 pixels, got {size!r}")
    out = Path(out_dir)
    (out / "train").mkdir(parents=True, exist_ok=True)
    rows: list[list[Any]] = []
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for i in range(n):
        image, boxes, classes = synthetic_sample(seed, i, size, max_objects)
        image_id = f"s{seed}_{i:05d}"
        with atomic_write(out / "train" / f"{image_id}.jpg", "wb") as f:
            Image.fromarray(image).save(f, format="JPEG", quality=95)
        images.append(
            {"id": i + 1, "file_name": f"train/{image_id}.jpg", "width": size, "height": size}
        )
        for b, c in zip(boxes.tolist(), classes.tolist(), strict=True):
            xywh = [b[0], b[1], b[2] - b[0], b[3] - b[1]]
            rows.append([image_id, size, size, json.dumps(xywh), SYNTHETIC_CLASSES[c]])
            anns.append({
                "id": len(anns) + 1, "image_id": i + 1, "category_id": c + 1, "bbox": xywh,
                "area": xywh[2] * xywh[3], "iscrowd": 0,
            })
    if "wheat" in layouts:
        text = io.StringIO(newline="")
        w = csv.writer(text)  # csv's own line endings, as open(..., newline="") keeps them
        w.writerow(_WHEAT_COLUMNS)
        w.writerows(rows)
        with atomic_write(out / "train.csv", "wb") as f:
            f.write(text.getvalue().encode("utf-8"))
    if "coco" in layouts:
        doc = {
            "images": images,
            "annotations": anns,
            "categories": [{"id": k + 1, "name": c} for k, c in enumerate(SYNTHETIC_CLASSES)],
        }
        with atomic_write(out / "annotations.json", "w") as f:
            f.write(json.dumps(doc))
    meta = {"generator": "npfrcnn.data.make_synthetic", "seed": int(seed), "n": int(n),
            "size": int(size), "max_objects": int(max_objects)}
    with atomic_write(out / "synthetic.json", "w") as f:
        f.write(json.dumps(meta, sort_keys=True))
    return out
