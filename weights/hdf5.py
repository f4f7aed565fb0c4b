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
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from npfrcnn.config import AnyConfig, FPNConfig, config_from_json

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
    if isinstance(config, FPNConfig):
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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["config"] = config.to_json()
            f.attrs["classes"] = json.dumps(classes)
            f.attrs["provenance"] = json.dumps(prov, sort_keys=True)
            for name in sorted(arrays):
                f.create_dataset(name, data=np.ascontiguousarray(arrays[name]))
        # mkstemp creates 0600; give the file the permissions a plain open() would have.
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _attr_str(f: Any, key: str) -> str | None:
    v = f.attrs.get(key)
    if v is None:
        return None
    if isinstance(v, bytes):
        return v.decode()
    return str(v)


def _load(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray], list[str]]:
    """Raw attributes and datasets of an HDF5 file, plus problems found in its structure."""
    import h5py

    problems: list[str] = []
    if not path.exists():
        raise WeightsError(str(path), ["file does not exist; check the path"])
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise WeightsError(
            str(path), [f"not a readable HDF5 file ({e}); it may be truncated or not HDF5"]
        ) from None
    attrs: dict[str, Any] = {}
    tensors: dict[str, np.ndarray] = {}
    with f:
        for key in ("format", "format_version", "config", "classes", "provenance"):
            attrs[key] = f.attrs.get(key)
        names: list[str] = []
        f.visititems(lambda n, obj: names.append(n) if isinstance(obj, h5py.Dataset) else None)
        for n in names:
            try:
                tensors[n] = np.asarray(f[n][()])
            except Exception as e:  # a damaged dataset: report it, keep going
                problems.append(f"tensor {n!r} could not be read ({e})")
    return attrs, tensors, problems


def _parse(
    path: Path, attrs: dict[str, Any], problems: list[str]
) -> tuple[AnyConfig | None, list[str] | None, dict[str, Any], int | None]:
    def s(v: Any) -> str | None:
        if v is None:
            return None
        return v.decode() if isinstance(v, bytes) else str(v)

    fmt = s(attrs.get("format"))
    if fmt != FORMAT:
        problems.append(
            f"root attribute format is {fmt!r}, expected {FORMAT!r}; this is not an npfrcnn "
            "weights file (convert a checkpoint with `npfrcnn convert`)"
        )
    version: int | None = None
    v = attrs.get("format_version")
    if v is None:
        problems.append("root attribute format_version is missing")
    else:
        version = int(v)
        if version not in READABLE_VERSIONS:
            problems.append(
                f"format_version {version} is not supported (this npfrcnn reads "
                f"{', '.join(map(str, READABLE_VERSIONS))}); upgrade npfrcnn or re-convert the "
                "weights"
            )
    config: AnyConfig | None = None
    cs = s(attrs.get("config"))
    if cs is None:
        problems.append("root attribute config is missing")
    else:
        try:
            config = config_from_json(cs)
            if version == 1 and isinstance(config, FPNConfig):
                problems.append(
                    "format_version 1 files hold C4 configs only, but this one holds an FPN "
                    "config; the file is damaged or was edited by hand"
                )
        except (ValueError, TypeError) as e:
            problems.append(f"root attribute config is invalid: {e}")
    classes: list[str] | None = None
    cl = s(attrs.get("classes"))
    if cl is None:
        problems.append("root attribute classes is missing")
    else:
        try:
            parsed = json.loads(cl)
            if not isinstance(parsed, list) or not all(isinstance(c, str) for c in parsed):
                raise ValueError("not a list of strings")
            classes = parsed
        except ValueError as e:
            problems.append(f"root attribute classes is not a JSON list of names: {e}")
    if config is not None and classes is not None and len(classes) != config.num_classes:
        problems.append(
            f"{len(classes)} class names but config.num_classes is {config.num_classes}"
        )
    prov: dict[str, Any] = {}
    ps = s(attrs.get("provenance"))
    if ps is None:
        problems.append("root attribute provenance is missing")
    else:
        try:
            p = json.loads(ps)
            if not isinstance(p, dict):
                raise ValueError("not a JSON object")
            prov = p
        except ValueError as e:
            problems.append(f"root attribute provenance is invalid: {e}")
    return config, classes, prov, version


def read(path: str | os.PathLike[str]) -> WeightsFile:
    """Read and validate a weights file.

    Checks the format attributes, the config, the class names, every expected tensor (missing,
    unexpected, shape, dtype float32, finiteness) and the ``tensors_sha256`` integrity hash.

    Raises:
        WeightsError: one error listing every problem found, each naming its tensor.
    """
    p = Path(path)
    attrs, tensors, problems = _load(p)
    config, classes, prov, version = _parse(p, attrs, problems)
    if config is not None:
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
    ``integrity`` (``"ok"``, ``"mismatch"`` or ``"unknown"``) and ``problems`` (list of str, empty
    when :func:`read` would succeed). A missing or non-HDF5 file gives ``problems`` only.
    """
    p = Path(path)
    out: dict[str, Any] = {
        "path": str(p), "format": None, "format_version": None, "config": None, "classes": [],
        "num_tensors": 0, "total_bytes": 0, "shapes": {}, "provenance": {},
        "integrity": "unknown", "problems": [],
    }
    try:
        attrs, tensors, problems = _load(p)
    except WeightsError as e:
        out["problems"] = e.problems
        return out
    config, classes, prov, version = _parse(p, attrs, problems)
    fmt = attrs.get("format")
    out["format"] = fmt.decode() if isinstance(fmt, bytes) else fmt
    out["format_version"] = version
    out["config"] = config.to_dict() if config is not None else None
    out["classes"] = classes or []
    out["num_tensors"] = len(tensors)
    out["total_bytes"] = int(sum(a.nbytes for a in tensors.values()))
    out["shapes"] = {n: list(a.shape) for n, a in sorted(tensors.items())}
    out["provenance"] = prov
    if config is not None:
        problems.extend(check_tensors(config, tensors))
    want = prov.get("tensors_sha256")
    if want is not None:
        ok = tensors_sha256(tensors) == want
        out["integrity"] = "ok" if ok else "mismatch"
        if not ok:
            problems.append("tensors_sha256 mismatch: the tensors were changed after writing")
    out["problems"] = problems
    return out
