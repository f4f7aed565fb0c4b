"""Atomic file output: a result file is either the complete new one or untouched.

:func:`atomic_write` writes to a temporary file in the destination's folder (same file system,
so the final ``os.replace`` is atomic on POSIX and Windows), flushes and fsyncs it, then renames
it over the destination. If the block raises (including ``KeyboardInterrupt``), the temporary
file is removed and an existing destination is left as it was.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write"]


def _default_mode() -> int:
    """``0o666`` masked by the process umask: what ``open(path, "w")`` would have created."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_write(
    path: str | os.PathLike[str], mode: str = "w", *, encoding: str | None = "utf-8"
) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success rename it to ``path``.

    Args:
        path: the destination. Its folder must exist.
        mode: ``"w"`` (text, ``encoding``) or ``"wb"`` (binary).
        encoding: text encoding; ignored for binary mode.

    Yields:
        The open temporary file. Do not close it yourself.

    Raises:
        FileNotFoundError: the destination folder does not exist (nothing is created).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    dest = Path(path)
    folder = dest.parent if str(dest.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; give the result the permissions a plain open() would have.
        os.chmod(tmp, _default_mode())
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
