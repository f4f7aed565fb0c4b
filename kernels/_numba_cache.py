"""Where the CPU kernels' Numba cache lives, and what happens when it cannot be used.

Every CPU kernel is ``@njit(cache=True)``. Left to itself, Numba caches a function in the
first of: ``NUMBA_CACHE_DIR``; the ``__pycache__`` beside its source; ``~/.cache/numba``. When
none is writable (a system or container install run by a user who cannot write the package,
whose ``HOME`` does not exist) the decorator raises ``cannot cache function`` and the kernel
module cannot even be imported. A cache file that cannot be unpickled (truncated by a full
disk or a killed process, overwritten, damaged) makes every call that would load it fail.

:func:`install` changes that for the functions defined in this package (``npfrcnn.kernels.*``)
and for no other: every other function, a user's own included, goes through Numba's own code
untouched. For ours, ``Dispatcher.enable_caching`` picks the cache folder, in this order:

1. ``NUMBA_CACHE_DIR`` (or ``numba.config.CACHE_DIR``) when the user set it and it is writable;
2. the ``__pycache__`` folder beside the kernel's source, when it is writable (Numba's default);
3. ``$XDG_CACHE_HOME/npfrcnn/numba`` (an absolute ``XDG_CACHE_HOME``), else
   ``~/.cache/npfrcnn/numba`` (when ``~`` resolves to an absolute path), when it can be created
   and written;
4. ``<tempfile.gettempdir()>/npfrcnn-numba-<uid>``, created with mode 0700 and used only if it
   is a real folder (not a link) owned by this user and writable by nobody else, since a cache
   file is a pickle and loading it runs code;
5. none: the kernels compile in memory, every process (a :class:`KernelCacheWarning` says so
   once, with the fix).

The choice of 3-5 is made once per process, when the first kernel is decorated (the package
``__init__`` installs this before any kernel module is imported). Numba's configuration is
re-read first (``numba.core.config.reload_config()``, what Numba's compiler does at every
compilation anyway), so a ``NUMBA_CACHE_DIR`` set after ``import numba`` still wins. A
``NUMBA_CACHE_LOCATOR_CLASSES`` set by the user replaces steps 1-4, as it does in Numba.

Whatever the folder, a cache entry that cannot be loaded (an index or data file truncated,
garbage, unpicklable) is treated as a miss: the kernel compiles afresh, the index is reset so
the new entry replaces the damaged one, and a :class:`KernelCacheWarning` says so once per
process. An entry that cannot be written (a full disk, a folder made read-only meanwhile) only
costs the compilation again next time. Entries from another Numba version or for other source
are already ignored by Numba itself (a version and a source hash head every index).
"""

from __future__ import annotations

import functools
import os
import stat
import tempfile
import warnings
from collections.abc import Callable
from typing import Any

from numba.core import config
from numba.core.caching import (
    CompileResultCacheImpl,
    FunctionCache,
    InTreeCacheLocator,
    NullCache,
    UserProvidedCacheLocator,
)

__all__ = ["KernelCacheWarning", "cache_for", "fallback_dir", "install"]

#: Functions defined in modules under this package get the cache policy above.
_PACKAGE = __name__.rpartition(".")[0] + "."
_MARK = "_npfrcnn_kernel_cache"
_warned: set[str] = set()


class KernelCacheWarning(RuntimeWarning):
    """The kernel cache could not be used as usual; the kernels still run (see the message)."""


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        # attributed to this module (its first line, the docstring explaining the policy), not
        # to whichever Numba frame happened to compile the kernel
        warnings.warn_explicit(message, KernelCacheWarning, __file__, 1, module=__name__)


def _writable(path: str) -> str | None:
    """``None`` if ``path`` is (or could be made) a folder we can write, else the reason."""
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as err:
        return f"{type(err).__name__}: {err.strerror or err}"
    return None


def _private(path: str) -> str | None:
    """``None`` if ``path`` is a folder that only this user can write (made 0700 if absent)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as err:
        return f"{type(err).__name__}: {err.strerror or err}"
    try:
        st = os.lstat(path)
    except OSError as err:
        return f"{type(err).__name__}: {err.strerror or err}"
    if not stat.S_ISDIR(st.st_mode):
        return "not a folder (a link or a file is never used)"
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        return f"owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"writable by other users (mode {stat.S_IMODE(st.st_mode):o})"
    return _writable(path)


def _candidates() -> list[tuple[str, Callable[[str], str | None]]]:
    """The per-user folders of steps 3 and 4, each with its check, in order of preference."""
    found: list[tuple[str, Callable[[str], str | None]]] = []
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    home = os.path.expanduser("~")
    if os.path.isabs(xdg):
        found.append((os.path.join(xdg, "npfrcnn", "numba"), _writable))
    elif os.path.isabs(home):
        found.append((os.path.join(home, ".cache", "npfrcnn", "numba"), _writable))
    try:
        tmp = tempfile.gettempdir()
    except OSError:  # no usable temporary folder at all
        return found
    user = f"-{os.geteuid()}" if hasattr(os, "geteuid") else ""
    found.append((os.path.join(tmp, f"npfrcnn-numba{user}"), _private))
    return found


@functools.lru_cache(maxsize=1)
def _fallback() -> tuple[str | None, tuple[str, ...]]:
    tried = []
    for path, check in _candidates():
        reason = check(path)
        if reason is None:
            return path, ()
        tried.append(f"{path} ({reason})")
    return None, tuple(tried)


def fallback_dir() -> str | None:
    """The per-user cache folder of steps 3-4 (chosen once per process), or ``None``."""
    return _fallback()[0]


class _TolerantCache(FunctionCache):
    """Numba's per-function cache, for which an unreadable or unwritable entry is a miss."""

    def load_overload(self, sig: Any, target_context: Any) -> Any:
        try:
            return super().load_overload(sig, target_context)
        except Exception as err:  # a damaged entry: truncated, garbage, unpicklable
            try:
                self.flush()  # an empty index, so that the fresh entry replaces it
            except Exception:
                pass  # a read-only folder: this process still compiles in memory
            _warn_once(
                "load",
                f"npfrcnn: ignored an unreadable Numba cache entry for {self._py_func.__name__} "
                f"in {self.cache_path} ({type(err).__name__}: {err}); the kernel was compiled "
                "afresh and the entry rewritten (shown once; other damaged entries are "
                "handled the same way)",
            )
            return None

    def save_overload(self, sig: Any, data: Any) -> None:
        try:
            super().save_overload(sig, data)
        except Exception as err:  # a full disk, a folder made read-only meanwhile, ...
            _warn_once(
                "save",
                f"npfrcnn: could not write the Numba cache in {self.cache_path} "
                f"({type(err).__name__}: {err}); the kernels run, but compile again in the "
                "next process. Set NUMBA_CACHE_DIR to a writable folder to keep them.",
            )


class _UsualImpl(CompileResultCacheImpl):
    # steps 1-2: Numba's own first two locators (its ~/.cache/numba is replaced by step 3,
    # which does not turn an unset HOME into a folder named "~" in the working directory)
    _locator_classes = [UserProvidedCacheLocator, InTreeCacheLocator]


class _FallbackLocator(UserProvidedCacheLocator):
    """Numba's ``NUMBA_CACHE_DIR`` locator, rooted at :func:`fallback_dir` instead."""

    def __init__(self, py_func: Any, py_file: str) -> None:
        root = fallback_dir()
        if root is None:  # from_function checked it
            raise RuntimeError("no per-user cache folder")
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        self._cache_path = os.path.join(root, self.get_suitable_cache_subpath(py_file))

    @classmethod
    def from_function(cls, py_func: Any, py_file: str) -> Any:
        if fallback_dir() is None:
            return None
        # skip UserProvidedCacheLocator's own check of NUMBA_CACHE_DIR; keep the rest
        return super(UserProvidedCacheLocator, cls).from_function(py_func, py_file)


class _FallbackImpl(CompileResultCacheImpl):
    _locator_classes = [_FallbackLocator]


class _UsualCache(_TolerantCache):
    _impl_class: Any = _UsualImpl  # numba annotates the base's placeholder as None


class _FallbackCache(_TolerantCache):
    _impl_class: Any = _FallbackImpl


def cache_for(py_func: Any) -> Any:
    """The cache a kernel gets (the policy of this module's docstring) for ``py_func``."""
    config.reload_config()
    for cache_class in (_UsualCache, _FallbackCache):
        try:
            return cache_class(py_func)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            continue
    _, tried = _fallback()
    _warn_once(
        "memory",
        "npfrcnn: no writable folder for the Numba kernel cache (tried the package's "
        f"__pycache__, {'; '.join(tried) or 'no per-user folder'}); the kernels compile in "
        "memory in every process, a few seconds at start-up. Set NUMBA_CACHE_DIR (or "
        "XDG_CACHE_HOME) to a writable folder to keep them.",
    )
    return NullCache()


def install() -> None:
    """Give the kernels of this package the cache policy above (idempotent).

    Wraps ``numba.core.dispatcher.Dispatcher.enable_caching`` (what ``@njit(cache=True)``
    calls once per decorated function): a function whose module is not under
    ``npfrcnn.kernels`` is handed to Numba's own method, unchanged.
    """
    from numba.core.dispatcher import Dispatcher

    original = Dispatcher.enable_caching
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def enable_caching(self: Any) -> None:
        if not getattr(self.py_func, "__module__", "").startswith(_PACKAGE):
            return original(self)
        self._cache = cache_for(self.py_func)

    setattr(enable_caching, _MARK, True)
    setattr(Dispatcher, "enable_caching", enable_caching)  # noqa: B010 (mypy: method-assign)
