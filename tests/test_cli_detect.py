"""Hardening of the inference CLI (issue 12): the one error handler in ``main``, arguments
checked before any work, inputs never overwritten, each file visited once, streamed and
resumable results, the atomic writer, the per-image interface, ``--coco-gt``, drawings, ``info``.

Most tests run ``main`` in-process with the fake model of ``tests/test_cli.py``; the kill -9 and
SIGTERM tests run ``npfrcnn detect`` in a subprocess on the shipped demo model.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from PIL import Image, ImageFont

from npfrcnn import _io, cli
from npfrcnn.cli import expand_inputs, main
from npfrcnn.draw import drawing_names, style_for
from tests import test_cli as _base
from tests.test_cli import FakeModel, _image, _jsonl

fake = _base.fake  # the fixtures of tests/test_cli.py
images = _base.images

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "weights" / "demo.h5"


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: npfrcnn") and "Traceback" not in err
    return err


# --- one error handler in main ---------------------------------------------------------------


@pytest.mark.parametrize(
    "exc, code, words",
    [
        (OSError(errno.ENOSPC, "No space left on device", "/data/r.json"), 74,
         ["/data/r.json: no space left on the device", "[ENOSPC]"]),
        (PermissionError(errno.EACCES, "Permission denied", "/data/x"), 74,
         ["/data/x: permission denied", "[EACCES]"]),
        (IsADirectoryError(errno.EISDIR, "Is a directory", "out"), 74, ["out: is a folder"]),
        (OSError(errno.EROFS, "Read-only file system", "/ro/x"), 74, ["read-only", "[EROFS]"]),
        (OSError(errno.ESTALE, "Stale file handle", "/nfs/x"), 74,
         ["/nfs/x: Stale file handle"]),  # an errno without a table entry: still a message
        (KeyboardInterrupt(), 130, ["interrupted"]),
        (MemoryError(), 71, ["out of memory", "--max-pixels"]),
    ],
)
def test_main_maps_user_errors(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    exc: BaseException, code: int, words: list[str],
) -> None:
    def boom(*a: Any, **k: Any) -> Any:
        raise exc

    monkeypatch.setattr("npfrcnn.weights.hdf5.inspect", boom)
    assert main(["info", "x.h5"]) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for w in words:
        assert w in err


def test_main_our_value_error_subclasses_are_messages(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from npfrcnn.data import DataError

    def boom(*a: Any, **k: Any) -> Any:
        raise DataError("annotations.json: image 3 has no file_name; add it")

    monkeypatch.setattr("npfrcnn.weights.hdf5.inspect", boom)
    assert main(["info", "x.h5"]) == 2
    err = capsys.readouterr().err
    assert err == "npfrcnn: error: annotations.json: image 3 has no file_name; add it\n"


def test_main_bug_shows_traceback_and_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(*a: Any, **k: Any) -> Any:
        return [][1]  # IndexError: a bug, not something the user did

    monkeypatch.setattr("npfrcnn.weights.hdf5.inspect", boom)
    assert main(["info", "x.h5"]) == 70
    err = capsys.readouterr().err
    assert "Traceback" in err and "IndexError" in err and "this is a bug in npfrcnn" in err


def test_exit_codes_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["detect", "--help"], ["info", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        out = capsys.readouterr().out
        assert "exit status:" in out
        for code in (0, 1, 2, 70, 74, 130, 141, 143):
            assert re.search(rf"^  {code} ", out, re.M), (argv, code)


def test_damaged_numba_cache_is_a_clear_error(
    fake: FakeModel, images: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # What a truncated .nbi file gives: an UnpicklingError raised inside numba's caching.py.
    raiser = compile(
        "import pickle\nraise pickle.UnpicklingError('pickle data was truncated')\n",
        "/site-packages/numba/core/caching.py", "exec",
    )

    def detect(image: np.ndarray, **kw: Any) -> Any:
        exec(raiser, {})

    monkeypatch.setattr(fake, "detect", detect)
    assert main(["detect", str(images), "--weights", "m.h5"]) == 2
    err = capsys.readouterr().err
    assert "Numba's on-disk cache of compiled kernels is damaged" in err
    assert "NUMBA_CACHE_DIR" in err and "Traceback" not in err
    assert err.count("error") == 1  # stops at the first image, not one error per image


def test_output_write_error_mid_run(
    fake: FakeModel, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    real = _io.LineLog.write
    calls = []

    def write(self: _io.LineLog, line: str) -> None:
        calls.append(line)
        if len(calls) == 3:  # image 1's line, its hash line, then image 2's line fails
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        real(self, line)

    monkeypatch.setattr(_io.LineLog, "write", write)
    out, coco = tmp_path / "r.jsonl", tmp_path / "r.json"
    assert main(["detect", str(images), "--weights", "m.h5", "-o", str(out),
                 "--coco", str(coco)]) == 74
    err = capsys.readouterr().err
    assert f"{out}: no space left on the device" in err and "Traceback" not in err
    assert len(_jsonl(out.read_text())) == 1  # the image before the failure is kept
    assert len(json.loads(coco.read_text())) == 2  # and its COCO results written


def test_drawing_write_error_is_per_image(
    fake: FakeModel, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def save(pic: Any, target: Any, fmt: str) -> None:
        raise OSError(errno.EDQUOT, "Disk quota exceeded", str(target))

    monkeypatch.setattr(cli, "save_drawing", save)
    code = main(["detect", str(images / "a.png"), "--weights", "m.h5", "--draw",
                 str(tmp_path / "d")])
    captured = capsys.readouterr()
    assert code == 1 and len(_jsonl(captured.out)) == 1
    assert f"could not write the drawing: {tmp_path / 'd' / 'a.png'}: disk quota" in captured.err


# --- validated before any work; nothing created ----------------------------------------------


def test_unwritable_destinations_refused_up_front(
    fake: FakeModel, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    # The tests run as root, who may write anywhere: stand in for a folder without permission.
    monkeypatch.setattr(os, "access", lambda p, m: False if Path(p) == locked else real(p, m))
    for opt, value in (("-o", locked / "r.jsonl"), ("--coco", locked / "r.json"),
                       ("--draw", locked), ("--draw", locked / "new" / "sub")):
        err = _usage_error(["detect", str(images), "--weights", "m.h5", opt, str(value)], capsys)
        assert "permission" in err, err
    assert fake.calls == [] and os.listdir(locked) == []


def test_nothing_created_when_a_later_check_fails(
    fake: FakeModel, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    draw = tmp_path / "drawn" / "sub"
    err = _usage_error(["detect", str(images), "--weights", "m.h5", "--draw", str(draw),
                        "-o", str(images / "a.png")], capsys)
    assert "would destroy that input" in err
    assert not (tmp_path / "drawn").exists() and fake.calls == []


def test_resume_needs_output(
    fake: FakeModel, images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _usage_error(["detect", str(images), "--weights", "m.h5", "--resume"], capsys)
    assert "--resume needs --output" in err


def test_random_model_and_convert_validate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _usage_error(["random-model", str(tmp_path / "no" / "m.h5")], capsys)
    assert "does not exist" in err
    err = _usage_error(["random-model", str(tmp_path / "m.h5"), "--num-classes", "0"], capsys)
    assert "argument --num-classes: must be a positive integer" in err
    err = _usage_error(["random-model", str(tmp_path / "m.h5"), "--width", "-4"], capsys)
    assert "argument --width" in err
    ckpt = tmp_path / "model.pth"
    ckpt.write_bytes(b"not really")
    err = _usage_error(["convert", str(ckpt), str(ckpt), "--profile", "torchvision-r50-fpn"],
                       capsys)
    assert "would destroy the input" in err and ckpt.read_bytes() == b"not really"
    assert os.listdir(tmp_path) == ["model.pth"]


# --- never overwrite an input ----------------------------------------------------------------


def test_outputs_that_are_inputs_are_refused(
    fake: FakeModel, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = images / "a.png"
    before = a.read_bytes()
    link = tmp_path / "link.png"
    link.symlink_to(a)
    hard = tmp_path / "hard.jsonl"
    os.link(a, hard)
    weights = tmp_path / "w.h5"
    weights.write_bytes(b"weights")
    for opt, dest in (("-o", a), ("-o", link), ("-o", hard), ("--coco", a),
                      ("--coco", weights)):
        err = _usage_error(["detect", str(a), "--weights", str(weights), opt, str(dest)],
                           capsys)
        assert "would destroy that input" in err, (opt, dest)
    assert a.read_bytes() == before and weights.read_bytes() == b"weights"
    assert fake.calls == []


def test_draw_into_the_inputs_folder(
    fake: FakeModel, images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {p.name: p.read_bytes() for p in images.iterdir()}
    err = _usage_error(["detect", str(images), "--weights", "m.h5", "--draw", str(images)],
                       capsys)
    assert f"the drawing of {images / 'a.png'} would be written to {images / 'a.png'}" in err
    assert {p.name: p.read_bytes() for p in images.iterdir()} == before
    # In another format no drawing lands on an input: allowed.
    assert main(["detect", str(images / "a.png"), "--weights", "m.h5", "--draw", str(images),
                 "--draw-format", "webp"]) == 0
    assert (images / "a.webp").is_file()
    assert {p.name: p.read_bytes() for p in images.iterdir() if p.suffix != ".webp"} == before


# --- every file once -------------------------------------------------------------------------


def test_glob_symlink_loop_and_links_visited_once(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    x = _image(tmp_path / "a" / "x.png", 4, 4)
    _image(tmp_path / "a" / "b" / "y.png", 4, 4)
    (tmp_path / "a" / "b" / "loop").symlink_to(tmp_path / "a")  # a/b/loop -> a
    (tmp_path / "a" / "again").symlink_to(tmp_path / "a" / "b")  # a second way into a/b
    os.link(x, tmp_path / "a" / "x-hard.png")
    (tmp_path / "a" / "x-sym.png").symlink_to(x)
    paths, problems = expand_inputs([
        str(tmp_path / "**" / "*.png"), str(x), f"{tmp_path}/./a/x.png", str(tmp_path / "a"),
    ])
    assert problems == []
    # One name per file, the first met: at each level names sort ("x-hard.png" < "x.png",
    # "again" < "b"), files of a folder before its subfolders.
    assert paths == [str(tmp_path / "a" / "x-hard.png"), str(tmp_path / "a" / "again" / "y.png")]


def test_glob_matches_like_glob_module(tmp_path: Path) -> None:
    import glob

    (tmp_path / "p" / "q").mkdir(parents=True)
    (tmp_path / ".hid").mkdir()
    for rel in ("p/a.png", "p/q/b.PNG", "p/q/c.jpg", "p/.d.png", ".hid/e.png", "f.png"):
        _image(tmp_path / rel, 4, 4)
    for pat in ("**/*.png", "**/*.[pP][nN][gG]", "p/*", "p/?/*.jpg", "**", "p/**/*.jpg"):
        full = str(tmp_path / pat)
        want = sorted(m.rstrip(os.sep) for m in glob.glob(full, recursive=True))
        assert sorted(cli._glob(full)) == want, pat


# --- streaming, kill -9, SIGTERM, --resume ---------------------------------------------------

_DRIVER = textwrap.dedent("""
    import sys, time
    import npfrcnn.cli as c
    real = c._load_model
    def slow(weights, backend):
        m = real(weights, backend)
        detect = m.detect
        def d(image, **kw):
            time.sleep(float(sys.argv[1]))
            return detect(image, **kw)
        m.detect = d
        return m
    c._load_model = slow
    sys.exit(c.main(sys.argv[2:]))
""")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six small synthetic images (the demo model's shapes)."""
    from npfrcnn.data import synthetic_sample

    d = tmp_path_factory.mktemp("shapes")
    for i in range(6):
        image, _, _ = synthetic_sample(7, i)
        Image.fromarray(image).save(d / f"s{i}.png")
    return d


def _start(args: list[str], delay: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _DRIVER, str(delay), *args], cwd=ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def _wait_lines(path: Path, n: int, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and path.read_bytes().count(b"\n") >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"exited early: {proc.communicate()}")
        time.sleep(0.02)
    raise AssertionError("timed out")


@pytest.mark.skipif(not DEMO.is_file(), reason="needs the shipped demo model")
def test_kill_9_then_resume(shapes: Path, tmp_path: Path) -> None:
    out, coco, draw = tmp_path / "r.jsonl", tmp_path / "r.json", tmp_path / "drawn"
    args = ["detect", str(shapes), "--weights", str(DEMO), "-o", str(out), "--coco", str(coco),
            "--draw", str(draw)]
    proc = _start(args, delay=0.4)
    _wait_lines(out, 2, proc)
    proc.kill()  # SIGKILL: no clean-up at all
    proc.communicate()
    lines = out.read_text().splitlines()
    assert 2 <= len(lines) < 6
    done = [json.loads(line)["path"] for line in lines]  # every line is a complete record
    assert done == [str(shapes / f"s{i}.png") for i in range(len(lines))]
    assert sorted(p.name for p in draw.iterdir()) == [f"s{i}.png" for i in range(len(lines))]
    # A torn line, as a kill in the middle of a write would leave (the writer never does).
    with open(out, "a") as f:
        f.write('{"path": "' + str(shapes / "s5.png") + '", "image_id": 5, "wid')
    proc = _start([*args, "--resume"], delay=0.0)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "dropped the incomplete last line" in err
    assert f"{len(lines)} of 6 image(s) already in" in err
    recs = _jsonl(out.read_text())
    assert [r["path"] for r in recs] == [str(shapes / f"s{i}.png") for i in range(6)]
    assert {r["image_id"] for r in json.loads(coco.read_text())} <= set(range(6))
    n_coco = sum(len(r["detections"]) for r in recs)
    assert len(json.loads(coco.read_text())) == n_coco  # COCO covers every image
    assert len(list(draw.iterdir())) == 6
    assert not [n for n in os.listdir(tmp_path) if _io.TEMP_MARK in n]


@pytest.mark.skipif(not DEMO.is_file(), reason="needs the shipped demo model")
def test_sigterm_is_a_clean_interrupt(shapes: Path, tmp_path: Path) -> None:
    out, coco = tmp_path / "r.jsonl", tmp_path / "r.json"
    proc = _start(["detect", str(shapes), "--weights", str(DEMO), "-o", str(out), "--coco",
                   str(coco)], delay=0.4)
    _wait_lines(out, 1, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "terminated by SIGTERM" in err
    recs = _jsonl(out.read_text())
    assert 1 <= len(recs) < 6 and out.read_text().endswith("\n")
    # The COCO file was written for the images done.
    assert {r["image_id"] for r in json.loads(coco.read_text())} <= {r["image_id"] for r in recs}
    assert len(json.loads(coco.read_text())) == sum(len(r["detections"]) for r in recs)


def test_resume_in_process(
    fake: FakeModel, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, coco = tmp_path / "r.jsonl", tmp_path / "r.json"
    argv = ["detect", str(images), "--weights", "m.h5", "-o", str(out), "--coco", str(coco)]
    fake.interrupt_at = 2
    assert main(argv) == 130
    assert len(_jsonl(out.read_text())) == 2
    fake.interrupt_at = None
    fake.calls.clear()
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    assert len(fake.calls) == 1  # only c.PNG was left
    recs = _jsonl(out.read_text())
    assert [Path(r["path"]).name for r in recs] == ["a.png", "b.jpg", "c.PNG"]
    assert [r["image_id"] for r in json.loads(coco.read_text())] == [0, 0, 1, 1, 2, 2]
    # A resumed run with nothing left to do changes nothing.
    fake.calls.clear()
    assert main([*argv, "--resume"]) == 0 and fake.calls == []
    assert _jsonl(out.read_text()) == recs


def test_resume_detects_changed_files_again(
    fake: FakeModel, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--resume`` skips an image only if it is the same file with the same content: FILE.sha256
    records each finished image's hash; a file changed since is detected again (its earlier
    line stays), an unchanged one is not."""
    out = tmp_path / "r.jsonl"
    argv = ["detect", str(images), "--weights", "m.h5", "-o", str(out)]
    assert main(argv) == 0
    hashes = [json.loads(x) for x in (tmp_path / "r.jsonl.sha256").read_text().splitlines()]
    assert [Path(h["path"]).name for h in hashes] == ["a.png", "b.jpg", "c.PNG"]
    import hashlib

    assert hashes[0]["sha256"] == hashlib.sha256((images / "a.png").read_bytes()).hexdigest()
    Image.fromarray(np.full((40, 50, 3), 77, np.uint8)).save(images / "b.jpg")  # new content
    fake.calls.clear()
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    assert len(fake.calls) == 1  # b.jpg only
    err = capsys.readouterr().err
    assert "1 image(s) changed since they were detected" in err
    recs = _jsonl(out.read_text())
    assert [Path(r["path"]).name for r in recs] == ["a.png", "b.jpg", "c.PNG", "b.jpg"]
    assert recs[3]["width"] == 50
    fake.calls.clear()
    assert main([*argv, "--resume"]) == 0 and fake.calls == []  # now all current


def test_output_to_a_pipe_streams_without_fsync_or_run_file(
    fake: FakeModel, images: Path, tmp_path: Path
) -> None:
    """``-o /dev/stdout`` (a pipe, a terminal): lines are written, no fsync (EINVAL there), no
    ``.run.json`` beside a device; ``--resume`` on such a target is a usage error."""
    import threading

    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    assert main(["detect", str(images), "--weights", "m.h5", "-o", str(fifo), "-q"]) == 0
    reader.join(timeout=30)
    recs = _jsonl(got[0].decode())
    assert [Path(r["path"]).name for r in recs] == ["a.png", "b.jpg", "c.PNG"]
    assert not (tmp_path / "pipe.jsonl.run.json").exists()
    with pytest.raises(SystemExit):
        main(["detect", str(images), "--weights", "m.h5", "-o", str(fifo), "--resume"])


@pytest.mark.parametrize(
    "change, words",
    [
        (["--min-prob", "0.5"], "--min-prob: the model's default then, 0.5 now"),
        (["--max-detections", "3"], "--max-detections: the model's default then, 3 now"),
        (["--backend", "numpy"], "--backend: cpu then, numpy now"),
        ("weights", "weights: tensors sha256 aaa then, tensors sha256 bbb now"),
    ],
)
def test_resume_refuses_other_settings(
    fake: FakeModel, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    change: Any, words: str,
) -> None:
    out = tmp_path / "r.jsonl"
    argv = ["detect", str(images), "--weights", "m.h5", "-o", str(out)]
    fake.provenance = {"tensors_sha256": "aaa"}
    fake.interrupt_at = 1
    assert main(argv) == 130
    before = out.read_bytes()
    fake.interrupt_at = None
    if change == "weights":
        fake.provenance = {"tensors_sha256": "bbb"}
        change = []
    capsys.readouterr()
    assert main([*argv, *change, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "was written with other weights or settings" in err and words in err, err
    assert out.read_bytes() == before


def test_resume_refuses_damaged_or_unknown_files(
    fake: FakeModel, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.jsonl"
    argv = ["detect", str(images), "--weights", "m.h5", "-o", str(out), "--resume"]
    assert main(argv) == 0
    text = out.read_text().splitlines()
    out.write_text(text[0] + "\n" + "garbage\n" + text[1] + "\n")
    assert main(argv) == 2
    assert "line 2 of" in capsys.readouterr().err
    out.write_text(text[0] + "\n")
    cli.run_file(out).unlink()
    assert main(argv) == 2
    assert "cannot be continued safely" in capsys.readouterr().err


def test_line_log_and_read_lines(tmp_path: Path) -> None:
    p = tmp_path / "x.jsonl"
    with _io.LineLog(p, truncate=True) as log:
        log.write('{"a": 1}')
        log.write('{"b": 2}\n')
    assert p.read_text() == '{"a": 1}\n{"b": 2}\n'
    with open(p, "ab") as f:
        f.write(b'{"c": ')
    lines, good, torn = _io.read_lines(p)
    assert lines == ['{"a": 1}', '{"b": 2}'] and good == 18 and torn
    with _io.LineLog(p, truncate=True):
        pass
    assert p.read_text() == "" and _io.read_lines(p) == ([], 0, False)


# --- the atomic writer -----------------------------------------------------------------------


def test_atomic_writers_fsync_and_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    dest = tmp_path / "m.h5"
    with _io.atomic_path(dest) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".h5" and _io.TEMP_MARK in tmp.name
        with h5py.File(tmp, "w") as f:  # h5py opens by name
            f["x"] = np.arange(3)
    with h5py.File(dest, "r") as f:
        assert list(f["x"][()]) == [0, 1, 2]
    assert synced[0].startswith(str(tmp_path / ".m.h5.npfrcnn-tmp-"))  # the data, then
    assert synced[1] == str(tmp_path)  # the folder after the rename
    mask = os.umask(0)
    os.umask(mask)
    assert (dest.stat().st_mode & 0o777) == 0o666 & ~mask
    with pytest.raises(RuntimeError), _io.atomic_path(tmp_path / "n.npz") as tmp:
        np.savez(tmp, a=np.zeros(2))
        raise RuntimeError("killed")
    assert sorted(os.listdir(tmp_path)) == ["m.h5"]
    synced.clear()
    with _io.atomic_write(tmp_path / "t.json") as f:
        f.write("{}")
    assert synced[1] == str(tmp_path)


def test_stale_temporaries_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    old = time.time() - 3600
    names = {
        "stale": f".r.json.npfrcnn-tmp-{dead.pid}-0123abcd.json",  # writer gone, old: removed
        "alive": f".r.json.npfrcnn-tmp-{os.getpid()}-0123abcd.json",  # writer alive: kept
        "other": f".r.json.{dead.pid}.tmp",  # not our pattern: kept
        "result": "r.json",
    }
    for n in names.values():
        (tmp_path / n).write_text("x")
        os.utime(tmp_path / n, (old, old))
    fresh = f".s.json.npfrcnn-tmp-{dead.pid}-89abcdef.json"  # written after we started: kept
    (tmp_path / fresh).write_text("x")
    monkeypatch.setattr(_io, "_swept", set())
    with _io.atomic_write(tmp_path / "new.json") as f:
        f.write("[]")
    left = set(os.listdir(tmp_path))
    assert names["stale"] not in left
    assert {names["alive"], names["other"], names["result"], fresh, "new.json"} <= left


# --- the interface ---------------------------------------------------------------------------


def test_per_image_lines_and_speed(
    fake: FakeModel, images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["detect", str(images), "--weights", "m.h5"]) == 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("image ")]
    assert len(lines) == 3
    assert re.fullmatch(rf"image 1/3 {re.escape(str(images / 'a.png'))} 40x20: 1 cat, "
                        r"1 person, \d+ ms", lines[0]), lines[0]
    assert lines[2].startswith(f"image 3/3 {images / 'c.PNG'} 8x8: 1 cat, 1 person, ")
    [speed] = [ln for ln in err.splitlines() if ln.startswith("Speed: ")]
    stages = re.findall(r"[\d.]+ ms (\w+)", speed)
    assert stages == ["load", *cli.STAGES]
    assert "per image at mixed sizes" in speed
    assert "first image" not in err.split("Speed:")[0]  # no table without --timings
    assert "stage            first image" not in err


def test_per_image_line_no_detections(
    fake: FakeModel, images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.empty = True
    assert main(["detect", str(images / "c.PNG"), "--weights", "m.h5"]) == 0
    err = capsys.readouterr().err
    assert "8x8: no detections" in err and "per image at 8x8" in err


@pytest.mark.parametrize("columns", [20, 40, 80])
def test_progress_fits_the_terminal(monkeypatch: pytest.MonkeyPatch, columns: int) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("COLUMNS", str(columns))
    stream = Tty()
    log = cli._Log(stream)
    bar = cli._Progress(log, total=12345)
    for done in (1, 99, 12345):
        bar.update(done, "photos/holiday/a-very-long-folder-name/IMG_20240101_123456.jpg")
    bar.close()
    shown = [s for s in stream.getvalue().split("\r\x1b[K") if s]
    assert len(shown) == 3
    assert all(len(s) <= columns - 1 for s in shown), shown
    if columns >= 80:
        assert "12345/12345" in shown[-1] and shown[-1].endswith("...20240101_123456.jpg")


# --- --coco-gt -------------------------------------------------------------------------------


def _gt(tmp_path: Path, ims: list[dict[str, Any]], cats: list[dict[str, Any]]) -> Path:
    p = tmp_path / "instances.json"
    p.write_text(json.dumps({"images": ims, "annotations": [], "categories": cats}))
    return p


def test_coco_gt_ids_load_in_pycocotools(
    fake: FakeModel, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    coco_mod = pytest.importorskip("pycocotools.coco")
    gt = _gt(
        tmp_path,
        [{"id": 501, "file_name": "val/a.png", "width": 40, "height": 20},
         {"id": 502, "file_name": "val/b.jpg", "width": 30, "height": 60}],
        [{"id": 1, "name": "person"}, {"id": 17, "name": "cat"}, {"id": 18, "name": "dog"}],
    )
    out, res = tmp_path / "r.jsonl", tmp_path / "results.json"
    assert main(["detect", str(images / "a.png"), str(images / "b.jpg"), "--weights", "m.h5",
                 "--coco-gt", str(gt), "--coco", str(res), "-o", str(out)]) == 0
    results = json.loads(res.read_text())
    assert [(r["image_id"], r["category_id"]) for r in results] == [
        (501, 1), (501, 17), (502, 1), (502, 17)
    ]
    assert [r["image_id"] for r in _jsonl(out.read_text())] == [501, 502]
    g = coco_mod.COCO(str(gt))
    dt = g.loadRes(str(res))
    assert sorted(dt.getImgIds()) == [501, 502] and len(dt.getAnnIds()) == 4


def test_coco_gt_refusals(
    fake: FakeModel, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cats = [{"id": 1, "name": "person"}, {"id": 17, "name": "cat"}, {"id": 18, "name": "dog"}]
    gt = _gt(tmp_path, [{"id": 1, "file_name": "a.png"}], cats)
    argv = ["detect", str(images / "a.png"), str(images / "b.jpg"), "--weights", "m.h5",
            "--coco-gt", str(gt), "--coco", str(tmp_path / "r.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"1 input image(s) are not images of --coco-gt {gt}" in err and "b.jpg" in err
    assert fake.calls == [] and "weights" not in fake.seen  # type: ignore[attr-defined]
    gt = _gt(tmp_path, [{"id": 1, "file_name": "a.png"}], cats[:2])
    assert main(["detect", str(images / "a.png"), "--weights", "m.h5", "--coco-gt", str(gt),
                 "--coco", str(tmp_path / "r.json")]) == 2
    assert "class(es) 'dog' have no category" in capsys.readouterr().err
    assert fake.calls == [] and not (tmp_path / "r.json").exists()
    (tmp_path / "bad.json").write_text("{\"images\": [")
    assert main(["detect", str(images / "a.png"), "--weights", "m.h5", "--coco-gt",
                 str(tmp_path / "bad.json")]) == 2
    assert "not valid JSON (line 1" in capsys.readouterr().err
    (tmp_path / "res.json").write_text("[]")  # a results file, not annotations
    assert main(["detect", str(images / "a.png"), "--weights", "m.h5", "--coco-gt",
                 str(tmp_path / "res.json")]) == 2
    assert "is it a COCO annotations file" in capsys.readouterr().err


def test_coco_gt_placeholder_classes_left_out(
    fake: FakeModel, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.classes = ["N/A", "dog", "person"]  # torchvision's list has N/A gaps
    gt = _gt(tmp_path, [{"id": 9, "file_name": "a.png"}],
             [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}])
    res = tmp_path / "r.json"
    assert main(["detect", str(images / "a.png"), "--weights", "m.h5", "--coco-gt", str(gt),
                 "--coco", str(res)]) == 0
    assert [r["category_id"] for r in json.loads(res.read_text())] == [1]
    assert "left out 1 detection(s) of placeholder classes (N/A)" in capsys.readouterr().err


# --- drawings --------------------------------------------------------------------------------


def _edge_width(px: np.ndarray, row: int, colour: tuple[int, int, int]) -> int:
    return int(np.all(px[row] == colour, axis=1).sum())


@pytest.mark.parametrize("w, h, line", [(300, 300, 1), (1000, 1000, 3), (3840, 2160, 9)])
def test_drawing_scales_with_the_image(w: int, h: int, line: int) -> None:
    # Line width max(1, round(0.003 * (W + H) / 2)): hand-worked 1, 3 and 9 pixels.
    assert style_for(w, h).line == line
    image = np.zeros((h, w, 3), np.uint8)
    box = np.array([[w * 0.25, h * 0.4, w * 0.75, h * 0.9]], np.float32)
    pic = cli.draw_detections(image, box, np.array([1]), np.array([0.5]), ["cat", "dog"])
    px = np.asarray(pic)
    colour = cli._PALETTE[1]
    # A row through the middle of the box crosses its left and right edges only.
    assert _edge_width(px, int(h * 0.65), colour) == 2 * line
    # The label tab, filled in the class colour, sits above the box; its height follows the
    # font size max(11, round(0.02 * (W + H) / 2)).
    col = px[:, int(w * 0.25) + 1]  # inside the tab's padding, left of the text
    tab = int(np.all(col[: int(h * 0.4)] == colour, axis=1).sum())
    font = style_for(w, h).font_size
    assert 0.8 * font <= tab <= 2.5 * font


def test_drawing_font_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    real = ImageFont.load_default

    def old_pillow(size: Any = None) -> Any:
        if size is not None:
            raise TypeError("load_default() got an unexpected keyword argument 'size'")
        return real()

    monkeypatch.setattr(ImageFont, "load_default", old_pillow)
    pic = cli.draw_detections(np.zeros((50, 80, 3), np.uint8), np.array([[5, 20, 40, 45]]),
                              np.array([0]), np.array([0.9]), ["cat"])
    assert pic.size == (80, 50)


def test_drawing_formats(
    fake: FakeModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in"
    src.mkdir()
    _image(src / "p.jpg", 40, 30)
    _image(src / "q.gif", 40, 30)
    _image(src / "r.ppm", 40, 30)
    out = tmp_path / "d"
    assert main(["detect", str(src), "--weights", "m.h5", "--draw", str(out)]) == 0
    formats = {}
    for n in sorted(os.listdir(out)):
        with Image.open(out / n) as im:
            formats[n] = im.format
    assert formats == {"p.jpg": "JPEG", "q.png": "PNG", "r.ppm": "PPM"}
    assert main(["detect", str(src), "--weights", "m.h5", "--draw", str(tmp_path / "e"),
                 "--draw-format", "png"]) == 0
    assert sorted(os.listdir(tmp_path / "e")) == ["p.png", "q.png", "r.png"]
    assert drawing_names(["x/a.PNG", "y/a.png", "z/a.jpg"]) == [
        ("a.PNG", "PNG"), ("a-2.png", "PNG"), ("a.jpg", "JPEG")
    ]


# --- info ------------------------------------------------------------------------------------


@pytest.mark.skipif(not DEMO.is_file(), reason="needs the shipped demo model")
def test_info_prints_plain_values(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(DEMO)]) == 0
    out = capsys.readouterr().out
    for python_repr in ("{'", "': ", "None", "[0.5", "True", "False", "1e-05"):
        assert python_repr not in out, python_repr
    assert "\n  train_config:\n    anchor_border: 64\n" in out
    assert "\n    flip: yes\n" in out
    assert "\n  anchor_scales: 0.5, 1, 2\n" in out
    assert "\n  bn_epsilon: 0.00001\n" in out
    assert "ResNet-14 (units per block 1, 1, 1, 1), 3 classes" in out


def test_plain_values() -> None:
    assert cli.plain(None) == "none" and cli.plain(True) == "yes"
    assert cli.plain(32.0) == "32" and cli.plain(1e-5) == "0.00001"
    assert cli.plain([(32,), (64, 128)]) == "(32), (64, 128)"
    assert cli.plain([]) == "(empty)" and cli.plain(np.float32(0.5)) == "0.5"
