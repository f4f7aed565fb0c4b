"""Read Detectron2 model-zoo ``.pkl`` files without torch, and without running anything in them.

Detectron2's ``DetectionCheckpointer._load_file`` reads a ``.pkl`` with ``pickle.load(f,
encoding="latin1")``; a file is in the "Detectron2 Model Zoo" format when its top level has both
``"model"`` (a dict of state-dict key -> NumPy array) and ``"__author__"``; otherwise Detectron2
takes it for a Caffe2 / Detectron1 ``blobs`` pickle. :func:`load` reads the same pickles
(protocols 0 to 5, Python 2 ones included: ``encoding="latin1"``), but its ``find_class``
resolves only an explicit allowlist of globals (:data:`PICKLE_GLOBALS`), each to a stand-in of
this module: nothing named in a file is ever imported, and nothing the file names runs.

Allowed globals, and what their stand-ins accept:

* ``numpy.core.multiarray._reconstruct`` / ``numpy._core.multiarray._reconstruct`` with
  ``numpy.ndarray``, then the array's state ``(1, shape, dtype, is_fortran, data)``
  (protocols 0 to 4): numpy's ``ndarray.__reduce__``;
* ``numpy.core.numeric._frombuffer`` / ``numpy._core.numeric._frombuffer`` ``(buffer, dtype,
  shape, order[, axis_order])``: numpy's protocol-5 ``__reduce_ex__`` (in-band buffers);
* ``numpy.dtype`` ``(code, align, copy)`` then its state ``(3, byteorder, None, None, None, -1,
  -1, flags)``: **numeric dtypes only** (bool, int8..int64, uint8..uint64, float16/32/64,
  complex64/128, either byte order); object, structured (void), string, datetime dtypes are
  refused;
* ``numpy.core.multiarray.scalar`` / ``numpy._core.multiarray.scalar`` ``(dtype, bytes)``: NumPy
  scalars;
* ``collections.OrderedDict`` (pairs, or items set afterwards); ``_codecs.encode(str,
  "latin1")`` and ``builtins.bytes()`` (how protocols 0-2 write bytes); ``builtins.set``,
  ``frozenset``, ``bytearray``, ``complex`` (plain containers and numbers; ``__builtin__`` is
  Python 2's name for ``builtins``).

Any other global (``os.system``, ``builtins.eval``, a class, ``copyreg._reconstructor``,
``numpy.load``...) is refused in ``find_class``, when the pickle names it and so before anything
in the file runs, with a :class:`~npfrcnn.weights.torch_checkpoint.CheckpointError` naming it and
the fix. torch globals (``torch._utils._rebuild_tensor_v2``: torch tensors pickled with
``pickle.dump``) get their own refusal: re-save the arrays as NumPy, or pass the ``.pth`` that
``torch.save`` wrote (:func:`npfrcnn.weights.torch_checkpoint.read_checkpoint` reads those).
Every stand-in checks its arguments, and a pickle's ``BUILD`` (setting state) is accepted only
where numpy's own pickles use it (a dtype's and an array's state, once each).

Arrays come back as fresh, C-contiguous, native-byte-order NumPy arrays holding exactly the
pickled values (big-endian data byte-swapped, Fortran-order and protocol-5 ``"K"``-order data
laid out as numpy would), never views of the file.

:func:`read_detectron2_pickle` reads a file and finds its state dict: the model-zoo format
``{"model": {key: array}, "__author__": ...}``, ``{"model": {...}}`` without an author, or a bare
``{key: array}`` dict. Caffe2 / Detectron1 pickles (a ``"blobs"`` dict, or keys such as
``res2_0_branch2a_w``) are refused: their names are not Detectron2's, and this reader does not map
them.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from npfrcnn.weights.torch_checkpoint import CheckpointError

__all__ = [
    "PICKLE_GLOBALS", "Detectron2Pickle", "is_plain_pickle", "load", "loads",
    "read_detectron2_pickle",
]

_DAMAGED_FIX = "The file is damaged or incomplete: download or copy it again, or re-save it"
_NUMPY_FIX = (
    "Save the weights as NumPy arrays: pickle.dump({'model': {k: v.cpu().numpy() for k, v in "
    "model.state_dict().items()}, '__author__': 'me'}, f), as Detectron2's model zoo files are"
)
_TORCH_FIX = (
    "Pass the .pth file torch.save wrote instead (npfrcnn reads it without torch), or re-save "
    "the tensors as NumPy arrays: pickle.dump({'model': {k: v.cpu().numpy() for k, v in "
    "state_dict.items()}, '__author__': 'me'}, f)"
)
_CAFFE2_FIX = (
    "Load it in Detectron2 (DetectionCheckpointer maps Caffe2 names by heuristics) and save the "
    "model's state dict: torch.save({'model': model.state_dict()}, 'model.pth'), then convert "
    "that file"
)
_MAX_DIMS = 32  # NumPy 1.x's limit; weights have at most 4
_MAX_DEPTH = 64  # nesting of containers in a weights pickle is 2 or 3
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _Refused(Exception):
    """A refusal raised inside the unpickler (which knows no path); :func:`load` names the file."""

    def __init__(self, problem: str, fix: str = _NUMPY_FIX) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix


def _short(x: object, limit: int = 60) -> str:
    """A bounded description of something the pickle built (never a huge or recursive repr)."""
    if isinstance(x, str | bytes | bytearray):
        text = repr(x[:limit])
    elif x is None or isinstance(x, bool | float | complex):
        text = repr(x)
    elif isinstance(x, int):
        text = repr(x) if x.bit_length() < 200 else f"an int of {x.bit_length()} bits"
    elif isinstance(x, _Frozen):
        text = repr(x)
    else:
        size = f" of {len(x)} items" if isinstance(x, tuple | list | dict | set) else ""
        text = f"a {type(x).__name__}{size}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# Stand-ins -----------------------------------------------------------------------------------


class _Frozen:
    """A stand-in: no ``__dict__``, unhashable, and a pickle's BUILD on it is refused."""

    __slots__ = ()
    __hash__ = None  # type: ignore[assignment]  # numpy arrays are unhashable too

    def __setstate__(self, state: object) -> None:
        raise _Refused(
            f"the pickle sets the state of {self!r}, which numpy's own pickles never do",
            _DAMAGED_FIX,
        )


class _Marker(_Frozen):
    """``numpy.ndarray``: only an argument of ``_reconstruct``; calling it is refused."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name

    def __call__(self, *args: object) -> object:
        raise _Refused(f"the pickle calls {self.name}, which numpy's own pickles never do")


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


_NDARRAY = _Marker("numpy.ndarray")
_DTYPE_CODE = re.compile(r"^[<>|=]?(?:b1|[iu][1248]|f[248]|c(?:8|16))$")


class _DType(_Frozen):
    """A ``numpy.dtype`` the pickle builds: numeric only; its byte order comes with its state."""

    __slots__ = ("code", "dtype", "built")

    def __init__(self, code: str) -> None:
        self.code = code
        self.dtype = np.dtype(code)
        self.built = False

    def __repr__(self) -> str:
        return f"dtype {self.dtype.str!r}"

    def __setstate__(self, state: object) -> None:
        if self.built:
            super().__setstate__(state)
        if not isinstance(state, tuple) or len(state) not in (8, 9) or state[0] not in (3, 4):
            raise _Refused(f"a dtype has the state {_short(state)}, not numpy's (version 3)",
                           _DAMAGED_FIX)
        order, subarray, names, fields, elsize, alignment, flags = state[1:8]
        if order not in ("<", ">", "|", "=") or subarray is not None or names is not None \
                or fields is not None or type(elsize) is not int or type(alignment) is not int \
                or type(flags) is not int:
            raise _Refused(
                f"dtype {self.code!r} has the state {_short(state, 120)}: only plain numeric "
                "dtypes are accepted (no fields, sub-arrays or structured types)"
            )
        if elsize not in (-1, self.dtype.itemsize):
            raise _Refused(f"dtype {self.code!r} claims an item size of {elsize}", _DAMAGED_FIX)
        if len(state) == 9 and state[8] not in (None, {}):
            raise _Refused(f"dtype {self.code!r} carries metadata {_short(state[8])}")
        if order in ("<", ">") and self.dtype.itemsize > 1:
            self.dtype = self.dtype.newbyteorder(order)
        self.built = True


def _dtype(code: object, align: object = False, copy: object = True) -> _DType:
    if isinstance(code, bytes):
        code = code.decode("latin-1")
    if not isinstance(code, str) or not (align in (0, 1) and copy in (0, 1)):
        raise _Refused(f"numpy.dtype is called with {_short((code, align, copy))}", _DAMAGED_FIX)
    if not _DTYPE_CODE.match(code):
        kind = code.lstrip("<>|=")[:1]
        what = {
            "O": "an object dtype: object arrays can hold any Python object, never weights",
            "V": "a structured (void) dtype: weights are plain numeric arrays",
            "S": "a byte-string dtype", "U": "a unicode-string dtype", "a": "a string dtype",
            "M": "a datetime dtype", "m": "a timedelta dtype",
        }.get(kind, "not a numeric dtype this reader accepts")
        raise _Refused(
            f"the pickle holds an array of dtype {code!r}, {what} (accepted: bool, int, uint, "
            "float16/32/64, complex64/128)"
        )
    return _DType(code)


class _Pending(_Frozen):
    """An array or scalar being built; ``value`` is the NumPy object once complete."""

    __slots__ = ("what", "value", "open")

    def __init__(self, what: str, value: object = None, open: bool = False) -> None:
        self.what = what
        self.value = value
        self.open = open  # waiting for its state (numpy's _reconstruct, then BUILD)

    def __repr__(self) -> str:
        if isinstance(self.value, np.ndarray):
            return f"array {self.value.dtype.str} {list(self.value.shape)}"
        return self.what

    def __setstate__(self, state: object) -> None:
        if not self.open:
            super().__setstate__(state)
        self.open = False
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _Refused(f"an array has the state {_short(state)}, not numpy's", _DAMAGED_FIX)
        if len(state) == 5:
            if state[0] != 1:
                raise _Refused(f"an array has state version {_short(state[0])}, not 1",
                               _DAMAGED_FIX)
            state = state[1:]
        shape, dt, fortran, data = state
        if fortran not in (0, 1):
            raise _Refused(f"an array's is_fortran flag is {_short(fortran)}", _DAMAGED_FIX)
        if isinstance(data, list):
            raise _Refused("the pickle holds an object array (its items are Python objects)")
        self.value = _array(data, dt, shape, "F" if fortran else "C")


def _shape(x: object) -> tuple[int, ...]:
    if not isinstance(x, tuple | list) or len(x) > _MAX_DIMS or not all(
        type(n) is int and 0 <= n < 2**63 for n in x
    ):
        raise _Refused(f"an array has the shape {_short(x)}", _DAMAGED_FIX)
    return tuple(x)


def _array(
    data: object, dt: object, shape: object, order: str, axis_order: object = None
) -> np.ndarray:
    """A fresh C-contiguous native-order array from the pickled bytes (numpy's own layouts)."""
    if not isinstance(dt, _DType):
        raise _Refused(f"an array's dtype is {_short(dt)}", _DAMAGED_FIX)
    dims = _shape(shape)
    if isinstance(data, str):  # protocol 0-2 pickles of Python 2, read with encoding="latin1"
        try:
            data = data.encode("latin-1")
        except UnicodeEncodeError:
            raise _Refused("an array's data is text, not bytes", _DAMAGED_FIX) from None
    if not isinstance(data, bytes | bytearray):
        raise _Refused(f"an array's data is {_short(data)}, not bytes", _DAMAGED_FIX)
    count = math.prod(dims)
    if count * dt.dtype.itemsize != len(data):
        raise _Refused(
            f"an array of {dt.dtype.str} {list(dims)} needs {count * dt.dtype.itemsize} bytes, "
            f"the pickle holds {len(data)}", _DAMAGED_FIX,
        )
    flat = np.frombuffer(data, dtype=dt.dtype, count=count)
    if order == "K":
        if not (isinstance(axis_order, tuple | list) and sorted(axis_order) == list(
                range(len(dims))) and all(type(a) is int for a in axis_order)):
            raise _Refused(f"an array's axis order is {_short(axis_order)}", _DAMAGED_FIX)
        view = flat.reshape(dims, order="C").transpose(tuple(axis_order))
    else:
        view = flat.reshape(dims, order="F" if order == "F" else "C")
    return np.array(view, dtype=dt.dtype.newbyteorder("="), order="C", copy=True)


def _reconstruct(subtype: object, shape: object, code: object) -> _Pending:
    if subtype is not _NDARRAY:
        raise _Refused(f"numpy's _reconstruct builds {_short(subtype)}, not a numpy.ndarray")
    _shape(shape)
    if code not in (b"b", "b"):
        raise _Refused(f"numpy's _reconstruct is called with {_short(code)}", _DAMAGED_FIX)
    return _Pending("an array without its state", open=True)


def _frombuffer(
    buf: object, dt: object, shape: object, order: object, axis_order: object = None
) -> _Pending:
    if order not in ("C", "F", "K") or (order != "K" and axis_order is not None):
        raise _Refused(f"numpy's _frombuffer is called with order {_short(order)}",
                       _DAMAGED_FIX)
    if not isinstance(buf, bytes | bytearray):
        raise _Refused(f"numpy's _frombuffer reads {_short(buf)}, not bytes", _DAMAGED_FIX)
    return _Pending("array", _array(buf, dt, shape, str(order), axis_order))


def _scalar(dt: object, data: object = None) -> _Pending:
    if not isinstance(dt, _DType):
        raise _Refused(f"a numpy scalar's dtype is {_short(dt)}", _DAMAGED_FIX)
    value = _array(data, dt, (), "C")
    return _Pending("scalar", value[()])


class _ODict(dict[Any, Any]):
    """``collections.OrderedDict`` (a dict keeps insertion order)."""

    __slots__ = ()

    def __setstate__(self, state: object) -> None:  # Python 2: the instance's __dict__
        if state not in (None, {}):
            raise _Refused(f"an OrderedDict gets the state {_short(state)}", _DAMAGED_FIX)


def _ordered_dict(items: object = ()) -> _ODict:
    d = _ODict()
    if isinstance(items, dict):
        d.update(items)
        return d
    if not isinstance(items, list | tuple) or not all(
        isinstance(p, tuple | list) and len(p) == 2 for p in items
    ):
        raise _Refused("an OrderedDict is built from something other than pairs", _DAMAGED_FIX)
    for k, v in items:
        d[k] = v
    return d


def _plain(kind: type) -> Callable[..., object]:
    def build(items: object = ()) -> object:
        if not isinstance(items, list | tuple | set | frozenset):
            raise _Refused(f"a {kind.__name__} is built from {_short(items)}", _DAMAGED_FIX)
        return kind(items)

    return build


def _encode(text: object = "", encoding: object = "latin1") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused("_codecs.encode is called with arguments other than (str, 'latin1')",
                       _DAMAGED_FIX)
    return text.encode("latin-1")


def _bytes(data: object = b"") -> bytes:
    if not isinstance(data, bytes | bytearray):
        raise _Refused(f"bytes is called with {_short(data)}", _DAMAGED_FIX)
    return bytes(data)


def _bytearray(data: object = b"", encoding: object = None) -> bytearray:
    if isinstance(data, bytes) and encoding is None:
        return bytearray(data)
    if isinstance(data, str) and encoding in ("latin1", "latin-1"):
        return bytearray(data.encode("latin-1"))
    raise _Refused("bytearray is called with arguments other than bytes or (str, 'latin-1')",
                   _DAMAGED_FIX)


def _complex(real: object = 0.0, imag: object = 0.0) -> complex:
    if not (isinstance(real, int | float) and isinstance(imag, int | float)) or isinstance(
        real, bool
    ) or isinstance(imag, bool):
        raise _Refused("complex is called with non-numbers", _DAMAGED_FIX)
    return complex(real, imag)


def _allowed() -> dict[str, object]:
    out: dict[str, object] = {
        "numpy.ndarray": _NDARRAY, "numpy.dtype": _Call("numpy.dtype", _dtype),
    }
    for core in ("numpy.core", "numpy._core"):
        out[f"{core}.multiarray._reconstruct"] = _Call(
            f"{core}.multiarray._reconstruct", _reconstruct
        )
        out[f"{core}.multiarray.scalar"] = _Call(f"{core}.multiarray.scalar", _scalar)
        out[f"{core}.numeric._frombuffer"] = _Call(f"{core}.numeric._frombuffer", _frombuffer)
    out.update({
        "collections.OrderedDict": _Call("collections.OrderedDict", _ordered_dict),
        "_codecs.encode": _Call("_codecs.encode", _encode),
        "builtins.bytes": _Call("builtins.bytes", _bytes),
        "builtins.bytearray": _Call("builtins.bytearray", _bytearray),
        "builtins.set": _Call("builtins.set", _plain(set)),
        "builtins.frozenset": _Call("builtins.frozenset", _plain(frozenset)),
        "builtins.complex": _Call("builtins.complex", _complex),
    })
    return out


_ALLOWED = _allowed()
#: The globals a pickle may name (``module.name``); each resolves to a stand-in of this module.
PICKLE_GLOBALS: tuple[str, ...] = tuple(sorted(_ALLOWED))


class _Unpickler(pickle.Unpickler):
    """``pickle.Unpickler(f, encoding="latin1")`` resolving only :data:`PICKLE_GLOBALS`."""

    def __init__(self, file: IO[bytes]) -> None:
        super().__init__(file, encoding="latin1")

    def find_class(self, module: str, name: str) -> Any:
        if module == "__builtin__":  # written by Python 2
            module = "builtins"
        full = f"{module}.{name}"
        if full in _ALLOWED:
            return _ALLOWED[full]
        if module == "torch" or module.startswith("torch."):
            raise _Refused(
                f"the pickle holds torch objects ({full}): torch tensors pickled with "
                "pickle.dump, which this reader does not load (only NumPy arrays; nothing in the "
                "file was run)", _TORCH_FIX,
            )
        raise _Refused(
            f"refused to unpickle the global '{full}': a Detectron2 weights pickle holds only "
            "dicts of NumPy arrays (nothing in the file was run)", _NUMPY_FIX,
        )

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused(
            f"the pickle names a persistent object {_short(pid)}, as torch.save's do; pass it "
            "as a torch checkpoint", _TORCH_FIX,
        )


def _resolve(obj: object, depth: int, seen: dict[int, object]) -> object:
    """``obj`` with every stand-in replaced by its NumPy value (dicts and lists in place)."""
    if isinstance(obj, _Pending):
        if obj.open:
            raise _Refused("an array is never given its data (the pickle stops short)",
                           _DAMAGED_FIX)
        return obj.value
    if isinstance(obj, _DType):
        return obj.dtype
    if not isinstance(obj, dict | list | tuple):
        return obj
    if id(obj) in seen:
        return seen[id(obj)]
    if depth > _MAX_DEPTH:
        raise _Refused(f"the pickle nests containers more than {_MAX_DEPTH} levels deep, as no "
                       "weights file does", _DAMAGED_FIX)
    if isinstance(obj, dict):
        seen[id(obj)] = obj
        for k, v in obj.items():
            obj[k] = _resolve(v, depth + 1, seen)
        return obj
    if isinstance(obj, list):
        seen[id(obj)] = obj
        for i, v in enumerate(obj):
            obj[i] = _resolve(v, depth + 1, seen)
        return obj
    seen[id(obj)] = obj  # a tuple reached again through itself stays as it is
    out = tuple(_resolve(v, depth + 1, seen) for v in obj)
    seen[id(obj)] = out
    return out


def load(file: IO[bytes], path: str | os.PathLike[str] = "<pickle>") -> Any:
    """``pickle.load(file, encoding="latin1")`` for weights pickles, with only allowed globals.

    Args:
        file: a binary file positioned at the pickle.
        path: the name errors give.

    Returns:
        What the pickle holds, with NumPy arrays (fresh, C-contiguous, native byte order) and
        NumPy scalars where it pickled them; ``OrderedDict`` comes back as a ``dict`` subclass.

    Raises:
        CheckpointError: a global outside :data:`PICKLE_GLOBALS` (refused before anything runs),
            a non-numeric array, or a damaged or truncated pickle; the message names the fix.
    """
    try:
        obj = _Unpickler(file).load()
        return _resolve(obj, 0, {})
    except _Refused as e:
        raise CheckpointError(path, e.problem, e.fix) from None
    except RecursionError:
        raise CheckpointError(path, "the pickle nests containers too deeply", _DAMAGED_FIX
                              ) from None
    except Exception as e:  # a damaged pickle fails in many ways; none may escape as such
        raise CheckpointError(
            path, f"its pickle cannot be read ({type(e).__name__}: {str(e)[:200]})", _DAMAGED_FIX
        ) from None


def loads(data: bytes, path: str | os.PathLike[str] = "<pickle>") -> Any:
    """:func:`load` from bytes."""
    import io

    return load(io.BytesIO(data), path)


# Files ---------------------------------------------------------------------------------------


def is_plain_pickle(head: bytes) -> bool:
    """Whether a file starting with ``head`` (16 bytes) is a pickle, but not a torch.save one.

    Protocols 2 to 5 start with opcode ``PROTO`` (0x80); torch's legacy format is a pickle too, of
    torch's magic number first (a ``LONG1`` of 10 bytes), and is not one of these. Protocols 0 and
    1 (Python 2's defaults) start with ``(`` (MARK), ``}`` / ``]`` (an empty dict or list) or
    ``c`` (GLOBAL, then a module name in plain text).
    """
    if head[:1] == b"\x80":
        legacy = head[2:4] == b"\x8a\x0a" and int.from_bytes(
            head[4:14], "little", signed=True
        ) == _TORCH_LEGACY_MAGIC
        return len(head) >= 2 and head[1] <= 5 and not legacy
    if head[:1] in (b"(", b"}", b"]"):
        return True
    return head[:1] == b"c" and all(32 <= b < 127 or b == 10 for b in head)


@dataclass
class Detectron2Pickle:
    """The state dict of a Detectron2 ``.pkl``.

    Attributes:
        tensors: state-dict key -> NumPy array, in the file's order.
        container: ``"model"`` when the state dict is under ``"model"`` (the model-zoo format),
            ``None`` for a bare state dict.
        author: the file's ``__author__`` (``"Detectron2 Model Zoo"``), or None.
        other_keys: the other top-level keys (``matching_heuristics``, ...), in the file's order.
        matching_heuristics: the file asks Detectron2 to match names by heuristics.
        protocol: the pickle protocol (0 for protocols 0 and 1).
        sha256: hex digest of the file's bytes.
        source_format: ``"detectron2-pkl"``.
    """

    tensors: dict[str, np.ndarray] = field(repr=False)
    container: str | None
    author: str | None
    other_keys: list[str]
    matching_heuristics: bool
    protocol: int
    sha256: str
    source_format: str = "detectron2-pkl"


_CAFFE2_NAME = re.compile(r"_(w|b|s|bn_s|bn_b|bn_rm|bn_riv|momentum)$")


def _caffe2(keys: Iterable[object]) -> list[str]:
    """Caffe2 / Detectron1 blob names (no dots; ``res2_0_branch2a_w``, ``conv1_b`` ...)."""
    names = [k for k in keys if isinstance(k, str)]
    if not names or any("." in k for k in names):
        return []
    return [k for k in names if _CAFFE2_NAME.search(k)]


def _check_path(p: Path) -> os.stat_result:
    try:
        st = p.stat()
    except FileNotFoundError:
        raise CheckpointError(p, "the file does not exist", "Check the path") from None
    except OSError as e:
        raise CheckpointError(p, f"the file cannot be read ({e.strerror})", "Check the path"
                              ) from None
    give_file = "Pass the .pkl or .pth file itself"
    if stat.S_ISDIR(st.st_mode):
        raise CheckpointError(p, "is a folder, not a weights file", give_file)
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(p, "is not a regular file", give_file)
    if st.st_size == 0:
        raise CheckpointError(p, "the file is empty", _DAMAGED_FIX)
    return st


def _describe(v: object) -> str:
    if isinstance(v, np.ndarray):
        return f"an array of {v.dtype}"
    if isinstance(v, np.generic):
        return f"a NumPy {v.dtype} scalar"
    return _short(v)


def read_detectron2_pickle(path: str | os.PathLike[str]) -> Detectron2Pickle:
    """Read the state dict of a Detectron2 ``.pkl`` (model-zoo format or a bare dict), no torch.

    Raises:
        CheckpointError: a missing, empty or non-regular path; a global outside the allowlist
            (refused before anything in the file runs); torch tensors pickled with
            ``pickle.dump``; non-numeric arrays; a damaged or truncated pickle; a Caffe2 /
            Detectron1 ``blobs`` pickle; no state dict, or entries that are not name -> array.
    """
    p = Path(path)
    _check_path(p)
    digest = hashlib.sha256()
    try:
        with open(p, "rb") as f:
            head = f.read(16)
            f.seek(0)
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
            f.seek(0)
            obj = load(f, p)
    except OSError as e:
        raise CheckpointError(p, f"the file cannot be read ({e})", "Check the file") from None
    protocol = head[1] if head[:1] == b"\x80" and len(head) > 1 else 0
    if not isinstance(obj, dict):
        raise CheckpointError(
            p, f"holds {_describe(obj)}, not a dict of weights", _NUMPY_FIX
        )
    if "blobs" in obj or _caffe2(obj):
        inner = obj.get("blobs")
        blobs: dict[Any, Any] = inner if isinstance(inner, dict) else obj
        examples = [k for k in blobs if isinstance(k, str)][:3]
        raise CheckpointError(
            p, "is a Caffe2 / Detectron1 pickle (a 'blobs' dict, names such as "
            f"{', '.join(repr(k) for k in examples) or 'res2_0_branch2a_w'}): those are "
            "Detectron1 / Caffe2 names, which this converter does not map to Detectron2's "
            "module names", _CAFFE2_FIX,
        )
    container: str | None = None
    if isinstance(obj.get("model"), dict):
        container = "model"
        state = obj["model"]
        if _caffe2(state):
            raise CheckpointError(
                p, "its 'model' dict holds Detectron1 / Caffe2 names (such as "
                f"{_caffe2(state)[0]!r}), which this converter does not map to Detectron2's "
                "module names", _CAFFE2_FIX,
            )
    elif any(isinstance(v, np.ndarray) for v in obj.values()):
        state = obj
    else:
        keys = ", ".join(_short(k, 30) for k in list(obj)[:10]) or "none"
        raise CheckpointError(
            p, f"holds no state dict: no arrays at its top level and no 'model' dict (keys: "
            f"{keys})", _NUMPY_FIX,
        )
    where = "" if container is None else f" under '{container}'"
    bad = [
        f"{_short(k, 60)} -> {_describe(v)}" for k, v in state.items()
        if not isinstance(k, str) or not isinstance(v, np.ndarray)
    ]
    if bad:
        raise CheckpointError(
            p, f"its state dict{where} has {len(bad)} entries that are not name -> array: "
            f"{'; '.join(bad[:5])}", _NUMPY_FIX,
        )
    if not state:
        raise CheckpointError(p, f"its state dict{where} holds no arrays", _NUMPY_FIX)
    author = obj.get("__author__") if container else None
    others = [str(k) for k in obj if k not in ("model", "__author__")] if container else []
    return Detectron2Pickle(
        tensors=dict(state),
        container=container,
        author=author if isinstance(author, str) else (None if author is None else str(author)),
        other_keys=others,
        matching_heuristics=bool(container and obj.get("matching_heuristics") is True),
        protocol=protocol,
        sha256=digest.hexdigest(),
    )
