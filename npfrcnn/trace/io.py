"""Writing and reading trace files (:mod:`npfrcnn.trace.schema`): HDF5 or ``.npz``.

Writing streams: :meth:`ImageWriter.put` writes each stage to the file as it is produced, so a
trace never holds more than the stage at hand (an ``.npz`` is written entry by entry into the
zip, without compression). The file appears only when the writer closes without an error
(:func:`npfrcnn._io.atomic_path`); a failed run leaves no partial trace behind.

Reading is lazy: :meth:`ImageTrace.get` reads one stage and returns it in the canonical form
(NHWC, ``xyxy`` pixels, background first), converted from what the file's metadata declare.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from npfrcnn.trace.schema import BOX_FORMATS, FORMAT, LAYOUTS, VERSION, stage_info

__all__ = [
    "TraceError", "TraceWriter", "ImageWriter", "Trace", "ImageTrace", "read_trace",
    "pixels_sha256", "file_meta", "images_and_names",
]

#: Stages whose boxes are in the original image (normalised by ``original_size``).
_ORIGINAL_SIZE_BOXES = ("detections/boxes",)
_BOX_KINDS = ("boxes", "set")


class TraceError(ValueError):
    """A trace file that does not follow the schema; the message names the file and stage."""


def images_and_names(
    images: Any, names: str | Sequence[str] | None, who: str
) -> list[tuple[str, npt.NDArray[np.uint8]]]:
    """The adapters' ``images`` (one uint8 ``[H, W, 3]`` RGB array or a sequence of them) and
    ``names`` (one str, a sequence, or ``None`` for ``image_0``, ``image_1``, ...) as pairs;
    a ``ValueError`` naming ``who`` and the image otherwise."""
    if isinstance(images, np.ndarray) and images.ndim == 3:
        items: list[Any] = [images]
    elif isinstance(images, np.ndarray | Sequence) and not isinstance(images, str | bytes):
        items = list(images)
    else:
        raise ValueError(f"{who}: images must be a uint8 [H, W, 3] RGB array or a list of them, "
                         f"got {type(images).__name__}")
    if not items:
        raise ValueError(f"{who}: no images")
    if isinstance(names, str):
        names = [names]
    out_names = [f"image_{i}" for i in range(len(items))] if names is None else [
        str(n) for n in names]
    if len(out_names) != len(items):
        raise ValueError(f"{who}: {len(out_names)} names for {len(items)} images")
    out = []
    for i, (name, im) in enumerate(zip(out_names, items, strict=True)):
        a = np.asarray(im)
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(
                f"{who}: image {i} ({name!r}) must be a uint8 [H, W, 3] RGB array, got "
                f"{a.dtype} {a.shape}"
            )
        out.append((name, a))
    return out


def pixels_sha256(image: npt.ArrayLike) -> str:
    """The schema's image identity: sha256 of the uint8 ``[H, W, 3]`` RGB array's bytes."""
    a = np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
    return hashlib.sha256(a.tobytes()).hexdigest()


def file_meta(
    family: str,
    *,
    profile: str,
    producer: str,
    num_classes: int,
    weights_sha256: str = "",
    layout: str = "NHWC",
    box_format: str = "xyxy",
    boxes_normalized: bool = False,
    background: str = "first",
    classes: list[str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A file's metadata, checked (keyword names as in the schema)."""
    meta: dict[str, Any] = {
        "format": FORMAT, "version": VERSION, "family": family, "profile": profile,
        "producer": producer, "weights_sha256": weights_sha256, "layout": layout,
        "box_format": box_format, "boxes_normalized": bool(boxes_normalized),
        "background": background, "num_classes": int(num_classes),
    }
    if classes is not None:
        meta["classes"] = [str(c) for c in classes]
    meta.update(extra)
    _check_file_meta(meta, "<new trace>")
    return meta


def _check_file_meta(meta: Mapping[str, Any], where: str) -> None:
    problems = []
    if meta.get("format") != FORMAT:
        problems.append(f"format must be {FORMAT!r}, got {meta.get('format')!r}")
    if meta.get("version") != VERSION:
        problems.append(
            f"version {meta.get('version')!r} is not supported (this npfrcnn reads version "
            f"{VERSION})"
        )
    checks = (
        ("family", ("fpn", "c4")), ("layout", LAYOUTS), ("box_format", BOX_FORMATS),
        ("background", ("first", "last")), ("boxes_normalized", (True, False)),
    )
    for key, allowed in checks:
        if meta.get(key) not in allowed:
            problems.append(f"{key} must be one of {list(allowed)}, got {meta.get(key)!r}")
    n = meta.get("num_classes")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        problems.append(f"num_classes must be a positive int, got {n!r}")
    if problems:
        raise TraceError(f"{where}: not a valid trace: " + "; ".join(problems))


def _check_image_meta(meta: Mapping[str, Any], where: str) -> None:
    problems = []
    for key in ("original_size", "image_size", "input_size"):
        v = meta.get(key)
        if not (isinstance(v, list) and len(v) == 2 and all(isinstance(i, int) for i in v)):
            problems.append(f"{key} must be [height, width] (ints), got {v!r}")
    if not isinstance(meta.get("sha256", ""), str):
        problems.append("sha256 must be a hex string")
    if problems:
        raise TraceError(f"{where}: " + "; ".join(problems))


class ImageWriter:
    """Writes the stages of one image (obtained from :meth:`TraceWriter.image`)."""

    def __init__(self, owner: TraceWriter, index: int):
        self._owner, self.index = owner, index
        self.names: list[str] = []

    def put(self, name: str, array: npt.ArrayLike) -> None:
        """Write stage ``name`` (a schema name, e.g. ``"features/0"``) now."""
        try:
            st = stage_info(name)
        except KeyError:
            raise TraceError(f"{name!r} is not a stage of the trace schema") from None
        if name in self.names:
            raise TraceError(f"stage {name!r} of image {self.index} was written twice")
        a = np.asarray(array)
        want = np.dtype(st.dtype)
        if a.dtype != want:
            if a.dtype.kind != want.kind and not (want.kind == "i" and a.dtype.kind == "u"):
                raise TraceError(
                    f"stage {name!r} must be {st.dtype}, got {a.dtype} (shape {a.shape})"
                )
            a = a.astype(want)
        self.names.append(name)
        self._owner._write(f"images/{self.index}/{name}", np.ascontiguousarray(a))

    def put_all(self, stages: Mapping[str, npt.ArrayLike]) -> None:
        for name, a in stages.items():
            self.put(name, a)


class TraceWriter:
    """``with TraceWriter(path, meta) as w: img = w.image(image_meta); img.put(...)``.

    ``path`` ending in ``.npz`` writes an npz, anything else HDF5. The file is published
    atomically when the block ends without an error.
    """

    def __init__(self, path: str | os.PathLike[str], meta: Mapping[str, Any]):
        _check_file_meta(meta, str(path))
        self.path = Path(path)
        self.meta = dict(meta)
        self.npz = self.path.suffix.lower() == ".npz"
        self._stack = contextlib.ExitStack()
        self._count = 0
        self._h5: Any = None
        self._zip: zipfile.ZipFile | None = None

    def __enter__(self) -> TraceWriter:
        from npfrcnn._io import atomic_path

        tmp = self._stack.enter_context(atomic_path(self.path))
        if self.npz:
            self._zip = self._stack.enter_context(
                zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True)
            )
        else:
            import h5py

            self._h5 = self._stack.enter_context(h5py.File(tmp, "w"))
        self._meta("", self.meta)
        return self

    def __exit__(self, *exc: Any) -> bool | None:
        # atomic_path publishes on a clean exit and discards on an exception
        return self._stack.__exit__(*exc)

    def _meta(self, where: str, meta: Mapping[str, Any]) -> None:
        text = json.dumps(meta, sort_keys=True)
        if self._zip is not None:
            self._write(f"{where}meta", np.asarray(text))
        else:
            grp = self._h5.require_group(where or "/")
            grp.attrs["meta"] = text

    def _write(self, key: str, a: np.ndarray) -> None:
        if self._zip is not None:
            with self._zip.open(key + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, a, allow_pickle=False)
        else:
            self._h5.create_dataset(key, data=a)

    def image(self, meta: Mapping[str, Any]) -> ImageWriter:
        """Start the next image; ``meta`` as in the schema (``original_size``, ...)."""
        m = {k: (list(v) if isinstance(v, tuple) else v) for k, v in meta.items()}
        m = {k: ([int(i) for i in v] if k.endswith("_size") else v) for k, v in m.items()}
        _check_image_meta(m, f"{self.path}: image {self._count}")
        idx = self._count
        self._count += 1
        self._meta(f"images/{idx}/", m)
        return ImageWriter(self, idx)


# Reading ---------------------------------------------------------------------------------------


class ImageTrace:
    """One image of a trace: ``meta``, the stage ``names`` present, and :meth:`get`."""

    def __init__(self, trace: Trace, index: int, meta: dict[str, Any], names: list[str]):
        self.trace, self.index, self.meta = trace, index, meta
        self.names = names

    def __contains__(self, name: str) -> bool:
        return name in self.names

    @property
    def where(self) -> str:
        return f"{self.trace.path}: image {self.index}"

    def raw(self, name: str) -> np.ndarray:
        """The stage as stored (no conversion)."""
        if name not in self.names:
            raise TraceError(f"{self.where}: stage {name!r} is not in this trace")
        return self.trace._read(f"images/{self.index}/{name}")

    def get(self, name: str) -> np.ndarray:
        """The stage in canonical form (NHWC, ``xyxy`` pixels, background first)."""
        a = self.raw(name)
        st = stage_info(name)
        meta = self.trace.meta
        want = np.dtype(st.dtype)
        if a.dtype != want:
            if a.dtype.kind not in ("f" if want.kind == "f" else "iu"):
                raise TraceError(f"{self.where}: stage {name!r} must be {st.dtype}, got {a.dtype}")
            a = a.astype(want)
        if st.image and a.ndim == 4 and meta["layout"] == "NCHW":
            a = np.ascontiguousarray(a.transpose(0, 2, 3, 1))
        if name == "head/cls" or name == "head/bbox":
            a = self._background_first(name, a)
        if st.kind in _BOX_KINDS or st.deltas:
            if a.ndim != 2 or a.shape[1] % 4:
                raise TraceError(
                    f"{self.where}: stage {name!r} must be [N, 4{'k' if st.deltas else ''}], "
                    f"got shape {a.shape}"
                )
            if meta["box_format"] == "yxyx":
                a = a.reshape(a.shape[0], -1, 4)[:, :, [1, 0, 3, 2]].reshape(a.shape)
            if st.kind in _BOX_KINDS and meta["boxes_normalized"]:
                size = self.meta["original_size" if name in _ORIGINAL_SIZE_BOXES else
                                 "image_size" if not name.startswith("anchors/") else
                                 "input_size"]
                h, w = float(size[0]), float(size[1])
                a = (a.astype(np.float64) * np.array([w, h, w, h])).astype(np.float32)
        return np.ascontiguousarray(a)

    def _background_first(self, name: str, a: np.ndarray) -> np.ndarray:
        if self.trace.meta["background"] == "first":
            return a
        if a.ndim != 2:
            raise TraceError(f"{self.where}: stage {name!r} must be 2-d, got shape {a.shape}")
        if name == "head/cls":
            return np.ascontiguousarray(np.roll(a, 1, axis=1))
        if self.trace.meta["family"] == "c4":
            return a  # c4 has no background deltas
        return np.ascontiguousarray(np.roll(a, 4, axis=1))


class Trace:
    """A trace file opened for reading (a context manager; :func:`read_trace`)."""

    def __init__(self, path: str | os.PathLike[str] | io.BytesIO):
        source: Any = path
        if isinstance(path, io.BytesIO):
            self.path = Path("<in memory>")
        else:
            self.path = Path(path)
            source = self.path
        self._h5: Any = None
        self._npz: Any = None
        where = str(self.path)
        if not isinstance(path, io.BytesIO) and not self.path.exists():
            raise TraceError(f"{where}: no such trace file")
        try:
            if zipfile.is_zipfile(source):
                if isinstance(source, io.BytesIO):
                    source.seek(0)
                self._npz = np.load(source, allow_pickle=False)
                keys = list(self._npz.files)
                meta_text = str(self._npz["meta"][()]) if "meta" in keys else None
            else:
                import h5py

                self._h5 = h5py.File(source, "r")
                keys = []
                self._h5.visit(lambda k: keys.append(k))
                keys = [k for k in keys if isinstance(self._h5[k], h5py.Dataset)]
                meta_text = self._h5.attrs.get("meta")
        except (OSError, ValueError) as e:
            self.close()
            raise TraceError(
                f"{where}: cannot read it as a trace (HDF5 or .npz): {e}"
            ) from None
        if meta_text is None:
            self.close()
            raise TraceError(f"{where}: no 'meta' (not an npfrcnn trace; see npfrcnn.trace.schema)")
        try:
            self.meta: dict[str, Any] = json.loads(str(meta_text))
        except json.JSONDecodeError as e:
            self.close()
            raise TraceError(f"{where}: 'meta' is not JSON: {e}") from None
        try:
            _check_file_meta(self.meta, where)
        except TraceError:
            self.close()
            raise
        self.images = self._index(keys)

    def _index(self, keys: list[str]) -> list[ImageTrace]:
        names: dict[int, list[str]] = {}
        for k in keys:
            parts = k.split("/", 2)
            if parts[0] != "images" or len(parts) < 3:
                continue
            if not parts[1].isdigit():
                raise TraceError(f"{self.path}: {k!r}: image groups must be numbered 0, 1, ...")
            if parts[2] == "meta":
                continue
            try:
                stage_info(parts[2])
            except KeyError:
                raise TraceError(
                    f"{self.path}: {k!r}: {parts[2]!r} is not a stage of the schema "
                    "(npfrcnn.trace.schema.STAGES)"
                ) from None
            names.setdefault(int(parts[1]), []).append(parts[2])
        count = 0
        while self._has_image_meta(count):
            count += 1
        if set(names) - set(range(count)):
            missing = sorted(set(names) - set(range(count)))
            raise TraceError(f"{self.path}: images {missing} have stages but no meta")
        out = []
        for i in range(count):
            meta = json.loads(self._image_meta_text(i))
            _check_image_meta(meta, f"{self.path}: image {i}")
            out.append(ImageTrace(self, i, meta, names.get(i, [])))
        return out

    def _has_image_meta(self, i: int) -> bool:
        if self._npz is not None:
            return f"images/{i}/meta" in self._npz.files
        return f"images/{i}" in self._h5 and "meta" in self._h5[f"images/{i}"].attrs

    def _image_meta_text(self, i: int) -> str:
        if self._npz is not None:
            return str(self._npz[f"images/{i}/meta"][()])
        return str(self._h5[f"images/{i}"].attrs["meta"])

    def _read(self, key: str) -> np.ndarray:
        if self._npz is not None:
            return np.asarray(self._npz[key])
        return np.asarray(self._h5[key][()])

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None
        if self._npz is not None:
            self._npz.close()
            self._npz = None

    def __enter__(self) -> Trace:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __iter__(self) -> Iterator[ImageTrace]:
        return iter(self.images)

    def __len__(self) -> int:
        return len(self.images)


def read_trace(path: str | os.PathLike[str] | io.BytesIO) -> Trace:
    """Open a trace (HDF5 or ``.npz``, a path or an in-memory file); raises
    :class:`TraceError` naming what is wrong."""
    return Trace(path)
