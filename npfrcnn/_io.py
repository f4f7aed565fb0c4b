"""Every file npfrcnn writes goes through this module.

Two writers:

* :func:`atomic_write` (an open file) and :func:`atomic_path` (a temporary *path*, for writers
  that open the file by name: ``h5py.File``, ``np.savez``, ``PIL.Image.save``) give a result file
  that is either the complete new one or untouched. They write a temporary file in the
  destination's folder (same file system, so the final ``os.replace`` is atomic), fsync it, give
  it the permissions a plain ``open()`` would have (``0o666`` less the umask), rename it over the
  destination and fsync the folder, so the rename itself survives a power cut. If the block
  raises (including ``KeyboardInterrupt``), the temporary file is removed and an existing
  destination is left as it was.
* :class:`LineLog` appends whole lines to a results file (``npfrcnn detect -o FILE.jsonl``): one
  ``write`` per line, then a flush and an fsync, so a run killed at any moment (``kill -9``
  included) leaves every finished line on disk and at most one torn last line, which
  :func:`read_lines` reports so that ``--resume`` can drop it.

Temporary names are ``.<name>.npfrcnn-tmp-<pid>-<random><suffix>`` (``<suffix>`` is the
destination's, so writers that pick a format from the extension still work). A writer killed
before it could clean up (``kill -9``, a power cut) leaves one behind; the next writer into the
same folder removes such files when their writer process is gone and the file is older than the
current process (:func:`remove_stale_temporaries`), once per folder per process. Nothing else is
ever removed.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_write", "atomic_path", "LineLog", "read_lines", "remove_stale_temporaries",
    "TEMP_MARK",
]

#: The marker every temporary file name carries.
TEMP_MARK = ".npfrcnn-tmp-"
_TEMP_RE = re.compile(r"^\..+\.npfrcnn-tmp-(\d+)-[0-9a-f]{8}(\.[^.]*)?$")
_PROCESS_START = time.time()
_swept: set[str] = set()


def _default_mode() -> int:
    """``0o666`` masked by the process umask: what ``open(path, "w")`` would have created."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _folder(dest: Path) -> Path:
    return dest.parent if str(dest.parent) else Path(".")


def _fsync_folder(folder: Path) -> None:
    """fsync a folder so that a rename or a new entry in it is durable (POSIX; a no-op where
    folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders; the data itself was synced
        pass
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # exists, owned by someone else (or cannot tell)
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[str]:
    """Remove temporary files that a killed npfrcnn writer left in ``folder``.

    A file is removed only if its name matches ``.<name>.npfrcnn-tmp-<pid>-<8 hex>[<suffix>]``,
    the process ``<pid>`` no longer exists, and the file was last modified before the current
    process started. Errors (a folder that cannot be listed, a file that cannot be removed) are
    ignored: cleaning up is best effort and never stops a run.

    Returns:
        The names removed.
    """
    removed: list[str] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP_RE.match(entry.name)
        if m is None or _pid_alive(int(m.group(1))):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            if entry.stat(follow_symlinks=False).st_mtime >= _PROCESS_START:
                continue
            os.unlink(entry.path)
            removed.append(entry.name)
        except OSError:
            continue
    return removed


def _sweep_once(folder: Path) -> None:
    key = os.path.abspath(folder)
    if key not in _swept:
        _swept.add(key)
        remove_stale_temporaries(folder)


def _temp_file(dest: Path) -> tuple[int, Path]:
    """Create ``.<name>.npfrcnn-tmp-<pid>-<random><suffix>`` beside ``dest`` (mode 0600)."""
    folder = _folder(dest)
    _sweep_once(folder)
    while True:
        tmp = folder / f".{dest.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}{dest.suffix}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # pragma: no cover - 32 random bits
            continue
        return fd, tmp


def _publish(tmp: Path, dest: Path) -> None:
    os.chmod(tmp, _default_mode())  # created 0600; give it what a plain open() would
    os.replace(tmp, dest)
    _fsync_folder(_folder(dest))


def _discard(tmp: Path) -> None:
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass


@contextmanager
def atomic_write(
    path: str | os.PathLike[str], mode: str = "w", *, encoding: str | None = "utf-8"
) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success fsync it and rename it to ``path``.

    Args:
        path: the destination. Its folder must exist.
        mode: ``"w"`` (text, ``encoding``) or ``"wb"`` (binary).
        encoding: text encoding; ignored for binary mode.

    Yields:
        The open temporary file. Do not close it yourself.

    Raises:
        ValueError: ``mode`` is neither ``"w"`` nor ``"wb"``.
        OSError: the destination folder does not exist or cannot be written (nothing is
            created), or writing fails (e.g. ``ENOSPC``; the temporary file is removed).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    dest = Path(path)
    fd, tmp = _temp_file(dest)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, dest)
    except BaseException:
        _discard(tmp)
        raise


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path`` for writers that open a file by name; on success it is
    fsynced and renamed to ``path``.

    The temporary file exists (empty) when the block starts and ends with ``path``'s suffix
    (``.h5``, ``.npz``, ...), so ``h5py.File(tmp, "w")``, ``np.savez(tmp, ...)`` and
    ``image.save(tmp)`` write to it as they would to ``path``. Close the file before the block
    ends.

    Args:
        path: the destination. Its folder must exist.

    Yields:
        The temporary file's path.

    Raises:
        OSError: as :func:`atomic_write`.
    """
    dest = Path(path)
    fd, tmp = _temp_file(dest)
    os.close(fd)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _publish(tmp, dest)
    except BaseException:
        _discard(tmp)
        raise


class LineLog:
    """Append whole lines to a file, each one durable before :meth:`write` returns.

    Args:
        path: the file. Created if missing (with the permissions of a plain ``open()``).
        truncate: start the file empty (a fresh run) instead of appending (``--resume``).

    Each :meth:`write` issues one ``os.write`` of the whole encoded line, then ``os.fsync``: a
    kill at any moment leaves the lines written so far and at most one partial last line. A
    path that is not a regular file (``/dev/stdout``, a pipe, a terminal) is written the same
    way without the fsync, which those do not support.
    """

    def __init__(self, path: str | os.PathLike[str], *, truncate: bool) -> None:
        self.path = Path(path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if truncate else 0)
        existed = self.path.exists()
        self.fd: int | None = os.open(self.path, flags, 0o666)
        self.regular = stat.S_ISREG(os.fstat(self.fd).st_mode)
        if not existed and self.regular:
            _fsync_folder(_folder(self.path))

    def write(self, line: str) -> None:
        """Append ``line`` (a newline is added if missing), then fsync."""
        if self.fd is None:
            raise ValueError(f"{self.path}: the line log is closed")
        data = (line if line.endswith("\n") else line + "\n").encode("utf-8")
        view = memoryview(data)
        try:
            while view:  # os.write may write less than asked (signals, pipes); finish the line
                n = os.write(self.fd, view)
                view = view[n:]
            if self.regular:
                os.fsync(self.fd)
        except OSError as e:  # name the file: os.write's error does not
            raise OSError(e.errno, e.strerror, str(self.path)) from None

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    def __enter__(self) -> LineLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_lines(path: str | os.PathLike[str]) -> tuple[list[str], int, bool]:
    """The complete lines of a file :class:`LineLog` wrote, and where they end.

    Returns:
        ``(lines, good_bytes, torn)``: the newline-terminated lines (without the newline),
        the byte length they cover, and whether a partial last line follows them (a killed
        writer); truncating the file to ``good_bytes`` drops it.
    """
    data = Path(path).read_bytes()
    end = data.rfind(b"\n") + 1
    lines = data[:end].decode("utf-8", errors="replace").split("\n")[:-1] if end else []
    return lines, end, end < len(data)
