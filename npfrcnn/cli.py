"""The ``npfrcnn`` command: ``detect``, ``convert``, ``info`` and ``random-model`` here;
``synth``, ``train``, ``eval`` and ``demo`` in :mod:`npfrcnn.cli_train`; ``bench`` in
:mod:`npfrcnn.bench.cli`.

Exit status (:data:`EXIT_CODES`, also in ``npfrcnn --help``): 0 success; 1 some input images
failed (the others were processed), or ``info`` found problems; 2 usage or set-up error (a bad
option value, an output that would overwrite an input, unusable weights or annotations, a
damaged Numba cache): nothing was run; 70 an internal error (a bug: the traceback is shown,
please report it); 71 out of memory; 74 a file could not be read or written (disk full,
permission denied, ...); 130 interrupted (Ctrl-C); 143 terminated (SIGTERM; 129 for SIGHUP);
141 stdout closed early (``| head``).

Errors a user can cause never show a traceback: :func:`main` is the one place that turns them
into a message and an exit status. They are ``OSError`` (with the file and a fix per
``errno``), ``KeyboardInterrupt`` (and SIGTERM/SIGHUP, which :func:`main` turns into
:class:`Interrupted`), and every ``ValueError`` *subclass* npfrcnn defines (``WeightsError``,
``DataError``, ``ImageError``, ``CheckpointError``, :class:`CommandError`, ...): those are
raised at the public boundary with the fix in their message. Anything else (a bare
``ValueError``, ``TypeError``, ``IndexError``, ...) is a bug and is shown with its traceback.

Results go to stdout (or a file); logs, the progress bar and the timing summary go to stderr.
Output files are written by :mod:`npfrcnn._io`: atomically, except the ``detect --output``
JSON Lines file, which grows one fsynced line per image so that an interrupted run keeps what it
finished (``--resume`` continues it).
"""

from __future__ import annotations

import argparse
import errno
import fnmatch
import hashlib
import json
import math
import os
import shutil
import signal
import stat
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any

import numpy as np

from npfrcnn import __version__, results
from npfrcnn._io import LineLog, atomic_write, read_lines
from npfrcnn.draw import DRAW_FORMATS, PALETTE, drawing_names, save_drawing
from npfrcnn.draw import draw_detections as draw_detections

__all__ = [
    "main", "build_parser", "expand_inputs", "coco_image_ids", "draw_detections",
    "detection_record", "coco_records", "write_coco", "draw_and_save", "CommandError",
    "Interrupted", "EXIT_CODES", "STAGES",
]

#: Model stages in pipeline order, as ``FasterRCNN.detect(timings=...)`` reports them.
STAGES = ("preprocess", "features", "rpn", "proposals", "roi_pool", "head", "detections")

_PALETTE = PALETTE  # the drawing colours (npfrcnn.draw.PALETTE), by class id

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_BUG, EXIT_NOMEM, EXIT_IO = 0, 1, 2, 70, 71, 74
EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 130, 141

#: Every exit status ``npfrcnn`` uses, with its meaning.
EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "some input images failed (reported; the others were processed), or `info` found "
       "problems in the file",
    2: "usage or set-up error: a bad option value, an output that would overwrite an input, "
       "unusable weights or annotations, a damaged Numba cache, a --resume that does not "
       "match; nothing was run",
    70: "internal error: a bug in npfrcnn (the traceback is shown; please report it)",
    71: "out of memory; what was finished is kept",
    74: "a file could not be read or written (disk full, permission denied, read-only, ...); "
        "what was finished is kept",
    130: "interrupted (Ctrl-C); what was finished is kept",
    141: "stdout was closed early (e.g. `| head`)",
    143: "terminated (SIGTERM; 129 for SIGHUP); what was finished is kept",
}

_EXIT_EPILOG = "exit status:\n" + "\n".join(
    f"  {code:<4} {text}" for code, text in EXIT_CODES.items()
)

_NO_WEIGHTS = """\
--weights is required: the shipped demo weights (weights/demo.h5) are not installed. Either
  * convert a torchvision checkpoint (torch.save(model.state_dict(), "model.pth"); no torch needed):
      npfrcnn convert model.pth model.h5 --profile torchvision-r50-fpn
  * convert the workshop's TensorFlow checkpoint (needs tensorflow installed):
      npfrcnn convert checkpoint/fasterrcnn model.h5 --classes checkpoint/classes.json
      npfrcnn detect photo.jpg --weights model.h5
  * or make a model with RANDOM weights to try the pipeline (its detections are meaningless):
      npfrcnn random-model random.h5
      npfrcnn detect photo.jpg --weights random.h5"""

_GLOB_CHARS = frozenset("*?[")


# --- errors ----------------------------------------------------------------------------------


class CommandError(ValueError):
    """A problem the user can fix; :func:`main` prints ``npfrcnn: error: <message>`` and exits
    with ``code`` (2 by default). ``usage=True`` prints it as an argparse usage error (the
    command's usage line first, always exit 2)."""

    def __init__(self, message: str, code: int = EXIT_USAGE, *, usage: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.usage = usage


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread when SIGTERM or SIGHUP arrives, so that every
    ``except KeyboardInterrupt`` cleans up as for Ctrl-C; the exit status is 128 + signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _is_user_error(e: BaseException) -> bool:
    """npfrcnn's own ``ValueError`` subclasses carry a message for the user (module
    docstring); a bare ``ValueError`` is not one of them."""
    t = type(e)
    return isinstance(e, ValueError) and t is not ValueError and (
        t.__module__ == "npfrcnn" or t.__module__.startswith("npfrcnn.")
    )


_ERRNO_FIX: dict[int, str] = {
    errno.ENOSPC: "no space left on the device; free some space or write to another disk",
    errno.EDQUOT: "disk quota exceeded; free some space or write to another disk",
    errno.EACCES: "permission denied; choose a location you can read/write or fix its "
                  "permissions",
    errno.EPERM: "operation not permitted; choose another location or fix its permissions",
    errno.EROFS: "the file system is read-only; write to another location",
    errno.EISDIR: "is a folder; give a file name",
    errno.ENOTDIR: "a part of the path is not a folder; check the path",
    errno.ENOENT: "no such file or folder; check the path",
    errno.ENAMETOOLONG: "the file name is too long; choose a shorter one",
    errno.EMFILE: "too many open files; raise the limit (`ulimit -n`)",
    errno.ENFILE: "too many open files on the system; close some programs",
    errno.EIO: "input/output error (a failing disk or a lost network mount); check the device",
    errno.EFBIG: "the file is too large for this file system; write to another one",
    errno.ELOOP: "too many levels of symbolic links; check the path",
}


def describe_os_error(e: OSError) -> str:
    """``<file>: <what happened and the fix> [<ERRNO>]`` for an ``OSError``."""
    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    fix = _ERRNO_FIX.get(e.errno or -1) or (e.strerror or str(e) or type(e).__name__)
    code = errno.errorcode.get(e.errno or -1)
    return f"{where + ': ' if where else ''}{fix}" + (f" [{code}]" if code else "")


def _numba_cache_problem(e: BaseException) -> str | None:
    """If ``e`` was raised while Numba read its on-disk cache (a truncated or corrupt ``.nbi``
    / ``.nbc`` file), the message saying which folder to delete; else None."""
    tb: TracebackType | None = e.__traceback__
    folder: str | None = None
    found = False
    while tb is not None:
        frame: FrameType = tb.tb_frame
        name = frame.f_code.co_filename.replace("\\", "/")
        if name.endswith("numba/core/caching.py"):
            found = True
            owner = frame.f_locals.get("self")
            for attr in ("_index_path", "_cache_path"):
                p = getattr(owner, attr, None)
                if isinstance(p, str):
                    folder = os.path.dirname(p) if attr == "_index_path" else p
                    break
        tb = tb.tb_next
    if not found:
        return None
    where = f"delete the folder {folder}" if folder else "delete Numba's cache folder"
    return (
        f"Numba's on-disk cache of compiled kernels is damaged ({type(e).__name__}: {e}); "
        f"{where} (or set NUMBA_CACHE_DIR to an empty folder) and run again: the kernels are "
        "compiled afresh and cached again"
    )


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise :class:`Interrupted` in the main thread while the block runs."""
    def handler(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signum)

    saved: list[tuple[int, Any]] = []
    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is None:
            continue
        try:
            saved.append((sig, signal.signal(sig, handler)))
        except (ValueError, OSError):  # not the main thread, or not allowed here
            pass
    try:
        yield
    finally:
        for sig, old in saved:
            signal.signal(sig, old)


# --- logging and progress --------------------------------------------------------------------


class _Log:
    """Messages on stderr, prefixed ``npfrcnn:``; cooperates with the progress bar."""

    def __init__(self, stream: IO[str], quiet: bool = False) -> None:
        self.stream = stream
        self.quiet = quiet
        self.bar_visible = False

    def _clear_bar(self) -> None:
        if self.bar_visible:
            self.stream.write("\r\x1b[K")
            self.bar_visible = False

    def info(self, msg: str) -> None:
        if not self.quiet:
            self.line(f"npfrcnn: {msg}")

    def line(self, msg: str) -> None:
        """``msg`` as it is (no prefix), unless quiet."""
        if not self.quiet:
            self._clear_bar()
            self.stream.write(msg + "\n")
            self.stream.flush()

    def error(self, msg: str) -> None:
        self._clear_bar()
        self.stream.write(f"npfrcnn: error: {msg}\n")
        self.stream.flush()


def _terminal_columns() -> int:
    return max(20, shutil.get_terminal_size((80, 24)).columns)


class _Progress:
    """A one-line progress bar on a TTY, never wider than the terminal (one column is left
    free, so no terminal wraps it); elsewhere a log line every ``every_s`` seconds."""

    def __init__(self, log: _Log, total: int, every_s: float = 30.0) -> None:
        self.log = log
        self.total = total
        self.tty = bool(getattr(log.stream, "isatty", lambda: False)()) and not log.quiet
        self.every_s = every_s
        self.start = time.perf_counter()
        self.last_log = self.start

    def bar_text(self, done: int, label: str, columns: int) -> str:
        """The bar line for ``done`` of ``total``, at most ``columns - 1`` characters."""
        elapsed = time.perf_counter() - self.start
        rate = elapsed / done if done else 0.0
        eta = rate * (self.total - done)
        stats = f" {done}/{self.total} {rate:.2f} s/img ETA {_fmt_duration(eta)}"
        room = columns - 1
        width = max(0, min(24, room - len(stats) - 2 - 12))
        filled = int(width * done / max(self.total, 1))
        text = (f"[{'#' * filled}{'-' * (width - filled)}]" if width else "") + stats
        left = room - len(text) - 1
        if left >= 4:
            name = label if len(label) <= left else "..." + label[-(left - 3):]
            text += " " + name
        return text[:room]

    def update(self, done: int, label: str) -> None:
        now = time.perf_counter()
        if self.tty:
            text = self.bar_text(done, label, _terminal_columns())
            self.log.stream.write(f"\r\x1b[K{text}")
            self.log.stream.flush()
            self.log.bar_visible = True
        elif not self.log.quiet and (now - self.last_log >= self.every_s) and done < self.total:
            self.last_log = now
            elapsed = now - self.start
            rate = elapsed / done if done else 0.0
            self.log.info(
                f"{done}/{self.total} images, {rate:.2f} s/img, "
                f"ETA {_fmt_duration(rate * (self.total - done))}"
            )

    def close(self) -> None:
        self.log._clear_bar()


def _fmt_duration(s: float) -> str:
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


# --- argument types (argparse ``type=``: a bad value is a usage error, exit 2) ---------------


def _number(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (a tolerance, a learning-rate floor)."""
    v = _number(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return v


def probability(text: str) -> float:
    """A number in ``[0, 1]``."""
    v = _number(text)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(
            f"must be in [0, 1], got {text}; e.g. 0.5 (a probability, not a percentage)"
        )
    return v


def int_at_least(text: str, lo: int) -> int:
    """An integer ``>= lo`` (``1``: a count; ``0``: a seed), as an argparse ``type=`` error."""
    try:
        v = int(text)
    except ValueError:
        what = "a positive integer" if lo == 1 else "an integer"
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if v < lo:
        bound = "a positive integer" if lo == 1 else f"{lo} or more"
        raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
    return v


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return int_at_least(text, 1)


def _writable_folder_problem(folder: str) -> str | None:
    if not os.path.exists(folder):
        return f"folder {folder} does not exist; create it first"
    if not os.path.isdir(folder):
        return f"{folder} is not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"cannot write in folder {folder} (permission denied); choose another location"
    return None


def output_file(text: str) -> str:
    """A file that can be (re)written: its folder exists and is writable; not a folder."""
    if not text:
        raise argparse.ArgumentTypeError("expected a file name, got ''")
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name")
    problem = _writable_folder_problem(os.path.dirname(text) or ".")
    if problem:
        raise argparse.ArgumentTypeError(f"{text}: {problem}")
    return text


def output_folder(text: str) -> str:
    """A folder that exists and is writable, or can be created (its nearest existing parent is
    a writable folder). Nothing is created here."""
    if not text:
        raise argparse.ArgumentTypeError("expected a folder name, got ''")
    p = os.path.abspath(text)
    if os.path.exists(p):
        if not os.path.isdir(p):
            raise argparse.ArgumentTypeError(f"{text} is a file, not a folder")
        if not os.access(p, os.W_OK | os.X_OK):
            raise argparse.ArgumentTypeError(
                f"cannot write in folder {text} (permission denied); choose another folder"
            )
        return text
    parent = os.path.dirname(p)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise argparse.ArgumentTypeError(
            f"cannot create folder {text}: {parent} is a file, not a folder"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(
            f"cannot create folder {text}: no permission to write in {parent}; choose another "
            "folder"
        )
    return text


def input_file(text: str) -> str:
    """An existing, readable file."""
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"{text}: no such file; check the path")
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a folder, not a file")
    if not os.access(text, os.R_OK):
        raise argparse.ArgumentTypeError(f"{text}: permission denied; make it readable")
    return text


# --- inputs ----------------------------------------------------------------------------------


def _file_key(p: str) -> tuple[Any, ...]:
    """Identity of a file: device and inode (one key for every name of it: symlinks,
    hardlinks, ``./a`` and ``a``), else its real path."""
    try:
        st = os.stat(p)
        return ("inode", st.st_dev, st.st_ino)
    except OSError:
        return ("path", os.path.normcase(os.path.realpath(p)))


def _glob(pattern: str) -> list[str]:
    """Matches of a glob pattern, each directory entered once.

    As ``glob.glob(pattern, recursive=True)`` (``*``, ``?``, ``[...]`` within a name; ``**``
    as a whole component matches zero or more folders; names starting with ``.`` are matched
    only by a pattern component starting with ``.``; at each level names are sorted), except
    that ``**`` enters a folder (by device and inode) only once per pattern position, so a
    symbolic link loop, or two links to one folder, are walked once.
    """
    sep_pattern = pattern.replace(os.sep, "/") if os.sep != "/" else pattern
    absolute = sep_pattern.startswith("/")
    parts = [p for p in sep_pattern.split("/") if p]
    start = "/" if absolute else ""
    results: list[str] = []
    entered: set[tuple[int, int, int]] = set()

    def listdir(d: str) -> list[str]:
        try:
            return sorted(os.listdir(d or "."))
        except OSError:
            return []

    def step(d: str, i: int) -> None:
        if i == len(parts):
            if d and os.path.lexists(d):
                results.append(d)
            return
        part = parts[i]
        if part == "**":
            try:
                st = os.stat(d or ".")
            except OSError:
                return
            key = (i, st.st_dev, st.st_ino)
            if key in entered:
                return
            entered.add(key)
            step(d, i + 1)
            for name in listdir(d):
                sub = os.path.join(d, name) if d else name
                if name.startswith("."):
                    continue
                if os.path.isdir(sub):
                    step(sub, i)
                elif i == len(parts) - 1:  # a final ** matches files too
                    results.append(sub)
        elif _GLOB_CHARS & set(part):
            for name in listdir(d):
                if name.startswith(".") and not part.startswith("."):
                    continue
                if fnmatch.fnmatchcase(name, part):
                    step(os.path.join(d, name) if d else name, i + 1)
        else:
            p = os.path.join(d, part) if d else part
            if i == len(parts) - 1 or os.path.isdir(p):
                step(p, i + 1)

    step(start, 0)
    return results


def expand_inputs(inputs: Sequence[str]) -> tuple[list[str], list[str]]:
    """Expand files, folders and glob patterns into a deterministic list of image paths.

    Rules, applied to each argument in order:

    * an existing file is taken as it is (whatever its extension: a non-image then fails to
      load and is reported);
    * an existing folder gives its image files (``npfrcnn.image.IMAGE_EXTENSIONS``, any case),
      not recursive, hidden files skipped, sorted by name;
    * otherwise, an argument with ``*``, ``?`` or ``[`` is a glob pattern (``**`` recurses,
      each folder entered once even through symbolic link loops; :func:`_glob`): its matches
      in order; a matched folder is expanded as above;
    * anything else is a missing file.

    Every file is visited once: a file reached again (the same name twice, another path to it,
    a symbolic or hard link to it: compared by device and inode) is kept at its first position
    only, under the name it had there.

    Returns:
        ``(paths, problems)``: the image paths, and one message per argument that matched nothing.
    """
    from npfrcnn.image import IMAGE_EXTENSIONS

    def folder_images(d: str) -> list[str]:
        try:
            names = sorted(os.listdir(d))
        except OSError as e:
            problems.append(f"{d}: cannot list the folder ({describe_os_error(e)})")
            return []
        return [
            os.path.join(d, n)
            for n in names
            if not n.startswith(".")
            and os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS
            and os.path.isfile(os.path.join(d, n))
        ]

    out: list[str] = []
    problems: list[str] = []
    seen: set[tuple[Any, ...]] = set()

    def add(p: str) -> None:
        key = _file_key(p)
        if key not in seen:
            seen.add(key)
            out.append(p)

    for arg in inputs:
        if os.path.isfile(arg):
            add(arg)
        elif os.path.isdir(arg):
            images = folder_images(arg)
            if not images:
                problems.append(f"{arg}: folder has no image files ({', '.join(IMAGE_EXTENSIONS)})")
            for p in images:
                add(p)
        elif _GLOB_CHARS & set(arg):
            matches = _glob(arg)
            found: list[str] = []
            for m in matches:
                if os.path.isdir(m):
                    found.extend(folder_images(m))
                elif os.path.isfile(m):
                    found.append(m)
            if not matches:
                problems.append(f"{arg}: no files match this pattern")
            elif not found:
                problems.append(f"{arg}: the pattern matches only folders without image files")
            for p in found:
                add(p)
        else:
            problems.append(f"{arg}: no such file or folder")
    return out, problems


def coco_image_ids(paths: Sequence[str]) -> list[int]:
    """COCO ``image_id`` per input: the file stems if every stem is a distinct decimal number
    (COCO's own ``000000397133.jpg`` gives 397133), else the 0-based position in the input list
    (:func:`npfrcnn.results.default_image_ids`, the Python API's rule).

    One rule for the whole run, so ids never collide.
    """
    return results.default_image_ids(list(paths))


# --- output records (shared with ``npfrcnn demo``) --------------------------------------------


def detection_record(
    path: str, image_id: int, width: int, height: int, boxes: Any, labels: Any, scores: Any,
    classes: Sequence[str],
) -> dict[str, Any]:
    """The JSON Lines record of one image: ``{"path", "image_id", "width", "height",
    "detections": [{"box": [x1, y1, x2, y2], "label", "class_id", "score"}]}``.

    ``labels`` are 0-based indices into ``classes``; floats are float32 values written as the
    shortest decimals that read back to them. The record is the Python API's
    (:func:`npfrcnn.results.image_record`), so ``Prediction.to_json`` writes the same line.
    """
    lab = np.asarray(labels).reshape(-1)
    return results.image_record(
        path, image_id, width, height, boxes, lab, scores, [classes[int(c)] for c in lab]
    )


def coco_records(
    record: dict[str, Any], category_ids: Sequence[int | None] | None = None
) -> list[dict[str, Any]]:
    """COCO results ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` of one
    :func:`detection_record` (:func:`npfrcnn.results.coco_results`).

    ``bbox`` is ``[x1, y1, x2 - x1, y2 - y1]`` with the differences taken in float32.
    ``category_ids[class_id]`` gives the category (None: the detection is left out, for a
    model class the ground truth has no category for); without ``category_ids``,
    ``class_id + 1`` (1-based, 0 left for the background).
    """
    dets = record["detections"]
    return results.coco_results(
        int(record["image_id"]),
        np.array([d["box"] for d in dets], dtype=np.float32).reshape(-1, 4),
        np.array([int(d["class_id"]) for d in dets], dtype=np.int64),
        np.array([d["score"] for d in dets], dtype=np.float32),
        None if category_ids is None else list(category_ids),
    )


def write_coco(path: str | os.PathLike[str], results: Sequence[dict[str, Any]]) -> None:
    """Write COCO results (a JSON list, ``[]`` when empty) atomically."""
    with atomic_write(path) as f:
        json.dump(list(results), f)
        f.write("\n")


def draw_and_save(
    image: np.ndarray, boxes: Any, labels: Any, scores: Any, classes: Sequence[str],
    target: str | os.PathLike[str], fmt: str,
) -> None:
    """Draw the detections on ``image`` (:func:`npfrcnn.draw.draw_detections`) and write the
    drawing atomically to ``target`` in Pillow format ``fmt`` (``"PNG"``, ``"JPEG"``, ...; see
    :func:`npfrcnn.draw.drawing_names` for the names ``detect`` uses)."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    pic = draw_detections(image, b, np.asarray(labels).reshape(-1),
                          np.asarray(scores).reshape(-1), classes)
    save_drawing(pic, target, fmt)


# --- COCO ground truth (--coco-gt) ------------------------------------------------------------

#: Model class names that stand for "no class" (torchvision's COCO list has ``N/A`` gaps):
#: they need no ground-truth category, and their detections are left out of ``--coco``.
PLACEHOLDER_CLASSES = frozenset({"N/A", "__background__", "background"})


def read_coco_gt(path: str) -> dict[str, Any]:
    """The ``images`` and ``categories`` of a COCO annotations file, checked.

    Raises:
        CommandError: unreadable, not JSON, or without the COCO fields (named).
    """
    what = f"--coco-gt {path}"
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise CommandError(f"{what}: cannot read it ({describe_os_error(e)})") from None
    except UnicodeDecodeError:
        raise CommandError(f"{what}: not a UTF-8 text file; give a COCO annotations JSON "
                           "file (e.g. instances_val2017.json)") from None
    except json.JSONDecodeError as e:
        raise CommandError(f"{what}: not valid JSON (line {e.lineno}, column {e.colno}: "
                           f"{e.msg}); give a COCO annotations file") from None
    if not isinstance(data, dict):
        raise CommandError(f"{what}: is it a COCO annotations file? Those are a JSON object "
                           "with 'images' and 'categories' (a results file is a list)")
    for key, fields in (("images", ("id", "file_name")), ("categories", ("id", "name"))):
        items = data.get(key)
        if not isinstance(items, list):
            raise CommandError(f"{what}: has no '{key}' list; is it a COCO annotations file "
                               "(not a results file)?")
        for k, item in enumerate(items):
            ok = isinstance(item, dict) and isinstance(item.get(fields[0]), int) and (
                isinstance(item.get(fields[1]), str)
            )
            if not ok:
                raise CommandError(f"{what}: {key}[{k}] needs an integer '{fields[0]}' and a "
                                   f"string '{fields[1]}', got {str(item)[:80]}")
    return {"images": data["images"], "categories": data["categories"]}


def match_gt_images(paths: Sequence[str], gt: dict[str, Any], gt_path: str) -> list[int]:
    """The ground truth's ``image_id`` of each input, matched by file name.

    An input matches the image whose ``file_name`` has the same last component; when several
    do (the same name in two folders), the one whose whole ``file_name`` ends the input's path.

    Raises:
        CommandError: some inputs match no image, or more than one (all listed, up to 10).
    """
    by_name: dict[str, list[dict[str, Any]]] = {}
    for im in gt["images"]:
        fn = im["file_name"].replace("\\", "/")
        by_name.setdefault(fn.rsplit("/", 1)[-1], []).append({"id": im["id"], "file_name": fn})
    ids: list[int] = []
    missing: list[str] = []
    ambiguous: list[str] = []
    for p in paths:
        cands = by_name.get(os.path.basename(p), [])
        if len(cands) > 1:
            parts = os.path.abspath(p).replace("\\", "/").split("/")
            cands = [c for c in cands
                     if parts[-len(c["file_name"].split("/")):] == c["file_name"].split("/")]
        if len(cands) == 1:
            ids.append(int(cands[0]["id"]))
        elif not cands:
            missing.append(p)
        else:
            ambiguous.append(f"{p} (ids {', '.join(str(c['id']) for c in cands)})")
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10
                                           else "")
        raise CommandError(
            f"{len(missing)} input image(s) are not images of --coco-gt {gt_path} (matched by "
            f"file name): {shown}; remove them from the inputs, or give the annotations that "
            "list them"
        )
    if ambiguous:
        raise CommandError(
            f"input image(s) match several images of --coco-gt {gt_path}: "
            f"{'; '.join(ambiguous[:10])}; give the files from the folders the annotations "
            "name"
        )
    return ids


def gt_category_ids(classes: Sequence[str], gt: dict[str, Any], gt_path: str) -> list[int | None]:
    """The ground truth's ``category_id`` of each model class, matched by name.

    Exact names first, then case-insensitively when that is unique. Placeholder classes
    (:data:`PLACEHOLDER_CLASSES`) without a category map to None.

    Raises:
        CommandError: a model class has no category (all such classes are named).
    """
    exact = {c["name"]: int(c["id"]) for c in gt["categories"]}
    folded: dict[str, list[int]] = {}
    for c in gt["categories"]:
        folded.setdefault(c["name"].casefold(), []).append(int(c["id"]))
    out: list[int | None] = []
    unmatched: list[str] = []
    for name in classes:
        if name in exact:
            out.append(exact[name])
        elif len(folded.get(name.casefold(), [])) == 1:
            out.append(folded[name.casefold()][0])
        elif name in PLACEHOLDER_CLASSES:
            out.append(None)
        else:
            out.append(None)
            unmatched.append(name)
    if unmatched:
        names = ", ".join(repr(n) for n in unmatched[:10])
        cats = ", ".join(repr(c["name"]) for c in gt["categories"][:10])
        more = ", ..." if len(gt["categories"]) > 10 else ""
        raise CommandError(
            f"the model's class(es) {names} have no category of the same name in --coco-gt "
            f"{gt_path} (its categories: {cats}{more}); use annotations with these classes, or "
            "a model trained on the annotations' classes"
        )
    return out


# --- detect ----------------------------------------------------------------------------------


def _load_model(weights: str, backend: str) -> Any:
    """``FasterRCNN.from_hdf5``; a separate function so tests can substitute a fake model."""
    from npfrcnn.model import FasterRCNN

    return FasterRCNN.from_hdf5(weights, backend=backend)


def load_weights(weights: str, backend: str, loader: Callable[[str, str], Any] | None = None
                 ) -> Any:
    """``loader(weights, backend)`` (default :func:`_load_model`), or a :class:`CommandError`
    naming the file and why it cannot be used (the commands' one way to load weights)."""
    try:
        return (loader or _load_model)(weights, backend)
    except (ValueError, OSError, NotImplementedError) as e:  # WeightsError is a ValueError
        detail = describe_os_error(e) if isinstance(e, OSError) else str(e)
        raise CommandError(f"cannot load weights {weights}: {detail}") from None


def _provenance(weights: str) -> dict[str, Any]:
    """The weights file's ``provenance`` attribute (attributes only, no tensors); {} if absent."""
    try:
        import h5py

        with h5py.File(weights, "r") as f:
            v = f.attrs.get("provenance")
        d = json.loads(v.decode() if isinstance(v, bytes) else str(v))
        return d if isinstance(d, dict) else {}
    except Exception:  # a fake model in tests, or a file without provenance: no warning
        return {}


def hashes_file(output: str | os.PathLike[str]) -> Path:
    """The file beside ``detect --output FILE`` that lists each finished image's content hash
    (``FILE.sha256``: one JSON line ``{"path", "sha256"}`` per line of FILE, written with it),
    so that ``--resume`` skips an image only if it is the same file with the same bytes."""
    p = Path(output)
    return p.with_name(p.name + ".sha256")


def _read_hashes(output: str) -> dict[str, str]:
    """``path -> sha256`` from :func:`hashes_file` (empty when there is none: an output of an
    older npfrcnn; its images are then matched by path alone). A torn last line is skipped."""
    f = hashes_file(output)
    if not f.exists():
        return {}
    lines, _, _ = read_lines(f)
    out: dict[str, str] = {}
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("path"), str) and isinstance(
                rec.get("sha256"), str):
            out[rec["path"]] = rec["sha256"]
    return out


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _weights_id(weights: str, provenance: dict[str, Any]) -> str:
    """What identifies the weights: their tensors' sha256 (recorded in the file), else the
    file's sha256, else the path."""
    tensors = provenance.get("tensors_sha256")
    if isinstance(tensors, str):
        return f"tensors sha256 {tensors}"
    if os.path.isfile(weights):
        return f"file sha256 {_sha256(weights)}"
    return f"path {weights}"


def _resumable(output: str | os.PathLike[str]) -> bool:
    """Whether ``--output`` is (or will be created as) a regular file: only those get a run
    file and can be resumed (``/dev/stdout``, a pipe or a terminal cannot)."""
    try:
        return stat.S_ISREG(os.stat(output).st_mode)
    except FileNotFoundError:
        return True


def run_file(output: str | os.PathLike[str]) -> Path:
    """The file beside ``detect --output FILE`` that records the run's weights and settings
    (``FILE.run.json``), which ``--resume`` checks."""
    p = Path(output)
    return p.with_name(p.name + ".run.json")


_SETTING_NAMES = {
    "weights": "weights", "min_prob": "--min-prob", "max_detections": "--max-detections",
    "backend": "--backend", "image_ids": "image ids", "coco_gt": "--coco-gt",
}


def _read_previous(
    output: str, settings: dict[str, Any]
) -> tuple[list[dict[str, Any]], int, bool]:
    """The records of an earlier run in ``output`` that ``--resume`` continues.

    Returns:
        ``(records, good_bytes, torn)`` as :func:`npfrcnn._io.read_lines`.

    Raises:
        CommandError: the file was written with other weights or settings (named), has no
            settings file, or a damaged line that is not its last.
    """
    lines, good, torn = read_lines(output)
    records: list[dict[str, Any]] = []
    for k, line in enumerate(lines):
        try:
            rec = json.loads(line)
            ok = isinstance(rec, dict) and isinstance(rec.get("path"), str) and (
                isinstance(rec.get("detections"), list)
            )
        except json.JSONDecodeError:
            ok = False
        if not ok:
            if k == len(lines) - 1:  # a last line that was cut and followed by nothing else
                return records, good - len(line.encode()) - 1, True
            raise CommandError(
                f"--resume: line {k + 1} of {output} is not an npfrcnn result; the file is "
                "damaged or not from `npfrcnn detect`: write to a new file instead"
            )
        records.append(rec)
    if not records:
        return records, good, torn
    side = run_file(output)
    try:
        recorded = json.loads(side.read_text(encoding="utf-8"))["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CommandError(
            f"--resume: {output} has {len(records)} result(s) but {side} (the weights and "
            "settings that wrote them) is missing or unreadable, so the run cannot be "
            "continued safely; write to a new file, or delete both and start again"
        ) from None
    diffs = [
        f"{_SETTING_NAMES.get(k, k)}: {_show(recorded.get(k))} then, {_show(settings.get(k))} "
        "now"
        for k in sorted(set(settings) | set(recorded))
        if recorded.get(k) != settings.get(k)
    ]
    if diffs:
        raise CommandError(
            f"--resume: {output} was written with other weights or settings ("
            + "; ".join(diffs)
            + "); resume with the same ones, or write to a new file"
        )
    return records, good, torn


def _show(v: Any) -> str:
    return "the model's default" if v is None else str(v)


def _check_no_overwrite(
    args: argparse.Namespace, paths: Sequence[str], draw_targets: Sequence[str]
) -> None:
    """Refuse outputs that are inputs (same name, or the same file through a link), and
    outputs that collide with each other."""
    inputs: dict[tuple[Any, ...], str] = {}
    for p in paths:
        inputs.setdefault(_file_key(p), f"input image {p}")
    for opt in ("weights", "coco_gt"):
        v = getattr(args, opt, None)
        if v and os.path.exists(v):
            inputs.setdefault(_file_key(v), f"--{opt.replace('_', '-')} file {v}")
    outputs = [(o, v) for o, v in (("--output", args.output), ("--coco", args.coco)) if v]
    if args.output and _resumable(args.output):
        outputs.append(("--output's run file", str(run_file(args.output))))
    for opt, dest in outputs:
        if os.path.exists(dest) and _file_key(dest) in inputs:
            raise CommandError(
                f"{opt} {dest} is the {inputs[_file_key(dest)]}: writing it would destroy "
                "that input; choose another file name", usage=True,
            )
    if len(outputs) > 1:
        seen: dict[str, str] = {}
        for opt, dest in outputs:
            key = os.path.normcase(os.path.realpath(dest))
            if key in seen:
                raise CommandError(f"{seen[key]} and {opt} name the same file {dest}; give them "
                                   "different names", usage=True)
            seen[key] = opt
    out_keys = {os.path.normcase(os.path.realpath(d)): o for o, d in outputs}
    for p, target in zip(paths, draw_targets, strict=False):
        if os.path.exists(target) and _file_key(target) in inputs:
            raise CommandError(
                f"--draw {args.draw}: the drawing of {p} would be written to {target}, "
                f"replacing the {inputs[_file_key(target)]}; choose another folder for "
                "--draw", usage=True,
            )
        key = os.path.normcase(os.path.realpath(target))
        if key in out_keys:
            raise CommandError(
                f"--draw {args.draw}: the drawing of {p} would replace {out_keys[key]} "
                f"{target}; choose another folder or file name", usage=True,
            )


@dataclass
class _Timings:
    """Seconds per stage per image, first image kept apart (it includes Numba's compilation
    or cache load)."""

    order: list[str] = field(default_factory=list)
    rows: list[dict[str, float]] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)

    def add(self, row: dict[str, float], size: tuple[int, int] = (0, 0)) -> None:
        for k in row:
            if k not in self.order:
                self.order.append(k)
        self.rows.append(row)
        self.sizes.append(size)

    def speed(self, backend: str) -> str:
        """``Speed: 0.5 ms load, 0.2 ms preprocess, ... per image at WxH`` (medians; the first
        image is left out when there are others, as it includes one-time set-up)."""
        if not self.rows:
            return "Speed: no image was processed"
        rows = self.rows[1:] or self.rows
        names = {"load": "load", "draw": "draw"}
        parts = []
        for k in self.order:
            if k in ("detect", "total"):
                continue
            vals = [r[k] for r in rows if k in r]
            if vals:
                parts.append(f"{_ms(statistics.median(vals))} {names.get(k, k)}")
        sizes = set(self.sizes[1:] or self.sizes)
        if len(sizes) == 1:
            w, h = next(iter(sizes))
            where = f"at {w}x{h}"
        else:
            ws = sorted(s[0] for s in sizes)
            hs = sorted(s[1] for s in sizes)
            where = f"at mixed sizes (median {ws[len(ws) // 2]}x{hs[len(hs) // 2]})"
        text = f"Speed: {', '.join(parts)} per image {where}"
        if len(self.rows) > 1:
            text += (f", median of {len(rows)}; the first image took "
                     f"{self.rows[0].get('total', math.nan):.2f} s")
            if backend == "cpu":
                text += " (with Numba's one-time set-up)"
        elif backend == "cpu":
            text += " (one image: includes Numba's one-time set-up)"
        return text

    def summary(self, model_load_s: float, backend: str) -> str:
        n = len(self.rows)
        lines = [f"timing over {n} image(s), seconds (model load {model_load_s:.3f} s):"]
        if n == 0:
            return lines[0]
        rest = self.rows[1:]
        head = f"  {'stage':<16}{'first image':>12}"
        if rest:
            head += f"{f'median of {len(rest)}':>14}"
        lines.append(head)
        labels = {"load": "load image", "detect": "detect (all)", "draw": "draw + save"}
        for k in self.order:
            name = f"  {k}" if k not in labels and k != "total" else labels.get(k, k)
            line = f"  {name:<16}{self.rows[0].get(k, math.nan):>12.4f}"
            if rest:
                vals = [r[k] for r in rest if k in r]
                med = statistics.median(vals) if vals else math.nan
                line += f"{med:>14.4f}"
            lines.append(line)
        if rest:
            first = self.rows[0].get("total", math.nan)
            med = statistics.median([r["total"] for r in rest if "total" in r] or [math.nan])
            why = "Numba compilation or cache load, " if backend == "cpu" else ""
            lines.append(
                f"  first image minus median: {first - med:.3f} s (one-time {why}caches; "
                "image sizes matter too)"
            )
        elif backend == "cpu":
            lines.append(
                "  (one image: its time includes Numba's one-time set-up: compilation on a "
                "machine's first run, a load from its on-disk cache after that)"
            )
        return "\n".join(lines)


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.1f} ms" if ms < 100 else f"{ms:.0f} ms"


def _secs(s: float) -> str:
    return f"{s:.1f} s" if s >= 1 else f"{s * 1000:.0f} ms"


def _counts(labels: Any, classes: Sequence[str]) -> str:
    """``4 cat, 1 dog`` (by class id), or ``no detections``."""
    ids = [int(c) for c in np.asarray(labels).reshape(-1)]
    if not ids:
        return "no detections"
    counts: dict[int, int] = {}
    for c in ids:
        counts[c] = counts.get(c, 0) + 1
    return ", ".join(
        f"{n} {classes[c] if 0 <= c < len(classes) else c}" for c, n in sorted(counts.items())
    )


def cmd_detect(args: argparse.Namespace, log: _Log) -> int:
    if getattr(args, "max_pixels", None) is None:
        return _detect(args, log)
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = args.max_pixels  # Pillow's guard is process-wide: restore it after
    try:
        return _detect(args, log)
    finally:
        Image.MAX_IMAGE_PIXELS = saved


@dataclass
class _Outcome:
    """One image's detection (in-process or from a Dask worker), or why it failed."""

    width: int = 0
    height: int = 0
    boxes: Any = None
    labels: Any = None
    scores: Any = None
    row: dict[str, float] = field(default_factory=dict)
    image: Any = None  # the decoded image, when it was decoded here (for --draw)
    worker: str = ""
    sha256: str = ""  # of the file's bytes (for --resume)
    error: str | None = None  # the message after "skipped"


def _local_outcomes(
    model: Any, paths: list[str], todo: list[int], args: argparse.Namespace
) -> Iterator[tuple[int, _Outcome]]:
    from npfrcnn.image import ImageError, load

    for i in todo:
        path = paths[i]
        row: dict[str, float] = {}
        try:
            t = time.perf_counter()
            image = load(path)
            row["load"] = time.perf_counter() - t
            stage: dict[str, float] = {}
            t = time.perf_counter()
            dets = model.detect(
                image, min_prob=args.min_prob, max_detections=args.max_detections,
                timings=stage,
            )
            detect_s = time.perf_counter() - t
        except ImageError as e:
            yield i, _Outcome(error=f": {e}")
            continue
        except Exception as e:  # keep going past one bad image; report it
            cache = _numba_cache_problem(e)
            if cache is not None:
                raise CommandError(cache) from None
            yield i, _Outcome(error=f" {path}: {type(e).__name__}: {e}")
            continue
        for s in (*STAGES, *sorted(set(stage) - set(STAGES))):
            if s in stage:
                row[s] = float(stage[s])
        row["detect"] = detect_s
        try:
            digest = _sha256(path)
        except OSError:
            digest = ""
        yield i, _Outcome(int(image.shape[1]), int(image.shape[0]), dets.boxes, dets.labels,
                          dets.scores, row, image, sha256=digest)


def add_dask_arguments(p: argparse.ArgumentParser) -> None:
    """``--workers``, ``--scheduler`` and ``--batch-size`` (Dask; the ``dask`` extra)."""
    g = p.add_argument_group(
        "Dask (pip install \"npfrcnn[dask]\")",
        "Run on Dask distributed: --workers N starts a local cluster of N worker processes; "
        "--scheduler (or DASK_SCHEDULER_ADDRESS) uses an existing cluster. Each worker loads "
        "the model once (the weights are sent to it); results stream back in input order.",
    )
    g.add_argument("--workers", type=positive_int, default=None, metavar="N",
                   help="a local Dask cluster of N worker processes")
    g.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                   help="an existing Dask scheduler (default: $DASK_SCHEDULER_ADDRESS)")
    g.add_argument("--batch-size", type=positive_int, default=4, metavar="N",
                   help="images per Dask task (default 4)")


def _wants_dask(args: argparse.Namespace) -> bool:
    """``--workers`` or ``--scheduler`` given, or ``DASK_SCHEDULER_ADDRESS`` set."""
    return bool(getattr(args, "workers", None) or getattr(args, "scheduler", None)
                or (hasattr(args, "workers") and os.environ.get("DASK_SCHEDULER_ADDRESS")))


class _ClientModel:
    """What the client of a Dask run needs of the model: its classes (the weights are
    validated completely here, then dropped; the workers load them)."""

    def __init__(self, weights: str):
        from npfrcnn.weights.hdf5 import read

        wf = read(weights)
        self.classes = list(wf.classes)
        self.config = wf.config
        self.provenance = wf.provenance


def _dask_executor(args: argparse.Namespace, log: _Log) -> Any:
    from npfrcnn.distributed import DaskError, DaskExecutor

    if getattr(args, "workers", None) and getattr(args, "scheduler", None):
        raise CommandError("give --workers (a local cluster) or --scheduler (an existing "
                           "one), not both", usage=True)
    try:
        return DaskExecutor(
            args.weights, workers=args.workers, scheduler=args.scheduler,
            backend=args.backend, batch_size=args.batch_size, log=log.info,
        )
    except DaskError as e:
        raise CommandError(str(e)) from None


def _dask_outcomes(
    executor: Any, paths: list[str], todo: list[int], args: argparse.Namespace
) -> Iterator[tuple[int, _Outcome]]:
    from npfrcnn.distributed import DaskError

    options = {"min_prob": args.min_prob, "max_detections": args.max_detections,
               "decoder": "exif", "max_pixels": args.max_pixels}
    try:
        for i, res in executor.map("detect", [(i, paths[i]) for i in todo], options):
            if not res.get("ok"):
                # as in-process: "skipped: <the image error>", "skipped <path>: <Type>: ..."
                sep = ": " if res.get("image_error", True) else " "
                yield i, _Outcome(error=f"{sep}{res.get('error')}")
                continue
            row = {k: float(v) for k, v in res.get("timings", {}).items()}
            yield i, _Outcome(
                int(res["width"]), int(res["height"]),
                np.asarray(res["boxes"], np.float32).reshape(-1, 4),
                np.asarray(res["labels"], np.int64).reshape(-1),
                np.asarray(res["scores"], np.float32).reshape(-1), row,
                worker=str(res.get("worker", "")), sha256=str(res.get("sha256", "")),
            )
    except DaskError as e:
        raise CommandError(f"{e}; the finished images are kept (continue with --resume)",
                           EXIT_IO) from None


def _detect(args: argparse.Namespace, log: _Log) -> int:
    from npfrcnn.image import ImageError, load

    # 1. Everything that can be checked without the model, before any work or any output.
    if args.resume and args.output is None:
        raise CommandError("--resume needs --output FILE.jsonl, the file to continue",
                           usage=True)
    if args.resume and not _resumable(args.output):
        raise CommandError(f"--resume needs --output to be a regular file; {args.output} is not "
                           "(a device, pipe or terminal cannot be read back)", usage=True)
    default_weights = not args.weights
    if default_weights:
        from npfrcnn import cli_train

        args.weights = cli_train.default_weights()
        if not args.weights:
            raise CommandError(_NO_WEIGHTS)
    paths, problems = expand_inputs(args.inputs)
    for p in problems:
        log.error(p)
    failed = len(problems)
    if not paths:
        raise CommandError("no input images; give image files, folders or glob patterns")
    draws = drawing_names(paths, args.draw_format) if args.draw is not None else []
    draw_dir = Path(args.draw) if args.draw is not None else None
    draw_targets = [str(draw_dir / n) for n, _ in draws] if draw_dir is not None else []
    _check_no_overwrite(args, paths, draw_targets)
    gt = read_coco_gt(args.coco_gt) if args.coco_gt else None
    if gt is not None:
        ids = match_gt_images(paths, gt, args.coco_gt)
        id_rule = f"--coco-gt sha256 {_sha256(args.coco_gt)}"
    else:
        ids = coco_image_ids(paths)
        numeric = bool(paths) and ids != list(range(len(paths)))
        id_rule = "file stems" if numeric else (
            "positions in the input list (sha256 "
            + hashlib.sha256("\n".join(paths).encode()).hexdigest()[:16] + ")"
        )

    # 2. The model; then the checks that need its classes and identity.
    if default_weights:
        log.info(
            f"no --weights: using the shipped demo model {args.weights} (trained on synthetic "
            "shapes: rectangle, ellipse, triangle); pass --weights for your own model"
        )
    t0 = time.perf_counter()
    distributed = _wants_dask(args)
    model: Any = load_weights(
        args.weights, args.backend, (lambda w, _: _ClientModel(w)) if distributed else None)
    model_load_s = time.perf_counter() - t0
    provenance = getattr(model, "provenance", None) or _provenance(args.weights)
    if not isinstance(provenance, dict):
        provenance = {}
    if provenance.get("random"):
        log.info(
            f"{args.weights} holds RANDOM weights: detections are meaningless (pipeline demo)"
        )
    classes = list(model.classes)
    categories = gt_category_ids(classes, gt, args.coco_gt) if gt is not None else None
    settings = {
        "weights": _weights_id(args.weights, provenance), "min_prob": args.min_prob,
        "max_detections": args.max_detections, "backend": args.backend, "image_ids": id_rule,
    }
    previous: list[dict[str, Any]] = []
    good_bytes, torn = 0, False
    if args.resume and os.path.exists(args.output):
        previous, good_bytes, torn = _read_previous(args.output, settings)
    done_paths = {r["path"] for r in previous}
    key_paths = {_file_key(r["path"]): r["path"] for r in previous if os.path.exists(r["path"])}
    hashes = _read_hashes(args.output) if previous else {}
    changed: list[str] = []

    def already_done(p: str) -> bool:
        """In the output already: the same file (path, or another name of it) with the same
        content (sha256), when the output recorded the content."""
        rec = p if p in done_paths else key_paths.get(_file_key(p))
        if rec is None:
            return False
        want = hashes.get(rec)
        if want is None:
            return True
        try:
            same = _sha256(p) == want
        except OSError:
            return True  # unreadable now: it will fail again; keep the earlier line
        if not same:
            changed.append(p)
        return same

    todo = [i for i, p in enumerate(paths) if not already_done(p)]

    # 3. Outputs: only now is anything created.
    if draw_dir is not None:
        draw_dir.mkdir(parents=True, exist_ok=True)
    sink: LineLog | None = None
    hash_log: LineLog | None = None
    if args.output is not None:
        if torn:
            os.truncate(args.output, good_bytes)
            log.info(f"--resume: dropped the incomplete last line of {args.output}")
        fresh = not previous
        if _resumable(args.output):  # not for /dev/stdout, a pipe, a terminal
            with atomic_write(run_file(args.output)) as f:
                json.dump({"npfrcnn": __version__, "command": "detect", "settings": settings},
                          f, indent=2)
                f.write("\n")
            hash_log = LineLog(hashes_file(args.output), truncate=fresh)
        sink = LineLog(args.output, truncate=fresh)
    if previous:
        log.info(f"--resume: {len(paths) - len(todo)} of {len(paths)} image(s) already in "
                 f"{args.output}; {len(todo)} to do")
    if changed:
        log.info(f"--resume: {len(changed)} image(s) changed since they were detected (their "
                 f"content sha256 differs, e.g. {changed[0]}): detecting them again; their "
                 f"earlier lines stay in {args.output}")
    records = list(previous)
    timings = _Timings()
    executor = _dask_executor(args, log) if distributed else None
    log.info(f"{len(todo)} image(s), backend {args.backend}"
             + (f", on Dask ({executor.describe()})" if executor is not None else ""))
    progress = _Progress(log, len(todo), every_s=math.inf)
    n_new = 0
    if executor is not None:
        outcomes: Iterator[tuple[int, _Outcome]] = _dask_outcomes(executor, paths, todo, args)
    else:
        outcomes = _local_outcomes(model, paths, todo, args)
    run_t0 = time.perf_counter()

    def emit(record: dict[str, Any]) -> None:
        line = json.dumps(record)
        if sink is not None:
            sink.write(line)
        else:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def finish_outputs() -> None:
        if args.coco is not None:
            results = [c for r in records for c in coco_records(r, categories)]
            write_coco(args.coco, results)
        if sink is not None:
            sink.close()
        if hash_log is not None:
            hash_log.close()

    try:
        for k, (i, out) in enumerate(outcomes):
            path = paths[i]
            if out.error is not None:
                log.error(f"skipped{out.error}")
                failed += 1
                progress.update(k + 1, path)
                continue
            row = out.row
            w, h = out.width, out.height
            record = detection_record(path, ids[i], w, h, out.boxes, out.labels, out.scores,
                                      classes)
            if draw_dir is not None:  # first, so that an image in --output has its drawing
                t = time.perf_counter()
                target = draw_targets[i]
                try:
                    image = out.image if out.image is not None else load(path)
                    draw_and_save(image, out.boxes, out.labels, out.scores, classes, target,
                                  draws[i][1])
                except ImageError as e:  # changed since a worker read it
                    log.error(f"{path}: could not draw it: {e}")
                    failed += 1
                except OSError as e:  # e.g. disk full: the detections still stand
                    log.error(f"{path}: could not write the drawing: {describe_os_error(e)}")
                    failed += 1
                row["draw"] = time.perf_counter() - t
            emit(record)
            if hash_log is not None and out.sha256:
                hash_log.write(json.dumps({"path": path, "sha256": out.sha256}))
            records.append(record)
            n_new += 1
            row["total"] = sum(v for s, v in row.items() if s in ("load", "detect", "draw"))
            timings.add(row, (w, h))
            where = ""
            if executor is not None:
                rate = (k + 1) / max(time.perf_counter() - run_t0, 1e-9)
                where = (f" [{out.worker}; {executor.workers_alive()} worker(s) alive, "
                         f"{rate:.2f} images/s]")
            log.line(f"image {k + 1}/{len(todo)} {path} {w}x{h}: "
                     f"{_counts(out.labels, classes)}, {_secs(row['total'])}{where}")
            progress.update(k + 1, path)
    except BaseException as e:
        progress.close()
        if executor is not None:
            executor.close()
        if isinstance(e, (KeyboardInterrupt, OSError)):
            kept = []
            if args.output is not None and records:
                kept.append(f"{len(records)} image(s) in {args.output} (continue with --resume)")
            try:
                finish_outputs()
                if args.coco is not None and records:
                    kept.append(f"their COCO results in {args.coco}")
            except OSError as e2:
                log.error(f"could not write {args.coco}: {describe_os_error(e2)}")
            if draw_dir is not None and n_new:
                kept.append(f"drawings in {draw_dir}")
            what = "interrupted" if isinstance(e, KeyboardInterrupt) else "stopped"
            if kept and not isinstance(e, BrokenPipeError):
                log.error(f"{what} after {n_new} of {len(todo)} image(s); kept: "
                          + "; ".join(kept))
        else:
            if sink is not None:
                sink.close()
            if hash_log is not None:
                hash_log.close()
        raise
    progress.close()
    if executor is not None:
        alive = executor.workers_alive()
        executor.close()
        wall = time.perf_counter() - run_t0
        log.info(f"Dask: {n_new} image(s) in {wall:.1f} s ({n_new / max(wall, 1e-9):.2f} "
                 f"images/s, the stages below summed over every worker); {alive} worker(s) "
                 "alive at the end")
    finish_outputs()
    if not args.quiet:
        log.line(timings.speed(args.backend))
        if args.timings:
            log.info(timings.summary(model_load_s, args.backend))
    skipped_cats = sum(
        1 for r in records for d in r["detections"]
        if categories is not None and categories[int(d["class_id"])] is None
    )
    if skipped_cats:
        log.info(f"--coco: left out {skipped_cats} detection(s) of placeholder classes "
                 f"({', '.join(sorted(PLACEHOLDER_CLASSES & set(classes)))}) that have no "
                 "ground-truth category")
    ok = len(timings.rows)
    if draw_dir is not None and ok:
        log.info(f"drawings in {draw_dir}")
    if failed:
        log.error(f"{failed} input(s) failed, {ok} image(s) processed")
        return EXIT_SOME_FAILED
    wall = time.perf_counter() - run_t0
    log.info(f"{ok} image(s) processed in {wall:.1f} s ({n_new / max(wall, 1e-9):.2f} "
             "images/s)")
    return EXIT_OK


# --- convert, info, random-model -------------------------------------------------------------


def _parse_set(items: list[str] | None) -> dict[str, Any]:
    """``--set key=value`` pairs; values are JSON (numbers, lists) or plain strings."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {item!r} (e.g. --set min_size=640)")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _refuse_same(src: str, out: str, what: str) -> None:
    """Refuse an output that is the input (same path, or the same file through a link)."""
    same = os.path.exists(out) and os.path.exists(src) and os.path.samefile(src, out)
    if same or os.path.normcase(os.path.realpath(src)) == os.path.normcase(os.path.realpath(out)):
        raise CommandError(f"{out} is the {what} {src}: writing it would destroy the input; "
                           "choose another output file name", usage=True)


def _convert_torchvision(args: argparse.Namespace, log: _Log) -> int:
    from npfrcnn.config.profiles.torchvision import TORCHVISION_PROFILES
    from npfrcnn.weights.convert_torchvision import torchvision_to_hdf5
    from npfrcnn.weights.hdf5 import WeightsError
    from npfrcnn.weights.torch_checkpoint import CheckpointError

    if args.profile not in TORCHVISION_PROFILES:
        log.error(
            f"--profile {args.profile!r} is not a torchvision profile; choose one of "
            f"{', '.join(TORCHVISION_PROFILES)}"
        )
        return 2
    try:
        changes = _parse_set(args.set)
    except ValueError as e:
        log.error(str(e))
        return 2
    try:
        result = torchvision_to_hdf5(
            args.checkpoint, args.out, args.profile, classes_json_path=args.classes,
            bn_eps=args.bn_eps, changes=changes,
        )
    except (CheckpointError, WeightsError, ValueError, TypeError) as e:
        log.error(f"cannot convert {args.checkpoint}: {e}")
        return 2
    cfg = result["config"]
    for note in result["notes"][:5]:
        log.info(f"key upgrade: {note}")
    log.info(
        f"wrote {args.out}: {cfg.name}, ResNet-{cfg.depth}, {cfg.num_classes} classes, "
        f"{cfg.body_norm} (eps {cfg.bn_eps:g}); check it with `npfrcnn info {args.out}`"
    )
    return 0


def _convert_detectron2(args: argparse.Namespace, log: _Log) -> int:
    from npfrcnn.config.profiles.detectron2 import DETECTRON2_PROFILES
    from npfrcnn.weights.convert_detectron2 import detectron2_to_hdf5
    from npfrcnn.weights.hdf5 import WeightsError
    from npfrcnn.weights.torch_checkpoint import CheckpointError

    if args.profile not in DETECTRON2_PROFILES:
        log.error(
            f"--profile {args.profile!r} is not a Detectron2 profile; choose one of "
            f"{', '.join(DETECTRON2_PROFILES)}"
        )
        return 2
    try:
        changes = _parse_set(args.set)
    except ValueError as e:
        log.error(str(e))
        return 2
    if args.bn_eps is not None:
        changes.setdefault("bn_eps", args.bn_eps)
    try:
        result = detectron2_to_hdf5(
            args.checkpoint, args.out, args.profile, classes_json_path=args.classes,
            changes=changes,
        )
    except (CheckpointError, WeightsError, ValueError, TypeError) as e:
        log.error(f"cannot convert {args.checkpoint}: {e}")
        return 2
    cfg = result["config"]
    for note in result["notes"]:
        log.info(f"note: {note}")
    log.info(
        f"wrote {args.out}: {cfg.name}, ResNet-{cfg.depth} {cfg.variant.upper()}, "
        f"{cfg.num_classes} classes (from {result['provenance']['source_format']}); check it "
        f"with `npfrcnn info {args.out}`"
    )
    return 0


def cmd_convert(args: argparse.Namespace, log: _Log) -> int:
    source = args.source
    if source is None:
        if args.profile and args.profile.startswith("detectron2-"):
            source = "detectron2"
        else:
            source = "torchvision" if args.profile or Path(args.checkpoint).is_file() else "tf"
    if source in ("torchvision", "detectron2"):
        _refuse_same(args.checkpoint, args.out, "checkpoint")
    else:
        for ext in (".index", ".data-00000-of-00001"):
            _refuse_same(args.checkpoint + ext, args.out, "checkpoint file")
    if args.classes is not None:
        _refuse_same(args.classes, args.out, "--classes file")
    if source == "torchvision":
        if args.profile is None:
            raise CommandError("--from torchvision needs --profile (e.g. --profile "
                               "torchvision-r50-fpn)", usage=True)
        return _convert_torchvision(args, log)
    if source == "detectron2":
        if args.profile is None:
            raise CommandError("--from detectron2 needs --profile (detectron2-r101-c4, "
                               "detectron2-r50-fpn or detectron2-r101-fpn)", usage=True)
        return _convert_detectron2(args, log)
    if args.classes is None:
        raise CommandError(
            "converting a TF checkpoint needs --classes classes.json (for a torchvision "
            "checkpoint pass --profile)", usage=True,
        )
    try:
        from npfrcnn.weights.convert import checkpoint_to_hdf5
    except ImportError as e:
        log.error(
            f"converting needs TensorFlow to read the checkpoint ({e}); "
            "install it with `pip install tensorflow-cpu`"
        )
        return 2
    try:
        provenance = checkpoint_to_hdf5(args.checkpoint, args.out, args.classes)
    except ImportError as e:
        log.error(f"converting needs TensorFlow ({e}); `pip install tensorflow-cpu`")
        return 2
    except ValueError as e:
        log.error(f"cannot convert {args.checkpoint}: {e}")
        return 2
    skipped = provenance.get("skipped_training_variables") if isinstance(provenance, dict) else None
    if skipped:
        log.info(f"left out {len(skipped)} training-only variable(s) (optimizer slots, step)")
    log.info(f"wrote {args.out}; check it with `npfrcnn info {args.out}`")
    return 0


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def plain(v: Any) -> str:
    """A value as text for people: ``none``, ``yes``/``no``, numbers without a needless
    ``.0`` or exponent (``32``, ``0.00001``), lists and tuples as ``a, b, c`` (nested ones in
    parentheses), ``(empty)`` for an empty list; dicts are laid out by :func:`_plain_lines`."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if not math.isfinite(f):
            return str(f)
        return np.format_float_positional(f, trim="-")
    if isinstance(v, (list, tuple)):
        if not v:
            return "(empty)"
        return ", ".join(f"({plain(x)})" if isinstance(x, (list, tuple)) else plain(x)
                         for x in v)
    if isinstance(v, dict):
        return "; ".join(f"{k} {plain(x)}" for k, x in v.items()) or "(empty)"
    return str(v)


def _plain_lines(d: dict[str, Any], indent: str) -> list[str]:
    """``key: value`` lines, sorted by key; a dict value becomes an indented block."""
    out: list[str] = []
    for k in sorted(d):
        v = d[k]
        if isinstance(v, dict) and v:
            out.append(f"{indent}{k}:")
            out.extend(_plain_lines(v, indent + "  "))
        else:
            out.append(f"{indent}{k}: {plain(v)}")
    return out


def _shape(s: Sequence[int]) -> str:
    return " x ".join(str(int(n)) for n in s) if len(s) else "scalar"


def cmd_info(args: argparse.Namespace, log: _Log) -> int:
    from npfrcnn.weights.hdf5 import inspect

    info = inspect(args.file)
    problems = list(info.get("problems") or [])
    if args.json:
        sys.stdout.write(json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")
        return 1 if problems else 0
    out: list[str] = [f"file:        {args.file}"]
    if os.path.isfile(args.file):
        out[0] += f" ({_mb(os.path.getsize(args.file))} on disk)"
    if info.get("format") is not None:
        out.append(f"format:      {info['format']} version {plain(info.get('format_version'))}")
    prov = info.get("provenance") or {}
    if prov:
        out.append("provenance:")
        out.extend(_plain_lines(prov, "  "))
        if prov.get("random"):
            out.append("  NOTE: random weights; detections from this file are meaningless")
    out.append(f"integrity:   {info.get('integrity')}")
    cfg = info.get("config")
    if cfg:
        units = cfg.get("units_per_block") or []
        depth = cfg.get("depth") or (3 * sum(units) + 2 if units else "?")
        out.append(
            f"config:      profile {cfg.get('name')}, ResNet-{depth}"
            + (f" (units per block {plain(units)})" if units else "")
            + f", {cfg.get('num_classes')} classes"
        )
        out.extend(_plain_lines(cfg, "  "))
    classes = info.get("classes") or []
    if classes:
        shown = ", ".join(classes[:10]) + (", ..." if len(classes) > 10 else "")
        out.append(f"classes:     {len(classes)}: {shown}")
    out.append(
        f"tensors:     {info.get('num_tensors', 0)}, {_mb(info.get('total_bytes', 0))} in total"
    )
    shapes = info.get("shapes") or {}
    if args.tensors:
        for name, shape in shapes.items():
            out.append(f"  {name}: {_shape(shape)}")
    elif shapes:
        out.append("  (list them with --tensors)")
    if problems:
        out.append(f"problems:    {len(problems)}")
        out.extend(f"  - {p}" for p in problems)
    else:
        out.append("problems:    none")
    sys.stdout.write("\n".join(out) + "\n")
    return 1 if problems else 0


def _parse_units(s: str) -> tuple[int, int, int, int]:
    try:
        parts = tuple(int(x) for x in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 4 comma-separated integers, got {s!r}"
        ) from None
    if len(parts) != 4 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected 4 positive integers, got {s!r}")
    return parts[0], parts[1], parts[2], parts[3]


def _non_negative_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return v


def cmd_random_model(args: argparse.Namespace, log: _Log) -> int:
    from npfrcnn.config import workshop
    from npfrcnn.weights.random import make_random_model

    classes = None
    if args.classes is not None:
        _refuse_same(args.classes, args.out, "--classes file")
        try:
            with open(args.classes, encoding="utf-8") as f:
                classes = json.load(f)
        except (OSError, ValueError) as e:
            detail = describe_os_error(e) if isinstance(e, OSError) else str(e)
            raise CommandError(f"--classes {args.classes}: cannot read a JSON list of names: "
                               f"{detail}") from None
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise CommandError(f"--classes {args.classes}: must be a JSON list of class names")
    num_classes = args.num_classes if args.num_classes is not None else (
        len(classes) if classes is not None else 80
    )
    if classes is not None and len(classes) != num_classes:
        raise CommandError(
            f"--classes has {len(classes)} names but --num-classes is {num_classes}", usage=True
        )
    changes: dict[str, Any] = {}
    if args.width is not None:
        w = args.width
        changes["base_depths"] = (w, 2 * w, 4 * w, 8 * w)
        changes["root_depth"] = w
        changes["rpn_depth"] = 8 * w
    try:
        config = workshop(
            depth=args.depth, num_classes=num_classes, units_per_block=args.units, **changes
        )
    except ValueError as e:
        raise CommandError(str(e)) from None
    make_random_model(args.out, config, seed=args.seed, classes=classes)
    log.info(
        f"wrote {args.out}: RANDOM weights, ResNet-{config.depth}, {config.num_classes} classes, "
        f"seed {args.seed}. Detections from it are meaningless: it exists to try the pipeline "
        "and to benchmark it."
    )
    return 0


# --- parser ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="npfrcnn", description="Framework-free Faster R-CNN (NumPy + Numba).",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EXIT_EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"npfrcnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser(
        "detect",
        help="detect objects in images",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Detect objects in images; one JSON line per image on stdout (or --output), "
        "one progress line per image on stderr.",
        epilog="""\
inputs:  files, folders (their image files, sorted, not recursive) and glob patterns
         ('photos/**/*.jpg'); each file is processed once, however often or under whatever
         names (links, './a' and 'a') it is given; '**' follows a symbolic link loop once.
output:  one JSON object per image, written and fsynced as each image finishes:
         {"path", "image_id", "width", "height", "detections": [{"box": [x1, y1, x2, y2],
         "label", "class_id", "score"}]}; boxes are in pixels of the image as displayed (EXIF
         orientation applied); class_id is the 0-based index into the model's class list.
         Images that fail are reported on stderr and skipped. With --output FILE, FILE.run.json
         records the weights and settings and FILE.sha256 each finished image's content hash,
         and an interrupted run keeps every finished image: run the same command with --resume
         to do the rest (an image is skipped if its path and content are already there).
--coco:  COCO results, a JSON list of {"image_id", "category_id", "bbox": [x, y, w, h],
         "score"} ([] when nothing is found), written at the end (and, when interrupted, for
         the images done), atomically; with --resume it covers every image in --output.
         image_id is the file stem when every stem is a distinct number (COCO's
         000000397133.jpg -> 397133), else the 0-based position in the expanded input list;
         category_id is class_id + 1. With --coco-gt ANNOTATIONS.json both come from the
         ground truth: image_id by file name, category_id by class name, so the file loads
         with pycocotools' COCO(ANNOTATIONS).loadRes(RESULTS); placeholder classes ('N/A')
         have no category and are left out.
--draw:  one drawing per image as it finishes, named after the input, in the input's format
         (PNG for formats Pillow cannot write, and for GIF) unless --draw-format; the folder
         (and its parents) is created when needed.
never overwritten: an input image, --weights or --coco-gt (also through a link); an output
         that would be one of them is refused before anything runs.

""" + _EXIT_EPILOG,
    )
    d.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or globs")
    d.add_argument(
        "--weights", metavar="FILE.h5",
        help="npfrcnn HDF5 weights (default: the shipped demo model, weights/demo.h5)",
    )
    d.add_argument(
        "--min-prob", type=probability, default=None, metavar="P",
        help="drop detections below this probability, in [0, 1] (default: the model's config)",
    )
    d.add_argument(
        "--max-detections", type=positive_int, default=None, metavar="N",
        help="keep at most N detections per image (default: the model's config)",
    )
    d.add_argument("--backend", choices=("cpu", "numpy"), default="cpu",
                   help="cpu: Numba kernels (default); numpy: the pure NumPy reference")
    d.add_argument("--output", "-o", type=output_file, metavar="FILE.jsonl",
                   help="write the JSON Lines here (its folder must exist)")
    d.add_argument("--resume", action="store_true",
                   help="continue an interrupted run: keep the images already in --output, "
                   "do the rest (refused if the weights or settings differ)")
    d.add_argument("--coco", type=output_file, metavar="FILE.json",
                   help="also write COCO-format results")
    d.add_argument("--coco-gt", type=input_file, metavar="ANNOTATIONS.json",
                   help="COCO annotations whose image ids (by file name) and category ids (by "
                   "class name) --coco and the JSON Lines use")
    d.add_argument("--draw", type=output_folder, metavar="DIR",
                   help="write a drawing with labelled boxes per image into DIR")
    d.add_argument("--draw-format", choices=sorted(DRAW_FORMATS), default=None,
                   help="format of the drawings (default: the input's, PNG if Pillow cannot "
                   "write it)")
    d.add_argument(
        "--max-pixels", type=positive_int, default=None, metavar="N",
        help="refuse images with more pixels (decompression-bomb guard; default Pillow's "
        "89,478,485)",
    )
    d.add_argument("--timings", action="store_true",
                   help="also print the per-stage timing table (first image and median)")
    add_dask_arguments(d)
    d.add_argument("--quiet", "-q", action="store_true",
                   help="no per-image lines, progress, summary or info messages (errors still "
                   "shown)")
    d.set_defaults(func=cmd_detect)

    c = sub.add_parser(
        "convert",
        help="convert a torchvision or Detectron2 checkpoint, or a TF checkpoint (workshop "
        "naming), to HDF5",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EXIT_EPILOG,
        description="Convert a checkpoint to an npfrcnn HDF5 weights file.\n"
        "--from torchvision: a torchvision Faster R-CNN state dict saved with torch.save (a bare\n"
        "state dict, or a training checkpoint holding it under 'model'/'state_dict') or a\n"
        ".safetensors file, read WITHOUT torch (a restricted unpickler that refuses anything\n"
        "but tensors); the architecture and class count are read from the keys and shapes.\n"
        "--from detectron2: a Detectron2 Faster R-CNN (C4 or FPN): a model-zoo .pkl\n"
        "(model_final_*.pkl: pickled NumPy arrays) or the model_final.pth its trainer writes\n"
        "(optimizer, scheduler and iteration entries are ignored), also read WITHOUT torch\n"
        "(nothing but NumPy arrays and tensors is unpickled); the format is read from the\n"
        "file's content; depth and class count from the keys. The default when --profile is\n"
        "a detectron2-* one.\n"
        "--from tf: a TensorFlow checkpoint in the workshop's variable naming (needs TensorFlow).",
    )
    c.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="MODEL.pth / MODEL.safetensors / MODEL.pkl (Detectron2), or a TF "
                   "checkpoint prefix (without .index / .data-*)")
    c.add_argument("out", metavar="OUT.h5", type=output_file)
    c.add_argument("--from", dest="source", choices=("torchvision", "detectron2", "tf"),
                   default=None,
                   help="checkpoint kind (default: detectron2 for a detectron2-* --profile, "
                   "torchvision when another --profile is given or CHECKPOINT is a file, else "
                   "tf)")
    c.add_argument("--profile", default=None,
                   help="torchvision-r50-fpn, torchvision-r50-fpn-v2 or torchvision-r101-fpn; "
                   "detectron2-r101-c4, detectron2-r50-fpn or detectron2-r101-fpn (Detectron2's "
                   "COCO-Detection faster_rcnn_R_101_C4 / R_50_FPN / R_101_FPN; a ResNet-50 C4 "
                   "converts with detectron2-r101-c4)")
    c.add_argument("--classes", default=None, metavar="classes.json",
                   help="JSON list of class names (index = class id; torchvision: the object "
                   "classes, or all of them with the background first; detectron2: exactly "
                   "the object classes, its thing_classes). Default for torchvision: COCO's "
                   "91-entry list for 91 classes, else class_1, ...; for detectron2: COCO's 80 "
                   "names for 80 classes, else class_0, ...")
    c.add_argument("--bn-eps", type=float, default=None,
                   help="FrozenBatchNorm2d epsilon, which a checkpoint cannot show (default "
                   "0.0 for torchvision-r50-fpn, as torchvision's COCO_V1 model, else 1e-5)")
    c.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="set an inference knob of the profile, e.g. --set min_size=640 "
                   "--set box_score_thresh=0.3 (repeatable; see npfrcnn.config.FPNConfig; "
                   "detectron2: npfrcnn.config.Detectron2Config, e.g. --set "
                   "score_thresh_test=0.3 --set min_size_test=600)")
    c.set_defaults(func=cmd_convert)

    i = sub.add_parser(
        "info", help="describe a weights file",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EXIT_EPILOG,
        description="Show a weights file's config, classes, tensors, provenance and integrity. "
        "Exit status 1 if the file has problems.",
    )
    i.add_argument("file", metavar="FILE.h5")
    i.add_argument("--json", action="store_true", help="print everything as JSON")
    i.add_argument("--tensors", action="store_true", help="list every tensor and its shape")
    i.set_defaults(func=cmd_info)

    r = sub.add_parser(
        "random-model",
        help="write a model with RANDOM weights (meaningless detections; to try the pipeline)",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EXIT_EPILOG,
        description="Write an HDF5 model with RANDOM weights in the workshop profile. Its\n"
        "detections are MEANINGLESS: it is not trained. It exists to try the pipeline end to\n"
        "end and to benchmark it until trained weights ship.",
    )
    r.add_argument("out", metavar="OUT.h5", type=output_file)
    r.add_argument("--depth", type=int, default=101, choices=(50, 101, 152),
                   help="ResNet depth (default 101)")
    r.add_argument("--num-classes", type=positive_int, default=None,
                   help="object classes (default 80, or the length of --classes)")
    r.add_argument("--classes", metavar="classes.json", default=None, type=input_file,
                   help="JSON list of class names (default class_0, class_1, ...)")
    r.add_argument("--seed", type=_non_negative_int, default=0, help="random seed (default 0)")
    r.add_argument("--units", type=_parse_units, default=None, metavar="A,B,C,D",
                   help="units per block for a small test network (overrides --depth), "
                   "e.g. 1,1,1,1")
    r.add_argument("--width", type=positive_int, default=None, metavar="W",
                   help="block1 bottleneck width for a narrow test network (default 64; "
                   "blocks 2-4 use 2W, 4W, 8W)")
    r.set_defaults(func=cmd_random_model)

    from npfrcnn.cli_train import register

    register(sub)  # synth, train, eval, demo
    from npfrcnn.cli_trace import register as register_trace

    register_trace(sub)  # trace, compare
    from npfrcnn.bench.cli import register as register_bench

    register_bench(sub)  # bench
    for name, p in sub.choices.items():
        p.set_defaults(_parser=p, _name=name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (:data:`EXIT_CODES`).

    The one place where the errors a user can cause become a message and a status (module
    docstring); argparse's usage errors exit 2 through ``SystemExit`` as usual.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    # The arguments as given, for commands that record their own command line (train).
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    log = _Log(sys.stderr, quiet=bool(getattr(args, "quiet", False)))
    func: Callable[[argparse.Namespace, _Log], int] = args.func
    try:
        with _signals_interrupt():
            return func(args, log)
    except CommandError as e:
        if e.usage:
            sub: argparse.ArgumentParser = getattr(args, "_parser", parser)
            sub.error(str(e))  # prints the usage line and exits 2
        log.error(str(e))
        return e.code
    except Interrupted as e:
        log.error(f"terminated by {signal.Signals(e.signum).name}")
        return 128 + e.signum
    except KeyboardInterrupt:
        log.error("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # stdout was closed early (e.g. `npfrcnn detect ... | head`): stop quietly, as Unix
        # tools do, and keep Python from complaining again when it flushes stdout at exit.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return EXIT_BROKEN_PIPE
    except OSError as e:
        log.error(describe_os_error(e))
        return EXIT_IO
    except MemoryError:
        log.error(
            "out of memory; lower --max-pixels to refuse images this large, close other "
            "programs, or run on a machine with more memory"
        )
        return EXIT_NOMEM
    except Exception as e:
        cache = _numba_cache_problem(e)
        if cache is not None:
            log.error(cache)
            return EXIT_USAGE
        if _is_user_error(e):
            log.error(str(e))
            return EXIT_USAGE
        traceback.print_exc(file=sys.stderr)
        log.error(
            f"internal error ({type(e).__name__}): this is a bug in npfrcnn {__version__}, not "
            "something you did; please report it with the traceback above and the command line"
        )
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
