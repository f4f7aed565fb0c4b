"""The npfrcnn weights file (HDF5).

Layout (DESIGN.md "Weights file"):

* root attributes: ``format = "npfrcnn"``, ``format_version`` (int), ``config`` (the
  :class:`~npfrcnn.config.ModelConfig` as JSON), ``classes`` (JSON list of the class names, index
  = 0-based label), ``provenance`` (JSON object: at least ``source``, ``source_sha256`` and
  ``tensors_sha256``);
* one float32 dataset per tensor, at the path of its TF variable name
  (``resnet_v1_101/conv1/conv2d/kernel``, ``rpn/conv/kernel``, ...; see ``names.py``).

``tensors_sha256`` hashes every tensor (sorted by name: name, dtype, shape, then the C-order
bytes), so :func:`read` detects a file whose tensors were altered after writing.
Files are written atomically: to a temporary file in the same folder, then renamed.

A weights file is self-contained: :func:`read` and :func:`inspect` refuse, before reading any
dataset's data, a file that would make HDF5 read another file (:func:`external_data`: external
links, soft links leading through them, virtual datasets, datasets with external raw storage,
and filters that HDF5 would load from a plugin library). Root attributes of the wrong type or
encoding are reported by name.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from npfrcnn._io import atomic_path
from npfrcnn.config import AnyConfig, Detectron2Config, FPNConfig, config_from_json

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "WeightsError",
    "WeightsFile",
    "write",
    "read",
    "inspect",
    "tensors_sha256",
    "file_sha256",
    "check_tensors",
    "external_data",
]

FORMAT = "npfrcnn"
FORMAT_VERSION = 2
#: Versions :func:`read` accepts. Version 1 (C4 configs only) has the same layout; version 2
#: adds configs of other architectures (``"architecture"`` in the config JSON).
READABLE_VERSIONS = (1, 2)


class WeightsError(ValueError):
    """A weights file (or tensor dict) is unusable; ``problems`` lists every reason."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"{source}: {len(self.problems)} problem(s) with the weights:\n{lines}"
        )


@dataclass
class WeightsFile:
    """A validated weights file: everything :class:`npfrcnn.FasterRCNN` needs."""

    config: AnyConfig
    classes: list[str]
    tensors: dict[str, np.ndarray]
    provenance: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION


def tensors_sha256(tensors: Mapping[str, np.ndarray]) -> str:
    """sha256 over the tensors sorted by name (name, dtype, shape, C-order bytes)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        h.update(name.encode())
        h.update(str(a.dtype.str).encode())
        h.update(repr(tuple(a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes (for provenance of source checkpoints)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _describe(config: AnyConfig) -> str:
    if isinstance(config, FPNConfig | Detectron2Config):
        return (
            f"{config.name} model (ResNet-{config.depth}, units {config.units_per_block}, "
            f"{config.num_classes} classes)"
        )
    return (
        f"{config.scope} model with units_per_block={config.units_per_block} and "
        f"{config.num_classes} classes"
    )


def check_tensors(
    config: AnyConfig, tensors: Mapping[str, np.ndarray]
) -> list[str]:
    """Every problem with ``tensors`` for ``config``: missing, unexpected, shape, dtype, finiteness.

    Returns a list of messages, each naming its tensor (empty when all is well).
    """
    from npfrcnn.weights.names import expected_shapes

    expected = expected_shapes(config)
    problems: list[str] = []
    missing = [n for n in expected if n not in tensors]
    unexpected = sorted(n for n in tensors if n not in expected)
    for n in missing:
        problems.append(f"missing tensor {n!r} (expected shape {expected[n]})")
    for n in unexpected:
        problems.append(
            f"unexpected tensor {n!r}; it is not part of a {_describe(config)}"
        )
    for n, shape in expected.items():
        if n not in tensors:
            continue
        a = tensors[n]
        if tuple(a.shape) != shape:
            problems.append(f"tensor {n!r} has shape {tuple(a.shape)}, expected {shape}")
        if a.dtype != np.float32:
            problems.append(f"tensor {n!r} has dtype {a.dtype}, expected float32")
        elif a.size and not np.isfinite(a).all():
            bad = int(a.size - np.count_nonzero(np.isfinite(a)))
            problems.append(f"tensor {n!r} has {bad} non-finite value(s)")
    for n in expected:
        if n.endswith(("moving_variance", "running_var")) and n in tensors:
            a = tensors[n]
            if a.dtype == np.float32 and np.isfinite(a).all() and (a < 0).any():
                problems.append(f"tensor {n!r} has negative variances")
    return problems


def write(
    path: str | os.PathLike[str],
    config: AnyConfig,
    classes: Sequence[str],
    tensors: Mapping[str, np.ndarray],
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Validate and write a weights file atomically (temporary file in the folder, then rename).

    Args:
        path: destination ``.h5``; an existing file is replaced only once the new one is complete.
        config: the model configuration stored with the weights.
        classes: ``config.num_classes`` class names, index = 0-based label.
        tensors: name -> float32 array, exactly the names of ``expected_shapes(config)``.
        provenance: where the weights come from (``source``, ``source_sha256``, ...);
            ``tensors_sha256`` and ``format`` are added.

    Raises:
        WeightsError: listing every problem with the tensors or classes (nothing is written).
    """
    import h5py

    path = Path(path)
    classes = [str(c) for c in classes]
    arrays = {n: np.asarray(a) for n, a in tensors.items()}
    problems = check_tensors(config, arrays)
    if len(classes) != config.num_classes:
        problems.append(
            f"{len(classes)} class names given but config.num_classes is {config.num_classes}"
        )
    if problems:
        raise WeightsError(str(path), problems)
    prov = dict(provenance or {})
    prov.setdefault("source", "unknown")
    prov["tensors_sha256"] = tensors_sha256(arrays)
    folder = path.parent if str(path.parent) else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    # npfrcnn's one atomic writer: a temporary file beside the destination, fsynced, renamed.
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["config"] = config.to_json()
            f.attrs["classes"] = json.dumps(classes)
            f.attrs["provenance"] = json.dumps(prov, sort_keys=True)
            for name in sorted(arrays):
                f.create_dataset(name, data=np.ascontiguousarray(arrays[name]))
    return path


# HDF5 filters built into the library (deflate, shuffle, fletcher32, szip, nbit, scaleoffset)
# and h5py's own LZF: any other filter id makes HDF5 search its plugin path and load a library.
_BUILTIN_FILTERS = {1: "deflate", 2: "shuffle", 3: "fletcher32", 4: "szip", 5: "nbit",
                    6: "scaleoffset", 32000: "lzf"}
_SELF_CONTAINED_FIX = (
    "a weights file must hold all its data itself; write it again with "
    "npfrcnn.weights.write or `npfrcnn convert`, which store plain datasets"
)
_MAX_LINK_DEPTH = 32  # soft links followed in a chain before giving up (HDF5's own nlinks is 16)


def _links(f: Any) -> dict[str, tuple[int, Any]]:
    """Every link reachable from the root through hard-linked groups: name (no leading ``/``) ->
    (link type, target). The target is ``None`` for a hard link, the path for a soft link and
    ``(file, path)`` for an external one. Nothing is followed, so no other file is opened."""
    import h5py

    out: dict[str, tuple[int, Any]] = {}

    def visit(name: bytes, info: Any) -> None:
        key = name.decode("utf-8", "replace")
        target: Any = None
        if info.type == h5py.h5l.TYPE_SOFT:
            target = f.id.links.get_val(name).decode("utf-8", "replace")
        elif info.type == h5py.h5l.TYPE_EXTERNAL:
            file, obj = f.id.links.get_val(name)
            target = (file.decode("utf-8", "replace"), obj.decode("utf-8", "replace"))
        out[key] = (info.type, target)

    f.id.links.visit(visit, info=True)
    return out


def _through_external(
    links: dict[str, tuple[int, Any]], target: str, base: str, depth: int = 0
) -> str | None:
    """The external link that the soft-link ``target`` (relative to group ``base``) passes
    through, or ``None`` when it stays in the file (or leads nowhere)."""
    import h5py

    if depth > _MAX_LINK_DEPTH:
        return None  # HDF5 itself refuses to resolve a chain this long
    path = target if target.startswith("/") else f"{base}/{target}"
    parts = [p for p in path.split("/") if p not in ("", ".")]
    current = ""
    for i, part in enumerate(parts):
        current = f"{current}/{part}" if current else part
        entry = links.get(current)
        if entry is None:
            return None  # dangling: HDF5 reads nothing through it
        kind, value = entry
        if kind == h5py.h5l.TYPE_EXTERNAL:
            return current
        if kind == h5py.h5l.TYPE_SOFT:
            rest = "/".join(parts[i + 1 :])
            parent = current.rpartition("/")[0]
            return _through_external(
                links, f"{value}/{rest}" if rest else value, f"/{parent}", depth + 1
            )
    return None


def _dataset_problems(name: str, dset: Any) -> list[str]:
    """How the dataset ``name`` would pull data from elsewhere (its creation properties only;
    no data is read)."""
    import h5py

    plist = dset.get_create_plist()
    problems: list[str] = []
    if plist.get_layout() == h5py.h5d.VIRTUAL:
        sources = sorted(
            {plist.get_virtual_filename(i) for i in range(plist.get_virtual_count())}
        )
        problems.append(
            f"dataset {name!r} is a virtual dataset (VDS) mapping data from "
            f"{', '.join(repr(x) for x in sources)}; {_SELF_CONTAINED_FIX}"
        )
    if plist.get_external_count() > 0:
        files = [
            plist.get_external(i)[0].decode("utf-8", "replace")
            for i in range(plist.get_external_count())
        ]
        problems.append(
            f"dataset {name!r} keeps its raw data in external file(s) "
            f"{', '.join(repr(x) for x in files)}; {_SELF_CONTAINED_FIX}"
        )
    for i in range(plist.get_nfilters()):
        code, _, _, label = plist.get_filter(i)
        if int(code) not in _BUILTIN_FILTERS:
            text = label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label)
            problems.append(
                f"dataset {name!r} uses HDF5 filter {int(code)} ({text or 'unnamed'}), which "
                "HDF5 would load from a plugin library; write it again without that filter "
                "(e.g. `h5repack -f NONE in.h5 out.h5`) or with deflate"
            )
    return problems


def _survey(f: Any) -> tuple[list[str], list[str]]:
    """``(datasets, problems)``: the names of the file's own datasets (hard links), and every
    way it would make HDF5 read another file. Reads no dataset data."""
    import h5py

    links = _links(f)
    datasets: list[str] = []
    problems: list[str] = []
    for name, (kind, target) in sorted(links.items()):
        if kind == h5py.h5l.TYPE_EXTERNAL:
            file, obj = target
            problems.append(
                f"{name!r} is an external link to {obj!r} in file {file!r}; "
                f"{_SELF_CONTAINED_FIX}"
            )
        elif kind == h5py.h5l.TYPE_SOFT:
            via = _through_external(links, target, f"/{name.rpartition('/')[0]}")
            if via is not None:
                problems.append(
                    f"{name!r} is a soft link to {target!r}, which leads out of the file "
                    f"through the external link {via!r}; {_SELF_CONTAINED_FIX}"
                )
        elif kind != h5py.h5l.TYPE_HARD:
            problems.append(
                f"{name!r} is a user-defined HDF5 link (type {kind}), which may point "
                f"anywhere; {_SELF_CONTAINED_FIX}"
            )
        else:
            obj_id = h5py.h5o.open(f.id, name.encode())
            if h5py.h5i.get_type(obj_id) == h5py.h5i.DATASET:
                datasets.append(name)
                problems.extend(_dataset_problems(name, obj_id))
    return datasets, problems


def external_data(path: str | os.PathLike[str]) -> list[str]:
    """Every way the HDF5 file at ``path`` would make HDF5 read another file, one message each
    (empty when it is self-contained, as a weights file must be).

    Found without following anything or reading any dataset's data: external links; soft
    links that lead through one; virtual datasets (VDS); datasets whose raw data lives in
    external files (``h5py``'s ``external=``); and filters other than HDF5's built-in ones
    and h5py's LZF, which HDF5 would load from a plugin library. :func:`read` refuses such a
    file and :func:`inspect` lists these among its problems.

    Raises:
        WeightsError: the file does not exist or is not HDF5.
    """
    p = Path(path)
    with _open(p) as f:
        return _survey(f)[1]


def _open(path: Path) -> Any:
    import h5py

    if not path.exists():
        raise WeightsError(str(path), ["file does not exist; check the path"])
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise WeightsError(
            str(path), [f"not a readable HDF5 file ({e}); it may be truncated or not HDF5"]
        ) from None


class _Unreadable:
    """A root attribute HDF5 could not read (an unsupported type, a damaged file)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


_Meta = dict[str, tuple[list[int], int]]  # dataset name -> (shape, nbytes), from metadata
_ROOT_ATTRS = ("format", "format_version", "config", "classes", "provenance")


def _load(
    path: Path,
) -> tuple[dict[str, Any], dict[str, np.ndarray], _Meta, list[str], bool]:
    """Raw root attributes, the datasets, every dataset's ``(shape, nbytes)`` from its metadata,
    the problems found in the file's structure, and whether the tensors were read (not when the
    file would read other files or has a dataset larger than this machine's memory: then no
    dataset's data is read at all)."""
    from npfrcnn._validate import format_bytes, memory_limit_bytes

    attrs: dict[str, Any] = {}
    tensors: dict[str, np.ndarray] = {}
    shapes: _Meta = {}
    with _open(path) as f:
        for key in _ROOT_ATTRS:
            try:
                if key in f.attrs:
                    attrs[key] = f.attrs[key]
            except Exception as e:  # an attribute type h5py cannot map: report it
                attrs[key] = _Unreadable(str(e) or type(e).__name__)
        try:
            names, problems = _survey(f)
        except Exception as e:  # a damaged object header or link table
            return attrs, tensors, shapes, [f"the file's structure could not be read ({e})"], False
        for n in names:
            d = f[n]
            nbytes = d.dtype.itemsize
            for side in d.shape:
                nbytes *= int(side)
            shapes[n] = ([int(side) for side in d.shape], nbytes)
        if problems:
            return attrs, tensors, shapes, problems, False
        limit = memory_limit_bytes()
        for n in names:
            d = f[n]
            nbytes = shapes[n][1]
            if nbytes > limit:
                problems.append(
                    f"tensor {n!r} has shape {tuple(d.shape)} ({format_bytes(nbytes)}), more "
                    f"than this machine's {format_bytes(limit)} of memory; the file is damaged "
                    "or not a weights file"
                )
        if problems:
            return attrs, tensors, shapes, problems, False
        for n in names:
            try:
                tensors[n] = np.asarray(f[n][()])
            except Exception as e:  # a damaged dataset: report it, keep going
                problems.append(f"tensor {n!r} could not be read ({e})")
    return attrs, tensors, shapes, problems, True


def _show(v: Any) -> str:
    """A short ``repr`` of an attribute value (NumPy scalars as plain Python values)."""
    text = repr(v.item() if isinstance(v, np.generic) else v)
    return text if len(text) <= 60 else text[:57] + "..."


def _text_attr(attrs: dict[str, Any], key: str, problems: list[str], what: str) -> str | None:
    """Root attribute ``key`` as text (``str``, or UTF-8 ``bytes``); ``None`` (with the problem
    recorded) when it is missing, unreadable, not text or not UTF-8."""
    import h5py

    if key not in attrs:
        problems.append(f"root attribute {key} is missing")
        return None
    v = attrs[key]
    if isinstance(v, np.ndarray) and v.shape == ():
        v = v[()]
    if isinstance(v, _Unreadable):
        problems.append(f"root attribute {key} could not be read ({v.reason})")
    elif isinstance(v, h5py.Empty):
        problems.append(f"root attribute {key} is empty (an HDF5 null attribute); {what}")
    elif isinstance(v, str):
        try:  # h5py decodes undecodable bytes to lone surrogates ("surrogateescape")
            v.encode("utf-8")
            return v
        except UnicodeEncodeError as e:
            problems.append(
                f"root attribute {key} is not valid UTF-8 text (undecodable byte at character "
                f"{e.start}); {what}"
            )
    elif isinstance(v, bytes):
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError as e:
            problems.append(
                f"root attribute {key} is not valid UTF-8 text ({e.reason} at byte {e.start}); "
                f"{what}"
            )
    elif isinstance(v, np.ndarray):
        problems.append(
            f"root attribute {key} must be a single string, got an array of shape "
            f"{v.shape} ({v.dtype}); {what}"
        )
    else:
        problems.append(
            f"root attribute {key} must be a string, got {type(v).__name__} {_show(v)}; {what}"
        )
    return None


def _json_attr(
    attrs: dict[str, Any], key: str, problems: list[str], what: str
) -> tuple[bool, Any]:
    """Root attribute ``key`` parsed as JSON text: ``(True, value)``, or ``(False, None)`` with
    the problem recorded."""
    text = _text_attr(attrs, key, problems, what)
    if text is None:
        return False, None
    try:
        return True, json.loads(text)
    except (ValueError, RecursionError) as e:
        problems.append(f"root attribute {key} is not valid JSON ({e}); {what}")
    return False, None


def _version_attr(attrs: dict[str, Any], problems: list[str]) -> int | None:
    if "format_version" not in attrs:
        problems.append("root attribute format_version is missing")
        return None
    v = attrs["format_version"]
    if isinstance(v, np.ndarray) and v.shape == ():
        v = v[()]
    if isinstance(v, _Unreadable):
        problems.append(f"root attribute format_version could not be read ({v.reason})")
    elif isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
        return int(v)
    elif isinstance(v, np.ndarray):
        problems.append(
            f"root attribute format_version must be a single integer, got an array of shape "
            f"{v.shape}; the file is damaged or was edited by hand"
        )
    else:
        problems.append(
            f"root attribute format_version must be an integer, got {type(v).__name__} "
            f"{_show(v)}; the file is damaged or was edited by hand"
        )
    return None


def _parse(
    path: Path, attrs: dict[str, Any], problems: list[str]
) -> tuple[AnyConfig | None, list[str] | None, dict[str, Any], int | None]:
    damaged = "the file is damaged or was edited by hand"
    fmt_problems: list[str] = []
    fmt = _text_attr(attrs, "format", fmt_problems, damaged)
    if fmt != FORMAT:
        problems.append(
            f"root attribute format is {fmt!r}, expected {FORMAT!r}; this is not an npfrcnn "
            "weights file (convert a checkpoint with `npfrcnn convert`)"
            + (f" ({fmt_problems[0]})" if fmt_problems and "missing" not in fmt_problems[0]
               else "")
        )
    version = _version_attr(attrs, problems)
    if version is not None and version not in READABLE_VERSIONS:
        problems.append(
            f"format_version {version} is not supported (this npfrcnn reads "
            f"{', '.join(map(str, READABLE_VERSIONS))}); upgrade npfrcnn or re-convert the "
            "weights"
        )
    config: AnyConfig | None = None
    cs = _text_attr(attrs, "config", problems, f"it must hold the model config as JSON; {damaged}")
    if cs is not None:
        try:
            config = config_from_json(cs)
            if version == 1 and isinstance(config, FPNConfig | Detectron2Config):
                problems.append(
                    "format_version 1 files hold C4 configs only, but this one holds an FPN "
                    "config; the file is damaged or was edited by hand"
                )
        except (ValueError, TypeError, KeyError, RecursionError) as e:
            problems.append(f"root attribute config is invalid: {e}")
    classes: list[str] | None = None
    ok, parsed = _json_attr(
        attrs, "classes", problems, f"it must be a JSON list of class names; {damaged}"
    )
    if ok:
        if isinstance(parsed, list) and all(isinstance(c, str) for c in parsed):
            classes = parsed
        else:
            problems.append(
                "root attribute classes is not a JSON list of names: not a list of strings"
            )
    if config is not None and classes is not None and len(classes) != config.num_classes:
        problems.append(
            f"{len(classes)} class names but config.num_classes is {config.num_classes}"
        )
    prov: dict[str, Any] = {}
    ok, parsed = _json_attr(attrs, "provenance", problems, f"it must be a JSON object; {damaged}")
    if ok and not isinstance(parsed, dict):
        problems.append("root attribute provenance is invalid: not a JSON object")
    elif ok:
        prov = parsed
        want = prov.get("tensors_sha256")
        if want is not None and not (
            isinstance(want, str)
            and len(want) == 64
            and all(c in "0123456789abcdef" for c in want)
        ):
            problems.append(
                f"root attribute provenance: tensors_sha256 must be 64 lower-case hex digits, "
                f"got {want!r}; {damaged}"
            )
            prov = {k: v for k, v in prov.items() if k != "tensors_sha256"}
    return config, classes, prov, version


def read(path: str | os.PathLike[str]) -> WeightsFile:
    """Read and validate a weights file.

    Checks, before reading any tensor, that the file is self-contained (:func:`external_data`)
    and that no dataset is larger than this machine's memory; then the root attributes (each
    of the right type: text, UTF-8, JSON that parses, a single integer ``format_version``),
    the config, the class names, every expected tensor (missing, unexpected, shape, dtype
    float32, finiteness) and the ``tensors_sha256`` integrity hash.

    Raises:
        WeightsError: one error listing every problem found, each naming its attribute, link,
            dataset or tensor.
    """
    p = Path(path)
    attrs, tensors, _, problems, complete = _load(p)
    config, classes, prov, version = _parse(p, attrs, problems)
    if config is not None and complete:
        problems.extend(check_tensors(config, tensors))
    want = prov.get("tensors_sha256")
    if want is not None and not problems:
        got = tensors_sha256(tensors)
        if got != want:
            problems.append(
                f"tensors_sha256 mismatch (file says {want[:16]}..., tensors hash to "
                f"{got[:16]}...): the tensors were changed after writing"
            )
    if problems:
        raise WeightsError(str(p), problems)
    assert config is not None and classes is not None and version is not None
    return WeightsFile(config, classes, tensors, prov, version)


def inspect(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Summary of a weights file for ``npfrcnn info``; never raises for a damaged file.

    Returns a dict with ``path``, ``format``, ``format_version``, ``config`` (dict or None),
    ``classes``, ``num_tensors``, ``total_bytes``, ``shapes`` (name -> list), ``provenance``,
    ``integrity`` (``"ok"``, ``"mismatch"`` or ``"unknown"``), ``self_contained`` (False when
    :func:`external_data` finds a way the file would read another file) and ``problems`` (list
    of str, empty when :func:`read` would succeed, the ``external_data`` messages included). A
    missing or non-HDF5 file gives ``problems`` only. A file that is not self-contained, or
    has a dataset larger than this machine's memory, has no tensor read: its ``shapes`` and
    sizes come from the datasets' metadata and its integrity is ``"unknown"``.
    """
    p = Path(path)
    out: dict[str, Any] = {
        "path": str(p), "format": None, "format_version": None, "config": None, "classes": [],
        "num_tensors": 0, "total_bytes": 0, "shapes": {}, "provenance": {},
        "integrity": "unknown", "self_contained": None, "problems": [],
    }
    try:
        attrs, tensors, meta, problems, complete = _load(p)
    except WeightsError as e:
        out["problems"] = e.problems
        return out
    out["self_contained"] = not any(_SELF_CONTAINED_FIX in m for m in problems)
    config, classes, prov, version = _parse(p, attrs, problems)
    out["format"] = _text_attr(attrs, "format", [], "")
    out["format_version"] = version
    out["config"] = config.to_dict() if config is not None else None
    out["classes"] = classes or []
    out["num_tensors"] = len(meta)
    out["total_bytes"] = int(sum(nbytes for _, nbytes in meta.values()))
    out["shapes"] = {n: shape for n, (shape, _) in sorted(meta.items())}
    out["provenance"] = prov
    if config is not None and complete:
        problems.extend(check_tensors(config, tensors))
    want = prov.get("tensors_sha256")
    if want is not None and complete:
        ok = tensors_sha256(tensors) == want
        out["integrity"] = "ok" if ok else "mismatch"
        if not ok:
            problems.append("tensors_sha256 mismatch: the tensors were changed after writing")
    out["problems"] = problems
    return out
