"""Result objects of the Python API: :class:`Detections`, :class:`Detection`, :class:`Prediction`.

``FasterRCNN.detect(image)`` returns :class:`Detections` (the arrays of one image);
``FasterRCNN.predict(inputs)`` returns one :class:`Prediction` per input: the detections with
where they came from (the path, the image, its size, the per-stage timings) and the output
formats of ``npfrcnn detect`` (a JSON Lines record, COCO results, a drawing).

Indexing follows NumPy's and Python's sequence rules::

    dets[0]                    # a Detection (box, label, score, class_name); dets[-1] the last
    dets[:5]                   # Detections, the five best (they are sorted by score)
    dets[dets.scores > 0.5]    # Detections, a boolean mask of length len(dets)
    dets[[2, 0]]               # Detections, in the order given (repeats allowed)
    for d in dets: ...         # Detection after Detection, the same as dets[i] for each i

The record builders (:func:`image_record`, :func:`coco_results`, :func:`default_image_ids`)
are the formats ``npfrcnn detect --output`` and ``--coco`` write, so the command and the API
produce the same bytes for the same detections.

Boxes are float32 ``(x1, y1, x2, y2)`` in pixels of the input image (after EXIF orientation),
clipped to the image by the profile's rule: ``[0, W-1] x [0, H-1]`` for the workshop (C4)
profiles, ``[0, W] x [0, H]`` for the torchvision ones. COCO's ``bbox`` is
``[x1, y1, x2 - x1, y2 - y1]`` (float32 differences), whatever the profile's ``+1`` width
convention: COCO boxes are continuous coordinates.
"""

from __future__ import annotations

import json
import numbers
import operator
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple, overload

import numpy as np
import numpy.typing as npt

__all__ = [
    "Detection",
    "Detections",
    "InputError",
    "Prediction",
    "coco_results",
    "default_image_ids",
    "detection_dicts",
    "f32",
    "image_record",
]

F32 = npt.NDArray[np.float32]

#: ``category_ids`` of :func:`coco_results`: by class id (a sequence) or by class name.
CategoryIds = Sequence[int | None] | Mapping[str, int | None]


class InputError(ValueError):
    """Inputs ``FasterRCNN.predict`` cannot use; ``problems`` has one line per bad input.

    Every line names the input (its position, and its path if it has one) and the fix.
    """

    def __init__(self, problems: Sequence[str], total: int, done: str = "nothing was run"):
        self.problems = list(problems)
        n = len(self.problems)
        head = (
            "1 input cannot be used" if n == 1 else f"{n} inputs cannot be used"
        ) + f" (of {total}); {done}:"
        super().__init__("\n  ".join([head, *self.problems]))


def f32(x: Any) -> float:
    """A float32 value as the shortest decimal that reads back to the same float32.

    ``float(np.float32(0.1))`` is ``0.10000000149011612``; ``f32(0.1)`` is ``0.1``, and
    ``np.float32(f32(v)) == np.float32(v)`` for every finite ``v``.
    """
    return float(str(np.float32(x)))


class Detection(NamedTuple):
    """One detection: what iterating over :class:`Detections` (or ``dets[i]``) gives.

    Attributes:
        box: ``(x1, y1, x2, y2)`` in input-image pixels (the float32 values, exactly).
        label: the 0-based class id (background excluded), an index into the model's classes.
        score: the class probability (the float32 value, exactly).
        class_name: the name of class ``label``.
    """

    box: tuple[float, float, float, float]
    label: int
    score: float
    class_name: str

    @property
    def class_id(self) -> int:
        """``label``, under the name the JSON records use for it."""
        return self.label

    def to_dict(self) -> dict[str, Any]:
        """``{"box", "label", "class_id", "score"}`` as in ``npfrcnn detect``'s records.

        In the records ``label`` is the class *name* and ``class_id`` the 0-based id.
        """
        return {
            "box": [f32(v) for v in self.box],
            "label": self.class_name,
            "class_id": int(self.label),
            "score": f32(self.score),
        }


@dataclass
class Detections:
    """Final detections of one image, sorted by descending score.

    Indexable like a NumPy array of detections: an int gives one :class:`Detection`; a slice,
    a boolean mask of length ``len(self)`` or a sequence/array of ints gives a new
    :class:`Detections` (copies of the selected rows, in the order selected). Iteration yields
    :class:`Detection` tuples.

    Attributes:
        boxes: float32 ``[K, 4]`` ``(x1, y1, x2, y2)`` in input-image pixels, clipped to the
            image (``[0, W-1] x [0, H-1]`` for the workshop, ``[0, W] x [0, H]`` for the
            torchvision profiles).
        labels: int64 ``[K]`` 0-based class ids (background excluded).
        scores: float32 ``[K]`` class probabilities.
        class_names: ``K`` names, ``class_names[i]`` is the name of ``labels[i]``; may be empty
            (names unknown), then a :class:`Detection`'s ``class_name`` is ``str(label)``.

    Raises:
        ValueError: (on construction) ``boxes`` is not ``[K, 4]``, or ``labels``, ``scores``
            or a non-empty ``class_names`` do not have ``K`` entries.
    """

    boxes: F32
    labels: npt.NDArray[np.int64]
    scores: F32
    class_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        b, lab, s = np.shape(self.boxes), np.shape(self.labels), np.shape(self.scores)
        if len(b) != 2 or b[1] != 4:
            raise ValueError(f"Detections: boxes must be [K, 4], got shape {b}")
        k = b[0]
        problems = [
            f"{what} has shape {shape}, expected ({k},) for {k} boxes"
            for what, shape in (("labels", lab), ("scores", s))
            if shape != (k,)
        ]
        if self.class_names and len(self.class_names) != k:
            problems.append(f"class_names has {len(self.class_names)} names for {k} boxes")
        if problems:
            raise ValueError("Detections: " + "; ".join(problems))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __repr__(self) -> str:
        return f"Detections({_summary(self)})"

    def _name(self, i: int) -> str:
        return str(self.class_names[i]) if self.class_names else str(int(self.labels[i]))

    def _one(self, i: int) -> Detection:
        x1, y1, x2, y2 = (float(v) for v in self.boxes[i])
        return Detection((x1, y1, x2, y2), int(self.labels[i]), float(self.scores[i]),
                         self._name(i))

    @overload
    def __getitem__(self, index: int | np.integer[Any]) -> Detection: ...

    @overload
    def __getitem__(self, index: slice | Sequence[int] | npt.NDArray[Any]) -> Detections: ...

    def __getitem__(self, index: Any) -> Detection | Detections:
        n = len(self)
        if isinstance(index, bool | np.bool_):
            raise TypeError(
                "Detections cannot be indexed by a single bool; use a boolean mask of length "
                f"{n}, e.g. dets[dets.scores > 0.5]"
            )
        if isinstance(index, int | np.integer):
            i = operator.index(index)
            if not -n <= i < n:
                raise IndexError(f"detection index {i} is out of range for {n} detections")
            return self._one(i % n)
        if isinstance(index, slice):
            return self.take(np.arange(n)[index])
        if isinstance(index, str | bytes | tuple):
            raise TypeError(
                f"Detections cannot be indexed by {type(index).__name__}; use an int, a slice, "
                "a boolean mask or a list of ints (for one column use dets.boxes[...], "
                "dets.scores[...])"
            )
        arr = np.asarray(index)
        if arr.dtype == np.bool_:
            if arr.shape != (n,):
                raise IndexError(
                    f"boolean mask of shape {arr.shape} for {n} detections; it must have shape "
                    f"({n},), e.g. dets.scores > 0.5"
                )
            return self.take(np.flatnonzero(arr))
        if arr.size == 0 and arr.ndim == 1:  # [] is float64 to NumPy
            return self.take(np.zeros(0, np.intp))
        if arr.dtype.kind not in "iu" or arr.ndim != 1:
            what = (
                f"{type(index).__name__} {index!r}" if arr.ndim == 0
                else f"a {arr.ndim}-d {arr.dtype} array"
            )
            raise TypeError(
                f"Detections cannot be indexed by {what}; use an int, a slice, a boolean mask "
                "or a 1-d list/array of ints"
            )
        bad = arr[(arr < -n) | (arr >= n)]
        if bad.size:
            raise IndexError(f"detection index {int(bad[0])} is out of range for {n} detections")
        return self.take(arr.astype(np.intp) % max(n, 1))

    def __iter__(self) -> Iterator[Detection]:
        for i in range(len(self)):
            yield self._one(i)

    def take(self, indices: npt.ArrayLike) -> Detections:
        """The detections at ``indices`` (in-range, non-negative ints), in that order."""
        idx = np.asarray(indices, dtype=np.intp).reshape(-1)
        names = [self.class_names[int(i)] for i in idx] if self.class_names else []
        return Detections(self.boxes[idx], self.labels[idx], self.scores[idx], names)

    def filter(self, min_score: float) -> Detections:
        """The detections with ``score >= min_score`` (a real number in ``[0, 1]``).

        A higher ``min_score`` keeps a subset of a lower one's detections, in the same order.
        """
        t = check_score(min_score, "min_score")
        return self.take(np.flatnonzero(np.asarray(self.scores) >= np.float32(t)))

    def to_dicts(self) -> list[dict[str, Any]]:
        """The ``"detections"`` list of ``npfrcnn detect``'s record (:func:`detection_dicts`)."""
        return detection_dicts(self.boxes, self.labels, self.scores, self._names())

    def _names(self) -> list[str]:
        return [self._name(i) for i in range(len(self))]


def _summary(dets: Detections, show: int = 5) -> str:
    """``3 detections: cat 0.98, dog 0.51, cat 0.12`` (the first ``show``, then ``...``)."""
    n = len(dets)
    parts = [f"{d.class_name} {d.score:.2f}" for d in dets[:show]]
    more = ", ..." if n > show else ""
    return f"{n} detection{'' if n == 1 else 's'}" + (f": {', '.join(parts)}{more}" if n else "")


def check_score(value: Any, what: str) -> float:
    """``value`` as a float in ``[0, 1]``, else a ``ValueError`` naming ``what`` and the fix."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what} must be a number in [0, 1], got {value!r}; e.g. {what}=0.5")
    v = float(value)
    if not (0.0 <= v <= 1.0):  # NaN fails this too
        raise ValueError(f"{what} must be in [0, 1], got {value!r}; e.g. {what}=0.5")
    return v


# --- record builders (shared with ``npfrcnn detect``) ------------------------------------------


def default_image_ids(sources: Sequence[str | None]) -> list[int]:
    """COCO ``image_id`` per input: the file stems if every input is a path and every stem is a
    distinct decimal number (COCO's own ``000000397133.jpg`` gives 397133), else the 0-based
    position in the input list.

    One rule for the whole list, so ids never collide; ``npfrcnn detect`` applies it to its
    expanded input list.
    """
    if sources and all(s is not None for s in sources):
        stems = [Path(str(s)).stem for s in sources]
        if all(s.isascii() and s.isdigit() for s in stems):
            ids = [int(s) for s in stems]
            if len(set(ids)) == len(ids):
                return ids
    return list(range(len(sources)))


def detection_dicts(
    boxes: npt.ArrayLike, labels: npt.ArrayLike, scores: npt.ArrayLike, names: Sequence[str]
) -> list[dict[str, Any]]:
    """One ``{"box": [x1, y1, x2, y2], "label": name, "class_id", "score"}`` per detection.

    ``names[i]`` is the class name of detection ``i``. Floats are the float32 values written as
    the shortest decimals that read back to them (:func:`f32`).
    """
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    lab = np.asarray(labels).reshape(-1)
    s = np.asarray(scores, dtype=np.float32).reshape(-1)
    return [
        {"box": [f32(v) for v in bi], "label": str(n), "class_id": int(c), "score": f32(si)}
        for bi, c, si, n in zip(b, lab, s, names, strict=True)
    ]


def image_record(
    path: str | None,
    image_id: int,
    width: int,
    height: int,
    boxes: npt.ArrayLike,
    labels: npt.ArrayLike,
    scores: npt.ArrayLike,
    names: Sequence[str],
) -> dict[str, Any]:
    """The JSON Lines record ``npfrcnn detect`` writes per image.

    ``{"path", "image_id", "width", "height", "detections": [...]}`` with the detections of
    :func:`detection_dicts`; ``path`` is ``None`` (JSON ``null``) for an in-memory image.
    """
    return {
        "path": path,
        "image_id": int(image_id),
        "width": int(width),
        "height": int(height),
        "detections": detection_dicts(boxes, labels, scores, names),
    }


def coco_results(
    image_id: int,
    boxes: npt.ArrayLike,
    labels: npt.ArrayLike,
    scores: npt.ArrayLike,
    category_ids: CategoryIds | None = None,
    names: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """COCO results records ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``.

    ``bbox`` is ``[x1, y1, x2 - x1, y2 - y1]``, the differences taken in float32 (so
    ``np.float32(x1) + np.float32(w)`` gives back ``x2``), written as by :func:`f32`.

    Args:
        category_ids: ``None``: ``class_id + 1`` (1-based, 0 left for the background). A
            sequence: ``category_ids[class_id]``. A mapping: ``category_ids[class_name]``
            (needs ``names``), to map to a dataset's own ids by class name. A ``None`` entry
            leaves that class's detections out (a model class the dataset has no category
            for, e.g. torchvision's ``N/A`` placeholders), as ``npfrcnn detect --coco-gt``
            does.
        names: the class name of each detection (for a mapping ``category_ids``).

    Raises:
        ValueError: a class id or name that ``category_ids`` does not cover, or a category id
            that is neither an int nor ``None``.
    """
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    lab = np.asarray(labels).reshape(-1)
    s = np.asarray(scores, dtype=np.float32).reshape(-1)
    cats = [_category(int(c), None if names is None else names[i], category_ids)
            for i, c in enumerate(lab)]
    return [
        {
            "image_id": int(image_id),
            "category_id": cat,
            "bbox": [f32(x1), f32(y1), f32(x2 - x1), f32(y2 - y1)],
            "score": f32(si),
        }
        for (x1, y1, x2, y2), cat, si in zip(b, cats, s, strict=True)
        if cat is not None
    ]


def _category(class_id: int, name: str | None, category_ids: CategoryIds | None) -> int | None:
    if category_ids is None:
        return class_id + 1
    if isinstance(category_ids, Mapping):
        if name is None:
            raise ValueError("category_ids keyed by class name needs the class names")
        if name not in category_ids:
            raise ValueError(
                f"category_ids has no entry for class {name!r} (class_id {class_id}); add one, "
                "e.g. {" + f"{name!r}: <your dataset's id>" + "} (None leaves the class out)"
            )
        value: Any = category_ids[name]
    else:
        if not 0 <= class_id < len(category_ids):
            raise ValueError(
                f"category_ids has {len(category_ids)} entries, no entry for class_id "
                f"{class_id}; give one id per model class (index = class_id, None to leave "
                "it out)"
            )
        value = category_ids[class_id]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(
            f"category_ids gives {value!r} for class_id {class_id}; COCO category ids are ints "
            "(None leaves the class out)"
        )
    return int(value)


# --- Prediction --------------------------------------------------------------------------------


@dataclass(eq=False)
class Prediction:
    """What :meth:`npfrcnn.FasterRCNN.predict` returns for one input.

    ``len(pred)``, ``pred[i]`` and iteration delegate to :attr:`detections`: an int index gives
    a :class:`Detection`; any other index (slice, boolean mask, list of ints) gives a new
    :class:`Prediction` of the same image holding only those detections, so
    ``pred[pred.scores > 0.5].draw()`` works.

    Attributes:
        detections: the :class:`Detections`, sorted by descending score.
        source: the path as given (``str``), or ``None`` for an array or PIL image.
        width, height: the size of the image the model saw (after EXIF orientation).
        image_id: the COCO image id used by :meth:`to_json` and :meth:`to_coco`
            (:func:`default_image_ids` over the inputs of the ``predict`` call).
        timings: seconds: ``"load"`` (reading and decoding the file, or converting the
            input), the model stages (``npfrcnn.model.STAGES``), ``"detect"`` (the whole
            ``model.detect`` call). Empty for a prediction read back by :meth:`from_json`.
        image: the uint8 ``[H, W, 3]`` RGB image the model saw (a copy of an array input), for
            :meth:`draw`; ``None`` for a prediction read back by :meth:`from_json`.
    """

    detections: Detections
    source: str | None
    width: int
    height: int
    image_id: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    image: npt.NDArray[np.uint8] | None = field(default=None, repr=False)

    # The arrays, as on Detections.
    @property
    def boxes(self) -> F32:
        return self.detections.boxes

    @property
    def labels(self) -> npt.NDArray[np.int64]:
        return self.detections.labels

    @property
    def scores(self) -> F32:
        return self.detections.scores

    @property
    def class_names(self) -> list[str]:
        return self.detections.class_names

    def __len__(self) -> int:
        return len(self.detections)

    def __repr__(self) -> str:
        src = "array" if self.source is None else repr(self.source)
        return (
            f"Prediction({src}, {self.width}x{self.height}, image_id={self.image_id}, "
            f"{_summary(self.detections)})"
        )

    @overload
    def __getitem__(self, index: int | np.integer[Any]) -> Detection: ...

    @overload
    def __getitem__(self, index: slice | Sequence[int] | npt.NDArray[Any]) -> Prediction: ...

    def __getitem__(self, index: Any) -> Detection | Prediction:
        sub = self.detections[index]
        if isinstance(sub, Detection):
            return sub
        return replace(self, detections=sub, timings=dict(self.timings))

    def __iter__(self) -> Iterator[Detection]:
        return iter(self.detections)

    def filter(self, min_score: float) -> Prediction:
        """The same prediction with only the detections whose ``score >= min_score``.

        ``min_score`` is a number in ``[0, 1]``. This filters the finished detections; to
        change what the model keeps (before its per-class NMS and the detection cap), pass
        ``min_score`` to ``predict`` instead.
        """
        return replace(self, detections=self.detections.filter(min_score),
                       timings=dict(self.timings))

    def to_record(self, image_id: int | None = None) -> dict[str, Any]:
        """The record ``npfrcnn detect --output`` writes for this image (:func:`image_record`);
        ``image_id`` defaults to :attr:`image_id`."""
        d = self.detections
        return image_record(
            self.source, self.image_id if image_id is None else image_id, self.width,
            self.height, d.boxes, d.labels, d.scores, d._names(),
        )

    def to_json(self, image_id: int | None = None) -> str:
        """:meth:`to_record` as one line of JSON (no newline): a line of ``npfrcnn detect -o``."""
        return json.dumps(self.to_record(image_id))

    def to_coco(
        self,
        image_id: int | None = None,
        category_ids: CategoryIds | None = None,
    ) -> list[dict[str, Any]]:
        """COCO results records for this image (:func:`coco_results`), ``[]`` if none.

        Args:
            image_id: the COCO image id (default :attr:`image_id`).
            category_ids: ``None`` for ``class_id + 1``; a sequence indexed by class id; or a
                mapping from class name to your dataset's category id (a ``None`` entry
                leaves the class out).
        """
        d = self.detections
        return coco_results(
            self.image_id if image_id is None else image_id, d.boxes, d.labels, d.scores,
            category_ids, d._names(),
        )

    def draw(self, image: npt.NDArray[np.uint8] | None = None) -> Any:
        """An RGB ``PIL.Image`` of the image with one labelled box per detection.

        Drawn by ``npfrcnn detect --draw``'s function (box in the class colour, ``"name
        score"`` on a tab). ``image`` defaults to :attr:`image`; give it for a prediction read
        back from JSON. The drawing has the image's size.

        Raises:
            ValueError: no image stored and none given, or an image that is not uint8
                ``[height, width, 3]``.
        """
        from npfrcnn.draw import draw_detections

        img = self.image if image is None else image
        if img is None:
            raise ValueError(
                "this Prediction holds no image (read back from JSON); pass it: "
                "pred.draw(npfrcnn.image.load(pred.source))"
            )
        arr = np.asarray(img)
        if arr.dtype != np.uint8 or arr.shape != (self.height, self.width, 3):
            raise ValueError(
                f"draw needs a uint8 [{self.height}, {self.width}, 3] RGB image, got "
                f"{arr.dtype} {list(arr.shape)}"
            )
        d = self.detections
        top = int(d.labels.max()) + 1 if len(d) else 0
        names = [str(i) for i in range(top)]
        for c, n in zip(d.labels, d._names(), strict=True):
            names[int(c)] = n
        return draw_detections(np.ascontiguousarray(arr), d.boxes, d.labels, d.scores, names)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Prediction:
        """A prediction from a record of :meth:`to_record` (or of ``npfrcnn detect -o``).

        The float32 values come back exactly. No image and no timings.

        Raises:
            ValueError: a record without the fields of :func:`image_record`.
        """
        try:
            dets = list(record["detections"])
            boxes = np.array([d["box"] for d in dets], dtype=np.float32).reshape(-1, 4)
            labels = np.array([int(d["class_id"]) for d in dets], dtype=np.int64)
            scores = np.array([d["score"] for d in dets], dtype=np.float32)
            names = [str(d["label"]) for d in dets]
            path = record["path"]
            width, height = int(record["width"]), int(record["height"])
            image_id = int(record["image_id"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"not an npfrcnn detection record ({type(e).__name__}: {e}); expected "
                '{"path", "image_id", "width", "height", "detections": [{"box", "label", '
                '"class_id", "score"}]}'
            ) from None
        if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
            raise ValueError("the record has non-finite boxes or scores")
        return cls(Detections(boxes, labels, scores, names), None if path is None else str(path),
                   width, height, image_id)

    @classmethod
    def from_json(cls, line: str) -> Prediction:
        """:meth:`from_record` of one JSON line."""
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"not a JSON line ({e})") from None
        if not isinstance(record, Mapping):
            raise ValueError(f"a record is a JSON object, got {type(record).__name__}")
        return cls.from_record(record)


# --- the inputs of predict ---------------------------------------------------------------------

#: What ``FasterRCNN.predict`` takes, for the error messages.
INPUT_KINDS = "a path (str or os.PathLike), a uint8 [H, W, 3] RGB numpy array or a PIL image"


@dataclass
class PredictInput:
    """One input of ``predict``, checked: ``kind`` is ``"path"``, ``"array"`` or ``"pil"``."""

    index: int
    kind: str
    source: str | None
    obj: Any

    def describe(self) -> str:
        """``input 3 (photos/a.jpg)``, ``input 0 (array)``, ``input 1 (PIL image)``."""
        what = {"array": "array", "pil": "PIL image"}.get(self.kind, self.source or "")
        return f"input {self.index} ({what})"


def _is_pil(obj: Any) -> bool:
    from PIL import Image

    return isinstance(obj, Image.Image)


def split_inputs(inputs: Any) -> tuple[list[Any], list[str]]:
    """``inputs`` as a list of single images, and the problems with the container itself.

    One path, array or PIL image is a list of one; a list or tuple is its elements; a uint8
    ``[N, H, W, 3]`` array is its ``N`` images.
    """
    import os

    if isinstance(inputs, str | os.PathLike) or _is_pil(inputs):
        return [inputs], []
    if isinstance(inputs, np.ndarray):
        if inputs.ndim != 4:
            return [inputs], []
        if inputs.dtype == np.uint8 and inputs.shape[-1] == 3:
            return list(inputs), []
        return [], [
            f"a {list(inputs.shape)} {inputs.dtype} batch; expected uint8 [N, H, W, 3] RGB "
            "(channels last, 0..255)"
        ]
    if isinstance(inputs, list | tuple):
        return list(inputs), []
    return [], [
        f"predict takes {INPUT_KINDS}, or a list of those; got {type(inputs).__name__}"
        + ("; pass a list: list(...)" if hasattr(inputs, "__iter__") else "")
    ]


def check_input(index: int, obj: Any) -> tuple[PredictInput | None, str | None]:
    """Cheap checks of one input (no decoding): the input or the problem, naming the fix."""
    import os

    if isinstance(obj, str | os.PathLike):
        try:
            path = os.fspath(obj)
        except TypeError as e:
            return None, f"input {index}: {e}; pass a str path"
        if isinstance(path, bytes):
            return None, f"input {index}: bytes path {path!r}; pass it as str: path.decode()"
        if path == "":
            return None, f"input {index}: empty path; give an image file's path"
        item = PredictInput(index, "path", path, path)
        if os.path.isdir(path):
            return None, (
                f"{item.describe()}: is a folder, not an image file; pass the files in it, e.g. "
                f"sorted(glob.glob({os.path.join(path, '*.jpg')!r}))"
            )
        if not os.path.exists(path):
            hint = (
                "; patterns are not expanded here: sorted(glob.glob(pattern))"
                if any(c in path for c in "*?[") else "; check the path"
            )
            return None, f"{item.describe()}: no such file{hint}"
        return item, None
    if _is_pil(obj):
        return PredictInput(index, "pil", None, obj), None
    if isinstance(obj, np.ndarray):
        item = PredictInput(index, "array", None, obj)
        problem = _array_problem(obj)
        return (None, f"{item.describe()}: {problem}") if problem else (item, None)
    if isinstance(obj, bytes | bytearray):
        return None, (
            f"input {index}: raw bytes are not an image; decode them first: "
            "PIL.Image.open(io.BytesIO(data)), or save them to a file and pass its path"
        )
    if isinstance(obj, list | tuple):
        return None, (
            f"input {index}: a {type(obj).__name__} inside the list; pass a flat list of "
            "images (or a numpy array, not nested lists of numbers)"
        )
    fix = "; convert it: np.asarray(x)" if hasattr(obj, "__array__") else ""
    return None, f"input {index}: expected {INPUT_KINDS}, got {type(obj).__name__}{fix}"


def _array_problem(a: npt.NDArray[Any]) -> str | None:
    """What is wrong with an array input (its shape, its dtype), with the fix; else None."""
    shape = list(a.shape)
    problems = []
    if a.ndim == 4:
        problems.append(
            f"a {shape} batch inside a list; pass the batch alone (uint8 [N, H, W, 3]) or its "
            "images: list(batch)"
        )
    elif a.ndim == 2:
        problems.append(
            f"shape {shape} looks grayscale; expected [H, W, 3] RGB: np.stack([a] * 3, -1)"
        )
    elif a.ndim != 3:
        problems.append(f"shape {shape}; expected an [H, W, 3] RGB image")
    elif a.shape[2] == 4:
        problems.append(f"shape {shape} has 4 channels (RGBA?); expected [H, W, 3]: a[..., :3]")
    elif a.shape[2] == 1:
        problems.append(f"shape {shape}; expected [H, W, 3] RGB: np.repeat(a, 3, axis=2)")
    elif a.shape[0] == 3 and a.shape[2] != 3:
        problems.append(
            f"shape {shape} looks channels-first; expected [H, W, 3]: a.transpose(1, 2, 0)"
        )
    elif a.shape[2] != 3:
        problems.append(f"shape {shape}; expected [H, W, 3] RGB")
    elif a.shape[0] == 0 or a.shape[1] == 0:
        problems.append(f"shape {shape} has zero size; there is nothing to detect")
    if a.dtype != np.uint8:
        if a.dtype.kind == "f":
            fix = (
                "if its values are 0..255: np.clip(a, 0, 255).round().astype(np.uint8); if "
                "0..1: (np.clip(a, 0, 1) * 255).round().astype(np.uint8)"
            )
        elif a.dtype.kind in "iu":
            fix = (
                "if its values are 0..255: a.astype(np.uint8); if 16-bit: "
                "(a // 257).astype(np.uint8)"
            )
        else:
            fix = "convert it to uint8 RGB"
        problems.append(f"dtype {a.dtype}; expected uint8 (0..255 RGB): {fix}")
    return "; and ".join(problems) or None


_PIL_NAME = "PIL image"


def load_problem(item: PredictInput, error: Exception) -> str:
    """The problem line of an input :func:`load_input` refused: ``input 3 (a.jpg): why; fix``."""
    msg = str(error)
    name = f"{item.source if item.kind == 'path' else _PIL_NAME}: "
    return f"{item.describe()}: {msg[len(name):] if msg.startswith(name) else msg}"


def load_input(item: PredictInput) -> npt.NDArray[np.uint8]:
    """The uint8 ``[H, W, 3]`` RGB image of a checked input (a fresh array).

    Paths go through :func:`npfrcnn.image.load` (EXIF orientation, modes, the decompression-bomb
    guard); PIL images get the same EXIF orientation and mode rules
    (:func:`npfrcnn.image.to_rgb_array`); arrays are copied.

    Raises:
        npfrcnn.image.ImageError: the file or PIL image cannot be decoded; the message starts
            with the path (or ``PIL image``), :func:`load_problem` makes it a problem line.
    """
    from npfrcnn.image import ImageError, load, to_rgb_array

    if item.kind == "path":
        return load(item.obj)
    if item.kind == "array":
        return np.array(item.obj, dtype=np.uint8, order="C", copy=True)
    from PIL import ImageOps

    try:
        item.obj.load()
        return to_rgb_array(ImageOps.exif_transpose(item.obj), name=_PIL_NAME)
    except ImageError:
        raise
    except (ValueError, AssertionError) as e:
        # Pillow: ValueError "Operation on closed image" after img.close(); a bare
        # AssertionError (no file pointer) for a lazy image whose `with` block has ended.
        if isinstance(e, AssertionError) or "closed" in str(e):
            raise ImageError(
                f"{_PIL_NAME}: the image is closed and its pixels were never loaded "
                "(e.g. its `with Image.open(...)` block ended); call predict inside the "
                "block, call img.load() before closing, or pass the path"
            ) from None
        raise ImageError(f"{_PIL_NAME}: cannot decode it ({e})") from None
    except (OSError, SyntaxError, EOFError) as e:
        raise ImageError(
            f"{_PIL_NAME}: the image data is truncated or corrupt ({type(e).__name__}: "
            f"{e}); re-download or re-export the image"
        ) from None
