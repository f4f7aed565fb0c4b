"""Read torch checkpoints and safetensors files without torch: numpy and the standard library only.

:func:`read_checkpoint` returns the state dict of a checkpoint as NumPy arrays. Formats, decided
by the file's content (never by its extension):

* ``"torch-zip"``: the zip archive ``torch.save`` writes (the default since torch 1.6):
  ``<top>/data.pkl`` (the pickle), ``<top>/data/<key>`` (raw storage bytes), ``<top>/byteorder``
  (``little`` when absent; ``big`` storages are byte-swapped), ``<top>/version``.
* ``"torch-legacy"``: the older stream ``torch.save(..., _use_new_zipfile_serialization=False)``
  writes (and torch < 1.6 wrote): magic number, protocol version and system-info pickles, the
  object pickle, the list of storage keys, then each storage as an int64 element count followed
  by its bytes (little-endian; big-endian legacy files are refused). Older torchvision
  checkpoints are in this format. The much older tar format (torch < 0.4) is refused.
* ``"safetensors"``: an 8-byte little-endian header length, a JSON header
  (``{name: {"dtype", "shape", "data_offsets"}, "__metadata__": {...}}``), then the bytes.

What a pickle may contain (the same idea as ``torch.load(weights_only=True)``): the unpickler's
``find_class`` resolves only an explicit allowlist of names, each to a stand-in of this module
(nothing named in a file is ever imported, and torch is never imported). Allowed:
``collections.OrderedDict`` and ``collections.Counter``; torch's tensor rebuild functions
(``torch._utils._rebuild_tensor``, ``_rebuild_tensor_v2``, ``_rebuild_tensor_v3``,
``_rebuild_parameter``, ``_rebuild_parameter_with_state``, ``torch._tensor._rebuild_from_type_v2``)
for dense tensors; the storage types (``torch.FloatStorage``, ..., ``torch.cuda.*Storage``,
``torch.storage.UntypedStorage``); ``torch.<dtype>``, ``torch.Size``, ``torch.device``,
``torch.Tensor``, ``torch.nn.parameter.Parameter``; ``builtins.set``, ``frozenset``,
``bytearray``, ``complex`` and ``_codecs.encode`` (plain containers and bytes);
``argparse.Namespace`` (the ``args`` entry of torchvision's reference training checkpoints: kept as
an inert record, argparse is not involved, and it is refused inside a state dict). Any other name
(``os.system``, ``builtins.eval``, a model class, ``numpy.core.multiarray._reconstruct``, ...) is
refused in ``find_class``, before anything in the file runs, with a :class:`CheckpointError`
naming it. Every stand-in checks its arguments and refuses ``BUILD`` (setting state), except the
state-dict stand-in, which takes only its ``_metadata``.

The state dict is the top-level object if that maps names to tensors; otherwise the first of
:data:`CONTAINER_KEYS` (``model``, ``state_dict``, ``model_state_dict``, ``module``) whose value is
a dict, as training checkpoints hold it beside ``optimizer``, ``lr_scheduler``, ``epoch``,
``args``, ... Those other entries are parsed (so they must be made of allowed names) and ignored:
their tensors are never read. Keys are returned as saved (no ``module.`` prefix stripped, no
legacy names renamed).

Tensors: every array is a fresh, C-contiguous, native-byte-order copy of exactly what the
tensor holds (its storage offset, size and stride honoured: views, tensors sharing one storage,
0-d tensors such as ``num_batches_tracked``, empty tensors). Dtypes are kept (float32, float16,
float64, int64, int32, int16, int8, uint8, uint16/32/64, bool, complex64/128), except that
**bfloat16 is returned as float32** (NumPy has no bfloat16; the conversion is exact, as bfloat16 is
the upper half of a float32). Tensors saved with torch's negative or conjugate bit get it applied.
Types NumPy cannot hold (float8, quantized, sparse, nested) are refused with the tensor named.
Where a tensor was saved on a GPU does not matter. Storages are read lazily from a memory map of
the file: only the state dict's own tensors are copied, once each.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import mmap
import os
import pickle
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CONTAINER_KEYS", "Checkpoint", "CheckpointError", "read_checkpoint"]

#: Keys of a training checkpoint under which the state dict is looked for, in this order.
CONTAINER_KEYS = ("model", "state_dict", "model_state_dict", "module")

_SAVE_FIX = (
    "Re-save the weights alone with torch: torch.save(model.state_dict(), path), or "
    "torch.save({'model': model.state_dict()}, path) for a training checkpoint"
)
_DAMAGED_FIX = "The file is damaged or incomplete: download or copy it again, or re-save it"

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_SAFETENSORS_MAX_HEADER = 100 * 2**20  # the safetensors library's own limit
_MAX_DIMS = 32  # NumPy 1.x's limit (2.x: 64); weights have at most 5
_ZIP_LOCAL_HEADER = struct.Struct("<4s5H3I2H")  # signature ... name length, extra length


class CheckpointError(ValueError):
    """A checkpoint cannot be read; the message names the file, the problem and the fix."""

    def __init__(self, path: str | os.PathLike[str], problem: str, fix: str = "") -> None:
        self.path = str(path)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.path}: {problem}." + (f" {fix}." if fix else ""))


@dataclass
class Checkpoint:
    """A state dict read from a checkpoint file.

    Attributes:
        tensors: state-dict key -> array (C-contiguous, native byte order, the tensor's own dtype;
            bfloat16 as float32), in the file's order.
        source_format: ``"torch-zip"``, ``"torch-legacy"`` or ``"safetensors"``.
        container: ``None`` for a bare state dict, else the key it was found under (``"model"``,
            ``"state_dict"``, ...).
        metadata_versions: module prefix -> ``version``, from the state dict's ``_metadata``
            (``""`` is the root module; ``"rpn.head": 2`` means new key names); empty if absent.
        sha256: hex digest of the file's bytes.
    """

    tensors: dict[str, np.ndarray] = field(repr=False)
    source_format: str
    container: str | None
    metadata_versions: dict[str, int]
    sha256: str


# Refusals raised from inside the unpickler (which knows no path); read_checkpoint names the file.
class _Refused(Exception):
    def __init__(self, problem: str, fix: str = _SAVE_FIX) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix


# Stand-ins -----------------------------------------------------------------------------------


class _Frozen:
    """A stand-in: no ``__dict__``, and a pickle's BUILD (setting state) on it is refused."""

    __slots__ = ()

    def __setstate__(self, state: object) -> None:
        raise _Refused(
            f"the pickle sets the state of {self!r}, which a tensor state dict never does"
        )


class _DType(_Frozen):
    """A torch dtype; ``stored`` is the NumPy type of its little-endian bytes, or None."""

    __slots__ = ("name", "stored", "itemsize")

    def __init__(self, name: str, stored: str | None, itemsize: int) -> None:
        self.name = name
        self.stored = None if stored is None else np.dtype(stored)
        self.itemsize = itemsize

    def __repr__(self) -> str:
        return f"torch.{self.name}"


# torch dtype name -> (legacy storage class, NumPy type of the stored bytes, itemsize).
_DTYPE_TABLE: dict[str, tuple[str | None, str | None, int]] = {
    "float64": ("DoubleStorage", "<f8", 8),
    "float32": ("FloatStorage", "<f4", 4),
    "float16": ("HalfStorage", "<f2", 2),
    "bfloat16": ("BFloat16Storage", "<u2", 2),  # converted to float32
    "int64": ("LongStorage", "<i8", 8),
    "int32": ("IntStorage", "<i4", 4),
    "int16": ("ShortStorage", "<i2", 2),
    "int8": ("CharStorage", "i1", 1),
    "uint8": ("ByteStorage", "u1", 1),
    "bool": ("BoolStorage", "?", 1),
    "complex64": ("ComplexFloatStorage", "<c8", 8),
    "complex128": ("ComplexDoubleStorage", "<c16", 16),
    "uint16": (None, "<u2", 2),
    "uint32": (None, "<u4", 4),
    "uint64": (None, "<u8", 8),
    # Known to torch, not to NumPy: refused when a tensor of the state dict has one.
    "complex32": (None, None, 4),
    "float8_e4m3fn": (None, None, 1),
    "float8_e5m2": (None, None, 1),
    "float8_e4m3fnuz": (None, None, 1),
    "float8_e5m2fnuz": (None, None, 1),
    "float8_e8m0fnu": (None, None, 1),
    "qint8": ("QInt8Storage", None, 1),
    "quint8": ("QUInt8Storage", None, 1),
    "qint32": ("QInt32Storage", None, 4),
    "quint4x2": ("QUInt4x2Storage", None, 1),
    "quint2x4": ("QUInt2x4Storage", None, 1),
}
_DTYPES = {name: _DType(name, stored, size) for name, (_, stored, size) in _DTYPE_TABLE.items()}


class _StorageType(_Frozen):
    """``torch.FloatStorage`` and kin; ``dtype`` is None for ``torch.storage.UntypedStorage``."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: _DType | None) -> None:
        self.name = name
        self.dtype = dtype

    def __repr__(self) -> str:
        return self.name

    @property
    def itemsize(self) -> int:
        return 1 if self.dtype is None else self.dtype.itemsize


class _Storage(_Frozen):
    """A storage the pickle names: bytes ``[offset, offset + nbytes)`` of root storage ``key``."""

    __slots__ = ("key", "stype", "numel", "offset", "nbytes")

    def __init__(self, key: str, stype: _StorageType, numel: int, offset: int, nbytes: int) -> None:
        self.key = key
        self.stype = stype
        self.numel = numel
        self.offset = offset
        self.nbytes = nbytes

    def __repr__(self) -> str:
        return f"storage {_short(self.key)}"


class _TensorRef(_Frozen):
    """A tensor as the pickle describes it; its bytes are read only if it is returned."""

    __slots__ = ("storage", "offset", "size", "stride", "dtype", "neg", "conj")

    def __init__(
        self,
        storage: _Storage,
        offset: int,
        size: tuple[int, ...],
        stride: tuple[int, ...],
        dtype: _DType,
        neg: bool,
        conj: bool,
    ) -> None:
        self.storage = storage
        self.offset = offset
        self.size = size
        self.stride = stride
        self.dtype = dtype
        self.neg = neg
        self.conj = conj

    def __repr__(self) -> str:
        return f"tensor {self.dtype!r} {list(self.size)}"


class _Marker(_Frozen):
    """``torch.Tensor`` / ``torch.nn.parameter.Parameter``: only a type to rebuild a tensor as."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name

    def __call__(self, *args: object) -> object:
        raise _Refused(f"the pickle calls {self.name}, which a tensor state dict never does")


class _Call(_Frozen):
    """An allowed callable global: ``fn`` is our own implementation of it."""

    __slots__ = ("name", "fn")

    def __init__(self, name: str, fn: Callable[..., object]) -> None:
        self.name = name
        self.fn = fn

    def __repr__(self) -> str:
        return self.name

    def __call__(self, *args: object) -> object:
        try:
            return self.fn(*args)
        except TypeError as e:  # wrong number of arguments
            raise _Refused(
                f"the pickle calls {self.name} with arguments it does not take ({e})", _DAMAGED_FIX
            ) from None


class _StateDict(dict[Any, Any]):
    """``collections.OrderedDict`` as torch pickles a state dict (a dict keeps insertion order)."""

    __slots__ = ("_metadata",)

    def __setstate__(self, state: object) -> None:
        if state is None:
            return
        if not isinstance(state, dict):
            raise _Refused("the pickle sets an OrderedDict's state to a non-dict", _DAMAGED_FIX)
        self._metadata = state.get("_metadata")


class _Namespace:
    """``argparse.Namespace`` (the ``args`` of training checkpoints): an inert record, ignored."""

    __slots__ = ("attrs",)

    def __setstate__(self, state: object) -> None:
        if not isinstance(state, dict):
            raise _Refused("the pickle sets a Namespace's state to a non-dict", _DAMAGED_FIX)
        self.attrs = state

    def __repr__(self) -> str:
        return "argparse.Namespace"


def _short(x: object, limit: int = 80) -> str:
    """A repr for a message that cannot blow up, of something the pickle built (a list whose
    items are one list, shared 30 levels deep, has a repr of 10**30 characters)."""
    if isinstance(x, str | bytes):
        text = repr(x[:limit])
    elif x is None or isinstance(x, bool | float | complex | _Frozen | _Namespace):
        text = repr(x)
    elif isinstance(x, int):
        text = repr(x) if x.bit_length() < 200 else f"an int of {x.bit_length()} bits"
    elif isinstance(x, tuple | list) and len(x) <= 6 and all(
        v is None or isinstance(v, str | bytes | float | _Frozen)
        or (isinstance(v, int) and v.bit_length() < 200) for v in x
    ):
        text = "(" + ", ".join(_short(v, 30) for v in x) + ")"
    else:
        size = f" of {len(x)} items" if isinstance(x, tuple | list | dict | set) else ""
        text = f"a {type(x).__name__}{size}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _int(x: object, what: str) -> int:
    if type(x) is not int or not -(2**63) <= x < 2**63:  # torch's sizes are int64
        raise _Refused(f"{what} is {_short(x)}, not an int64", _DAMAGED_FIX)
    return x


def _ints(x: object, what: str) -> tuple[int, ...]:
    if not isinstance(x, tuple | list):
        raise _Refused(f"{what} is {type(x).__name__}, not a tuple of ints", _DAMAGED_FIX)
    return tuple(_int(v, what) for v in x)


def _tensor(
    storage: object, offset: object, size: object, stride: object, dtype: _DType | None,
    metadata: object = None,
) -> _TensorRef:
    if not isinstance(storage, _Storage):
        raise _Refused(f"a tensor is built on a {type(storage).__name__}", _DAMAGED_FIX)
    off, shape = _int(offset, "storage_offset"), _ints(size, "size")
    strides = _ints(stride, "stride")
    if len(shape) != len(strides) or off < 0 or min(shape + strides, default=0) < 0:
        raise _Refused(
            f"a tensor has size {list(shape)}, stride {list(strides)}, offset {off}", _DAMAGED_FIX
        )
    if dtype is None:
        dtype = storage.stype.dtype
    if dtype is None:
        raise _Refused("a tensor on an untyped storage has no dtype", _DAMAGED_FIX)
    if storage.stype.dtype is not None and storage.stype.dtype is not dtype:
        raise _Refused(f"a {dtype!r} tensor is built on a {storage.stype!r}", _DAMAGED_FIX)
    flags = {}
    if metadata:
        if not isinstance(metadata, dict) or not set(metadata) <= {"neg", "conj"}:
            raise _Refused(f"a tensor carries metadata {_short(metadata)}, not neg/conj bits")
        flags = {k: bool(v) for k, v in metadata.items()}
    return _TensorRef(
        storage, off, shape, strides, dtype, flags.get("neg", False), flags.get("conj", False)
    )


def _rebuild_tensor(storage: object, offset: object, size: object, stride: object) -> _TensorRef:
    return _tensor(storage, offset, size, stride, None)


def _rebuild_tensor_v2(
    storage: object, offset: object, size: object, stride: object, requires_grad: object,
    backward_hooks: object, metadata: object = None,
) -> _TensorRef:
    return _tensor(storage, offset, size, stride, None, metadata)


def _rebuild_tensor_v3(
    storage: object, offset: object, size: object, stride: object, requires_grad: object,
    backward_hooks: object, dtype: object, metadata: object = None,
) -> _TensorRef:
    if not isinstance(dtype, _DType):
        raise _Refused(f"a tensor's dtype is a {type(dtype).__name__}", _DAMAGED_FIX)
    return _tensor(storage, offset, size, stride, dtype, metadata)


def _rebuild_parameter(data: object, requires_grad: object, backward_hooks: object) -> _TensorRef:
    if not isinstance(data, _TensorRef):
        raise _Refused(f"a Parameter holds {type(data).__name__}, not a tensor", _DAMAGED_FIX)
    return data


def _rebuild_parameter_with_state(
    data: object, requires_grad: object, backward_hooks: object, state: object
) -> _TensorRef:
    return _rebuild_parameter(data, requires_grad, backward_hooks)  # Python attributes: ignored


def _rebuild_from_type_v2(func: object, new_type: object, args: object, state: object) -> object:
    rebuild = next((r for r in _TENSOR_REBUILDERS.values() if r is func), None)
    if rebuild is None or not isinstance(new_type, _Marker):
        raise _Refused(
            f"_rebuild_from_type_v2 rebuilds {_short(func)} as {_short(new_type)}, not a tensor"
        )
    if not isinstance(args, tuple):
        raise _Refused("_rebuild_from_type_v2 gets non-tuple arguments", _DAMAGED_FIX)
    return rebuild(*args)  # the tensor's Python attributes (state) are ignored


def _ordered_dict(items: object = ()) -> _StateDict:
    d = _StateDict()
    for k, v in items.items() if isinstance(items, dict) else _pairs(items):
        d[k] = v
    return d


def _pairs(items: object) -> list[tuple[object, object]]:
    if not isinstance(items, list | tuple) or not all(
        isinstance(p, tuple | list) and len(p) == 2 for p in items
    ):
        raise _Refused("an OrderedDict is built from something other than pairs", _DAMAGED_FIX)
    return [(p[0], p[1]) for p in items]


def _counter(items: object = None) -> dict[object, object]:
    if items is None:
        return {}
    if not isinstance(items, dict):
        raise _Refused("a Counter is built from something other than a dict", _DAMAGED_FIX)
    return dict(items)


def _plain(kind: type, items: object = ()) -> object:
    if not isinstance(items, list | tuple | set | frozenset):
        raise _Refused(f"a {kind.__name__} is built from {type(items).__name__}", _DAMAGED_FIX)
    return kind(items)


def _encode(text: object = "", encoding: object = "latin1") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused("_codecs.encode is called with arguments other than (str, 'latin1')")
    return text.encode("latin-1")


def _bytearray(data: object = b"", encoding: object = None) -> bytearray:
    if isinstance(data, bytes) and encoding is None:
        return bytearray(data)
    if isinstance(data, str) and encoding in ("latin1", "latin-1"):
        return bytearray(data.encode("latin-1"))
    raise _Refused("bytearray is called with arguments other than bytes or (str, 'latin-1')")


def _complex(real: object = 0.0, imag: object = 0.0) -> complex:
    if not (isinstance(real, int | float) and isinstance(imag, int | float)):
        raise _Refused("complex is called with non-numbers")
    return complex(real, imag)


def _size(dims: object = ()) -> tuple[int, ...]:
    return _ints(dims, "torch.Size")


def _device(kind: object, index: object = None) -> str:
    if not isinstance(kind, str) or not (index is None or type(index) is int):
        raise _Refused("torch.device is called with arguments other than (str[, int])")
    return kind if index is None else f"{kind}:{index}"


_TENSOR_REBUILDERS = {
    name: _Call(f"torch._utils.{name}", fn)
    for name, fn in (
        ("_rebuild_tensor", _rebuild_tensor),
        ("_rebuild_tensor_v2", _rebuild_tensor_v2),
        ("_rebuild_tensor_v3", _rebuild_tensor_v3),
        ("_rebuild_parameter", _rebuild_parameter),
        ("_rebuild_parameter_with_state", _rebuild_parameter_with_state),
    )
}
_UNTYPED = _StorageType("torch.storage.UntypedStorage", None)


def _allowed_globals() -> dict[str, object]:
    allowed: dict[str, object] = {
        f"torch._utils.{name}": call for name, call in _TENSOR_REBUILDERS.items()
    }
    allowed.update({
        "torch._tensor._rebuild_from_type_v2": _Call(
            "torch._tensor._rebuild_from_type_v2", _rebuild_from_type_v2
        ),
        "torch.storage.UntypedStorage": _UNTYPED,
        "torch.UntypedStorage": _UNTYPED,
        "torch.Size": _Call("torch.Size", _size),
        "torch.device": _Call("torch.device", _device),
        "torch.Tensor": _Marker("torch.Tensor"),
        "torch.nn.parameter.Parameter": _Marker("torch.nn.parameter.Parameter"),
        "collections.OrderedDict": _Call("collections.OrderedDict", _ordered_dict),
        "collections.Counter": _Call("collections.Counter", _counter),
        "builtins.set": _Call("builtins.set", lambda items=(): _plain(set, items)),
        "builtins.frozenset": _Call(
            "builtins.frozenset", lambda items=(): _plain(frozenset, items)
        ),
        "builtins.bytearray": _Call("builtins.bytearray", _bytearray),
        "builtins.complex": _Call("builtins.complex", _complex),
        "_codecs.encode": _Call("_codecs.encode", _encode),
        "argparse.Namespace": _Namespace,
    })
    for name, (storage, _, _) in _DTYPE_TABLE.items():
        allowed[f"torch.{name}"] = _DTYPES[name]
        if storage is not None:
            for module in ("torch", "torch.cuda"):
                allowed[f"{module}.{storage}"] = _StorageType(f"{module}.{storage}", _DTYPES[name])
    return allowed


_ALLOWED = _allowed_globals()
# Names torch can load that this reader refuses with a reason more useful than "not allowed".
_UNSUPPORTED = {
    "torch._utils._rebuild_qtensor": "quantized tensors",
    "torch._utils._rebuild_sparse_tensor": "sparse tensors",
    "torch._utils._rebuild_nested_tensor": "nested tensors",
    "torch._utils._rebuild_meta_tensor_no_storage": "meta tensors (they hold no data)",
    "torch._utils._rebuild_wrapper_subclass": "tensor subclasses",
    "torch._utils._rebuild_device_tensor_from_numpy": "tensors rebuilt from NumPy arrays",
    "torch._utils._rebuild_device_tensor_from_cpu_tensor": "tensors of special devices",
}


class _Unpickler(pickle.Unpickler):
    """Resolves only :data:`_ALLOWED` names; storages go to ``on_storage``."""

    def __init__(self, file: Any, on_storage: Callable[[tuple[Any, ...]], _Storage]) -> None:
        super().__init__(file, encoding="utf-8")
        self._on_storage = on_storage

    def find_class(self, module: str, name: str) -> Any:
        if module == "__builtin__":  # written by Python 2
            module = "builtins"
        full = f"{module}.{name}"
        if full in _ALLOWED:
            return _ALLOWED[full]
        if full in _UNSUPPORTED:
            raise _Refused(
                f"the pickle holds {_UNSUPPORTED[full]} ({full}), which this reader does not "
                "support", "Save dense tensors: torch.save({k: v.to_dense() ... }, path)"
            )
        raise _Refused(
            f"refused to unpickle the global '{full}': only tensor state dicts are accepted "
            "(nothing in the file was run)", _SAVE_FIX
        )

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid:
            raise _Refused(f"the pickle names a persistent object {_short(pid)}", _DAMAGED_FIX)
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind == "module":
            raise _Refused("the file holds a whole pickled nn.Module, not a state dict")
        if kind != "storage":
            raise _Refused(f"the pickle names a persistent {_short(kind)} object", _DAMAGED_FIX)
        return self._on_storage(pid[1:])


# Reading -------------------------------------------------------------------------------------


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read the state dict of a torch checkpoint or safetensors file, without torch.

    Args:
        path: a file written by ``torch.save`` (zip or legacy format) or by safetensors. The format
            is decided by the content, not the extension.

    Returns:
        The :class:`Checkpoint`: tensors as NumPy arrays (see the module docstring for dtypes,
        bfloat16 -> float32 and what the pickle may contain).

    Raises:
        CheckpointError: the path is missing, not a regular file or empty; the file is in neither
            format, truncated or damaged (bad zip, missing ``data.pkl`` or storage record, a
            storage shorter than a tensor needs, bad safetensors offsets); the pickle names a
            global outside the allowlist (refused before anything runs); no state dict is found,
            or it maps something other than names to tensors; a tensor's dtype has no NumPy type.
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise CheckpointError(p, "the file does not exist", "Check the path") from None
    except OSError as e:
        problem = f"the file cannot be read ({e.strerror})"
        raise CheckpointError(p, problem, "Check the path") from None
    give_file = "Pass the .pth/.pt or .safetensors file itself"
    if stat.S_ISDIR(st.st_mode):
        raise CheckpointError(p, "is a folder, not a checkpoint file", give_file)
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(p, "is not a regular file", give_file)
    if st.st_size == 0:
        raise CheckpointError(p, "the file is empty", _DAMAGED_FIX)
    try:
        with open(p, "rb") as f:
            try:
                buf: mmap.mmap | bytes = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError):  # a file system without mmap
                buf = f.read()
            try:
                return _read(p, f, buf)
            finally:
                if isinstance(buf, mmap.mmap):
                    try:
                        buf.close()
                    except BufferError:  # an array still views it: closed when collected
                        pass
    except OSError as e:
        raise CheckpointError(p, f"the file cannot be read ({e})", "Check the file") from None


def _read(path: Path, f: io.BufferedReader, buf: mmap.mmap | bytes) -> Checkpoint:
    sha256 = hashlib.sha256(buf).hexdigest()
    head = bytes(buf[:16])
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        obj, materialize = _load_zip(path, f, buf)
        fmt = "torch-zip"
    elif _is_legacy(head):
        obj, materialize = _load_legacy(path, f, buf)
        fmt = "torch-legacy"
    elif head.startswith(b"\x80"):
        raise CheckpointError(
            path, "is a pickle, but not one torch.save wrote (no torch magic number)",
            "Save the weights with torch.save(model.state_dict(), path) or as safetensors",
        )
    elif len(buf) >= 262 and bytes(buf[257:262]) == b"ustar":
        raise CheckpointError(
            path, "is in the tar format of torch < 0.4, which this reader does not read",
            "Load it with torch and re-save it: torch.save(torch.load(path), new_path)",
        )
    elif head.startswith(b"\x89HDF\r\n\x1a\n"):
        raise CheckpointError(
            path, "is an HDF5 file, not a torch checkpoint",
            "npfrcnn weights files are read by npfrcnn.weights.read",
        )
    elif len(buf) >= 10 and bytes(buf[8:9]) == b"{":
        return _read_safetensors(path, buf, sha256)
    else:
        raise CheckpointError(
            path, f"is neither a torch.save file (zip or legacy) nor safetensors (it starts with "
            f"{head[:8]!r})", "Pass a .pth/.pt file written by torch.save or a .safetensors file",
        )
    container, state = _find_state_dict(path, obj)
    tensors = {}
    limit = 2 * len(buf) + 2**26  # bf16 -> f32 doubles; more means a broadcast (stride 0) view
    for key, ref in state.items():
        tensors[key] = materialize(key, ref, limit)
    return Checkpoint(tensors, fmt, container, _versions(state), sha256)


def _unpickle(path: Path, file: Any, on_storage: Callable[[tuple[Any, ...]], _Storage]) -> Any:
    try:
        return _Unpickler(file, on_storage).load()
    except _Refused as e:
        raise CheckpointError(path, e.problem, e.fix) from None
    except CheckpointError:
        raise
    except Exception as e:  # a damaged pickle fails in many ways; none may escape as such
        raise CheckpointError(
            path, f"its pickle cannot be read ({type(e).__name__}: {str(e)[:200]})", _DAMAGED_FIX
        ) from None


_Materialize = Callable[[str, _TensorRef, int], np.ndarray]


# torch zip format ----------------------------------------------------------------------------


def _load_zip(path: Path, f: io.BufferedReader, buf: mmap.mmap | bytes) -> tuple[Any, _Materialize]:
    try:
        zf = zipfile.ZipFile(f)
        names = zf.namelist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, struct.error) as e:
        raise CheckpointError(
            path, f"is a damaged or truncated zip archive ({e})", _DAMAGED_FIX
        ) from None
    tops = [n[: -len("/data.pkl")] for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if not tops:
        raise CheckpointError(
            path, "is a zip archive without <folder>/data.pkl, so not one torch.save wrote",
            "Pass a file written by torch.save",
        )
    top = names[0].split("/", 1)[0] if names[0].split("/", 1)[0] in tops else tops[0]
    if f"{top}/constants.pkl" in names or any(n.startswith(f"{top}/code/") for n in names):
        raise CheckpointError(
            path, "is a TorchScript archive (torch.jit.save), not a state dict",
            "Re-save its weights: torch.save(torch.jit.load(path).state_dict(), new_path)",
        )

    def member(name: str) -> memoryview:
        """The bytes of one member, without a copy when it is stored uncompressed."""
        try:
            info = zf.getinfo(name)
        except KeyError:
            raise CheckpointError(
                path, f"the zip archive has no record '{name}'", _DAMAGED_FIX
            ) from None
        try:
            if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 1:
                # torch never compresses; a re-zipped file may. Refuse a decompression bomb.
                if info.file_size > 1000 * info.compress_size + 2**20:
                    raise CheckpointError(
                        path, f"the zip record '{name}' would expand {info.compress_size} bytes "
                        f"to {info.file_size}", "Re-save it with torch.save (it does not compress)",
                    )
                return memoryview(zf.read(name))
            at = info.header_offset
            sig, *_, name_len, extra_len = _ZIP_LOCAL_HEADER.unpack_from(buf, at)
            start = at + _ZIP_LOCAL_HEADER.size + name_len + extra_len
            end = start + info.compress_size
            if sig != b"PK\x03\x04" or info.compress_size != info.file_size or end > len(buf):
                raise zipfile.BadZipFile("bad local header or member past the end of the file")
            data = memoryview(buf)[start:end]
            if zlib.crc32(data) != info.CRC:
                raise zipfile.BadZipFile("CRC check failed")
            return data
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, struct.error) as e:
            raise CheckpointError(
                path, f"the zip record '{name}' is damaged ({e})", _DAMAGED_FIX
            ) from None

    order = "little"
    if f"{top}/byteorder" in names:
        order = bytes(member(f"{top}/byteorder")).decode("ascii", "replace").strip()
        if order not in ("little", "big"):
            raise CheckpointError(path, f"its byteorder record says {_short(order)}", _DAMAGED_FIX)

    def on_storage(pid: tuple[Any, ...]) -> _Storage:
        if len(pid) != 4:
            raise _Refused(f"a storage is named by {len(pid) + 1} fields, not 5", _DAMAGED_FIX)
        stype, key, _location, numel = pid  # the location ('cpu', 'cuda:0') does not matter
        if not isinstance(stype, _StorageType) or not isinstance(key, str):
            raise _Refused(f"a storage is named by ({_short(stype)}, {_short(key)})", _DAMAGED_FIX)
        numel = _int(numel, "a storage's size")
        return _Storage(key, stype, numel, 0, numel * stype.itemsize)

    obj = _unpickle(path, io.BytesIO(member(f"{top}/data.pkl")), on_storage)
    cache: dict[str, memoryview] = {}

    def storage_bytes(s: _Storage) -> memoryview:
        if s.key not in cache:
            data = member(f"{top}/data/{s.key}")
            if len(data) < s.nbytes:
                raise CheckpointError(
                    path, f"storage record '{top}/data/{s.key}' holds {len(data)} bytes, but the "
                    f"pickle says it holds {s.numel} x {s.stype.itemsize} bytes", _DAMAGED_FIX,
                )
            cache[s.key] = data
        return cache[s.key][s.offset : s.offset + s.nbytes]

    def materialize(key: str, ref: _TensorRef, limit: int) -> np.ndarray:
        return _to_array(path, key, ref, storage_bytes(ref.storage), order == "big", limit)

    return obj, materialize


# torch legacy format -------------------------------------------------------------------------


def _is_legacy(head: bytes) -> bool:
    """Whether the file starts with the pickled torch magic number (a LONG1 of 10 bytes)."""
    return (
        head[:1] == b"\x80" and head[2:4] == b"\x8a\x0a"
        and int.from_bytes(head[4:14], "little", signed=True) == _LEGACY_MAGIC
    )


def _load_legacy(
    path: Path, f: io.BufferedReader, buf: mmap.mmap | bytes
) -> tuple[Any, _Materialize]:
    def refuse_storages(pid: tuple[Any, ...]) -> _Storage:
        raise _Refused("a header pickle names a storage", _DAMAGED_FIX)

    f.seek(0)
    magic = _unpickle(path, f, refuse_storages)
    protocol = _unpickle(path, f, refuse_storages)
    info = _unpickle(path, f, refuse_storages)
    if magic != _LEGACY_MAGIC or protocol != _LEGACY_PROTOCOL or not isinstance(info, dict):
        raise CheckpointError(
            path, f"has a legacy torch header of protocol {_short(protocol)}, not "
            f"{_LEGACY_PROTOCOL}",
            "Load it with torch and re-save it: torch.save(torch.load(path), new_path)",
        )
    if info.get("little_endian") is False:
        raise CheckpointError(
            path, "is a legacy torch file written on a big-endian machine",
            "Load it with torch and re-save it: torch.save(torch.load(path), new_path)",
        )
    roots: dict[str, _Storage] = {}

    def on_storage(pid: tuple[Any, ...]) -> _Storage:
        if len(pid) != 5:
            raise _Refused(f"a storage is named by {len(pid) + 1} fields, not 6", _DAMAGED_FIX)
        stype, key, _location, numel, view = pid
        if not isinstance(stype, _StorageType) or not isinstance(key, str):
            raise _Refused(f"a storage is named by ({_short(stype)}, {_short(key)})", _DAMAGED_FIX)
        numel = _int(numel, "a storage's size")
        root = roots.setdefault(key, _Storage(key, stype, numel, 0, numel * stype.itemsize))
        if root.stype is not stype or root.numel != numel:
            raise _Refused(f"storage {_short(key)} is named with two types or sizes", _DAMAGED_FIX)
        if view is None:
            return root
        if not (isinstance(view, tuple) and len(view) == 3 and isinstance(view[0], str)):
            raise _Refused(f"storage {_short(key)} has view metadata {_short(view)}", _DAMAGED_FIX)
        offset, size = _int(view[1], "a storage view's offset"), _int(view[2], "a view's size")
        if offset < 0 or size < 0 or offset + size > numel:
            raise _Refused(f"a view of storage {_short(key)} lies outside it", _DAMAGED_FIX)
        item = stype.itemsize
        return _Storage(key, stype, size, offset * item, size * item)

    obj = _unpickle(path, f, on_storage)
    keys = _unpickle(path, f, refuse_storages)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise CheckpointError(path, "its list of storage keys is damaged", _DAMAGED_FIX)
    # The storages follow, in the order of `keys`: an int64 element count, then the bytes.
    spans: dict[str, tuple[int, int]] = {}
    at = f.tell()
    for key in keys:
        if key not in roots:
            raise CheckpointError(path, f"lists storage {_short(key)}, which no tensor uses",
                                  _DAMAGED_FIX)
        s = roots[key]
        if at + 8 > len(buf):
            raise CheckpointError(
                path, f"is truncated: it ends before storage {_short(key)}", _DAMAGED_FIX
            )
        (count,) = struct.unpack_from("<q", buf, at)
        if count != s.numel or at + 8 + s.nbytes > len(buf):
            raise CheckpointError(
                path, f"storage {_short(key)} should hold {s.numel} elements ({s.nbytes} bytes "
                f"from offset {at + 8}); the file says {count}, and has {len(buf) - at - 8} bytes "
                "left",
                _DAMAGED_FIX,
            )
        spans[key] = (at + 8, s.nbytes)
        at += 8 + s.nbytes
    missing = sorted(set(roots) - set(spans))
    if missing:
        raise CheckpointError(path, f"has no data for storage(s) {missing[:5]}", _DAMAGED_FIX)
    whole = memoryview(buf)

    def materialize(key: str, ref: _TensorRef, limit: int) -> np.ndarray:
        start, _ = spans[ref.storage.key]
        data = whole[start + ref.storage.offset : start + ref.storage.offset + ref.storage.nbytes]
        return _to_array(path, key, ref, data, False, limit)

    return obj, materialize


# Tensors -------------------------------------------------------------------------------------


def _to_array(
    path: Path, key: str, ref: _TensorRef, data: memoryview, big_endian: bool, limit: int
) -> np.ndarray:
    """Copy tensor ``ref`` out of its storage bytes ``data``: C-contiguous, native byte order."""
    dt = ref.dtype
    if dt.stored is None:
        raise CheckpointError(
            path, f"tensor '{key}' has dtype {dt!r}, which NumPy cannot hold",
            "Convert it before saving, e.g. sd[k] = sd[k].float()",
        )
    if len(ref.size) > _MAX_DIMS:
        raise CheckpointError(
            path, f"tensor '{key}' has {len(ref.size)} dimensions, more than {_MAX_DIMS}",
            _DAMAGED_FIX,
        )
    stored = dt.stored.newbyteorder(">") if big_endian and dt.itemsize > 1 else dt.stored
    native = stored.newbyteorder("=")
    available = len(data) // dt.itemsize
    count = math.prod(ref.size)
    if count == 0:
        try:
            out = np.empty(ref.size, native)
        except (ValueError, OverflowError, MemoryError):  # e.g. size [0, 10**30]
            raise CheckpointError(
                path, f"tensor '{key}' has size {list(ref.size)}", _DAMAGED_FIX
            ) from None
    else:
        last = sum((n - 1) * s for n, s in zip(ref.size, ref.stride, strict=True))
        extent = ref.offset + 1 + last  # elements of the storage the tensor reaches
        if extent > available:
            raise CheckpointError(
                path, f"tensor '{key}' (size {list(ref.size)}, stride {list(ref.stride)}, offset "
                f"{ref.offset}) needs {extent} elements of its {ref.storage!r}, which holds "
                f"{available}", _DAMAGED_FIX,
            )
        if count * max(dt.itemsize, 4) > limit:
            raise CheckpointError(
                path, f"tensor '{key}' of size {list(ref.size)} is a broadcast view needing far "
                "more memory than the file holds", "Save it as t.contiguous() or t.clone()",
            )
        base = np.frombuffer(data, dtype=stored, count=available)
        view = np.lib.stride_tricks.as_strided(
            base[ref.offset :], shape=ref.size,
            strides=tuple(s * dt.itemsize for s in ref.stride), writeable=False,
        )
        out = np.array(view, dtype=native, order="C", copy=True)
        del view, base
    if dt.name == "bfloat16":  # exact: a bfloat16 is the upper 16 bits of a float32
        out = (out.astype(np.uint32) << 16).view(np.float32)
    if ref.conj:
        out = np.conj(out)
    if ref.neg:
        out = np.negative(out)
    return out


def _find_state_dict(path: Path, obj: object) -> tuple[str | None, dict[str, _TensorRef]]:
    """The state dict: ``obj`` itself, or the first of CONTAINER_KEYS holding a dict."""
    if not isinstance(obj, dict):
        raise CheckpointError(
            path, f"holds {_describe(obj)}, not a state dict (a dict of tensors)", _SAVE_FIX
        )
    container = None
    if not (obj and all(isinstance(v, _TensorRef) for v in obj.values())):
        container = next((k for k in CONTAINER_KEYS if isinstance(obj.get(k), dict)), None)
        if container is None and not any(isinstance(v, _TensorRef) for v in obj.values()):
            keys = ", ".join(_short(k) for k in list(obj)[:10]) or "none"
            raise CheckpointError(
                path, f"holds no state dict: no tensors at the top level and none of "
                f"{list(CONTAINER_KEYS)} among its keys ({keys})", _SAVE_FIX,
            )
    state = obj if container is None else obj[container]
    where = "" if container is None else f" under '{container}'"
    bad = [
        f"{_short(k)} -> {_describe(v)}" for k, v in state.items()
        if not isinstance(k, str) or not isinstance(v, _TensorRef)
    ]
    if bad:
        raise CheckpointError(
            path, f"its state dict{where} has {len(bad)} entries that are not name -> tensor: "
            f"{'; '.join(bad[:5])}", _SAVE_FIX,
        )
    if not state:
        raise CheckpointError(path, f"its state dict{where} holds no tensors", _SAVE_FIX)
    return container, state


def _describe(v: object) -> str:
    if isinstance(v, _Frozen | _Namespace):
        return repr(v)
    if v is None:
        return "None"
    kind = "OrderedDict" if isinstance(v, _StateDict) else type(v).__name__
    article = "an" if kind[0] in "aeiouAEIOU" else "a"
    return f"{article} {kind}" + (f" of {len(v)} entries" if isinstance(v, dict) else "")


def _versions(state: Mapping[str, object]) -> dict[str, int]:
    meta = getattr(state, "_metadata", None)
    if not isinstance(meta, dict):
        return {}
    return {
        prefix: entry["version"] for prefix, entry in meta.items()
        if isinstance(prefix, str) and isinstance(entry, dict)
        and type(entry.get("version")) is int
    }


# safetensors ---------------------------------------------------------------------------------

_SAFETENSORS_DTYPES: dict[str, str | None] = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4",
    "I16": "<i2", "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
    "C64": "<c8",
    "F8_E4M3": None, "F8_E5M2": None, "F8_E4M3FNUZ": None, "F8_E5M2FNUZ": None,
}


def _read_safetensors(path: Path, buf: mmap.mmap | bytes, sha256: str) -> Checkpoint:
    def bad(problem: str) -> CheckpointError:
        return CheckpointError(path, f"is not a valid safetensors file: {problem}", _DAMAGED_FIX)

    (n,) = struct.unpack_from("<Q", buf, 0)
    if n > len(buf) - 8 or n > _SAFETENSORS_MAX_HEADER:
        raise bad(f"its header claims {n} bytes, but the file has {len(buf) - 8} after the length")

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        d = dict(pairs)
        if len(d) != len(pairs):
            raise ValueError("a name appears twice in the header")
        return d

    try:
        header = json.loads(bytes(buf[8 : 8 + n]).decode("utf-8"), object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, ValueError) as e:
        raise bad(f"its JSON header cannot be read ({e})") from None
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    header.pop("__metadata__", None)
    start, size = 8 + n, len(buf) - 8 - n
    whole = memoryview(buf)
    tensors: dict[str, np.ndarray] = {}
    for name, entry in header.items():
        if not (
            isinstance(entry, dict) and isinstance(entry.get("dtype"), str)
            and isinstance(entry.get("shape"), list) and isinstance(entry.get("data_offsets"), list)
            and len(entry["data_offsets"]) == 2
            and all(type(x) is int and x >= 0 for x in entry["shape"] + entry["data_offsets"])
            and len(entry["shape"]) <= _MAX_DIMS
        ):
            raise bad(f"tensor '{name}' has header entry {_short(entry)}")
        code, shape = entry["dtype"], tuple(entry["shape"])
        begin, end = entry["data_offsets"]
        if code not in _SAFETENSORS_DTYPES:
            raise bad(f"tensor '{name}' has unknown dtype {_short(code)}")
        stored = _SAFETENSORS_DTYPES[code]
        if stored is None:
            raise CheckpointError(
                path, f"tensor '{name}' has dtype {code}, which NumPy cannot hold",
                "Convert it to float16 or float32 before saving",
            )
        dt = np.dtype(stored)
        if not begin <= end <= size:
            raise bad(f"tensor '{name}' spans bytes [{begin}, {end}) of a {size}-byte data section"
                      " (truncated?)")
        if end - begin != math.prod(shape) * dt.itemsize:
            raise bad(f"tensor '{name}' of {code} {list(shape)} needs "
                      f"{math.prod(shape) * dt.itemsize} bytes, its offsets give {end - begin}")
        a = np.frombuffer(whole[start + begin : start + end], dtype=dt).reshape(shape)
        out = np.array(a, dtype=dt.newbyteorder("="), order="C", copy=True)
        if code == "BF16":
            out = (out.astype(np.uint32) << 16).view(np.float32)
        tensors[name] = out
    if not tensors:
        raise CheckpointError(path, "the safetensors file holds no tensors", _SAVE_FIX)
    return Checkpoint(tensors, "safetensors", None, {}, sha256)
