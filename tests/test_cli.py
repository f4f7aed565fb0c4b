"""The ``npfrcnn`` command, run in-process through ``npfrcnn.cli.main``.

Most tests use a fake model (``FakeModel``) whose detections are a known function of the image
size, so the JSON Lines, COCO and drawing outputs can be checked exactly against hand-worked
values. Tests at the end run the real ``FasterRCNN`` on a tiny random-weight network.
"""

from __future__ import annotations

import io
import json
import os
import stat
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from PIL import Image

from npfrcnn import cli
from npfrcnn._io import atomic_write
from npfrcnn.cli import coco_image_ids, expand_inputs, main

# --- a fake model ----------------------------------------------------------------------------


@dataclass
class FakeDetections:
    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    class_names: list[str]


@dataclass
class FakeModel:
    """Two detections per image, from its size ``W x H``:

    * ``person`` (class 2), score 0.875, box ``(0, 0, W/2, H/2)``;
    * ``cat`` (class 0), score 0.25, box ``(W/4, H/4, W, H)``.

    ``min_prob`` drops lower scores, ``max_detections`` keeps the first ones, as the real model
    does. ``interrupt_at`` raises ``KeyboardInterrupt`` on that call (0-based).
    """

    classes: list[str] = field(default_factory=lambda: ["cat", "dog", "person"])
    calls: list[dict[str, Any]] = field(default_factory=list)
    interrupt_at: int | None = None
    empty: bool = False
    provenance: dict[str, Any] = field(default_factory=dict)

    def detect(
        self,
        image: np.ndarray,
        *,
        min_prob: float | None = None,
        max_detections: int | None = None,
        timings: dict[str, float] | None = None,
    ) -> FakeDetections:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        if self.interrupt_at is not None and len(self.calls) == self.interrupt_at:
            raise KeyboardInterrupt
        self.calls.append({"shape": image.shape, "min_prob": min_prob, "max": max_detections})
        h, w = image.shape[:2]
        boxes = np.array([[0, 0, w / 2, h / 2], [w / 4, h / 4, w, h]], dtype=np.float32)
        labels = np.array([2, 0], dtype=np.int64)
        scores = np.array([0.875, 0.25], dtype=np.float32)
        keep = np.ones(2, bool) if min_prob is None else scores >= min_prob
        if self.empty:
            keep[:] = False
        boxes, labels, scores = boxes[keep], labels[keep], scores[keep]
        if max_detections is not None:
            boxes, labels, scores = (
                boxes[:max_detections], labels[:max_detections], scores[:max_detections]
            )
        if timings is not None:
            for k in cli.STAGES:
                timings[k] = 0.001
        return FakeDetections(boxes, labels, scores, [self.classes[i] for i in labels])


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeModel:
    model = FakeModel()
    seen: dict[str, Any] = {}

    def load_model(weights: str, backend: str) -> FakeModel:
        seen["weights"], seen["backend"] = weights, backend
        return model

    monkeypatch.setattr(cli, "_load_model", load_model)
    model.seen = seen  # type: ignore[attr-defined]
    return model


def _image(path: Path, w: int, h: int, colour: tuple[int, int, int] = (90, 90, 90)) -> Path:
    Image.new("RGB", (w, h), colour).save(path)
    return path


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """A folder with a.png (40x20), b.jpg (30x60), c.PNG (8x8), notes.txt and .hidden.png."""
    d = tmp_path / "imgs"
    d.mkdir()
    _image(d / "a.png", 40, 20)
    _image(d / "b.jpg", 30, 60)
    _image(d / "c.PNG", 8, 8)
    (d / "notes.txt").write_text("not an image")
    _image(d / ".hidden.png", 4, 4)
    return d


def _jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _expected_record(path: str, image_id: int, w: int, h: int) -> dict[str, Any]:
    return {
        "path": path,
        "image_id": image_id,
        "width": w,
        "height": h,
        "detections": [
            {"box": [0.0, 0.0, w / 2, h / 2], "label": "person", "class_id": 2, "score": 0.875},
            {"box": [w / 4, h / 4, float(w), float(h)], "label": "cat", "class_id": 0,
             "score": 0.25},
        ],
    }


# --- usage errors ----------------------------------------------------------------------------


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "detect" in capsys.readouterr().err


def test_detect_without_weights_explains(
    images: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # As in an installation without the shipped demo model.
    monkeypatch.setattr("npfrcnn.cli_train.default_weights", lambda: None)
    assert main(["detect", str(images)]) == 2
    err = capsys.readouterr().err
    assert "--weights is required" in err
    assert "npfrcnn random-model" in err and "npfrcnn convert" in err
    assert "meaningless" in err


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``main(argv)``, expect argparse's usage error (exit 2), return stderr."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: npfrcnn")
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(
    "opts, msg",
    [
        (["--min-prob", "1.5"], "argument --min-prob: must be in [0, 1], got 1.5"),
        (["--min-prob", "5"], "argument --min-prob: must be in [0, 1], got 5"),
        (["--min-prob", "-0.1"], "argument --min-prob: must be in [0, 1]"),
        (["--min-prob", "nan"], "argument --min-prob: expected a finite number"),
        (["--min-prob", "half"], "argument --min-prob: expected a number, got 'half'"),
        (["--max-detections", "0"], "argument --max-detections: must be a positive integer"),
        (["--max-detections", "2.5"], "argument --max-detections: expected a positive integer"),
        (["--max-pixels", "0"], "argument --max-pixels: must be a positive integer"),
    ],
)
def test_detect_bad_option_values(
    fake: FakeModel, images: Path, capsys: pytest.CaptureFixture[str], opts: list[str], msg: str
) -> None:
    assert msg in _usage_error(["detect", str(images), "--weights", "w.h5", *opts], capsys)
    assert fake.calls == [] and "weights" not in fake.seen  # type: ignore[attr-defined]


def test_detect_output_folder_missing(
    fake: FakeModel, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for opt in ("--output", "--coco"):
        out = tmp_path / "nope" / "out.json"
        err = _usage_error(["detect", str(images), "--weights", "w.h5", opt, str(out)], capsys)
        assert f"argument {opt}" in err and f"folder {tmp_path / 'nope'} does not exist" in err
    assert fake.calls == [] and os.listdir(tmp_path) == ["imgs"]


def test_detect_no_inputs_found(
    fake: FakeModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["detect", str(tmp_path / "*.jpg"), "--weights", "w.h5"]) == 2
    err = capsys.readouterr().err
    assert "no files match this pattern" in err and "no input images" in err


def test_detect_bad_weights_reported(
    images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def broken(weights: str, backend: str) -> None:
        raise ValueError(f"{weights}: 2 problem(s) with the weights")

    monkeypatch.setattr(cli, "_load_model", broken)
    out = tmp_path / "out.jsonl"
    out.write_text("previous good results\n")
    assert main(["detect", str(images), "--weights", "bad.h5", "-o", str(out)]) == 2
    assert "cannot load weights bad.h5" in capsys.readouterr().err
    assert out.read_text() == "previous good results\n"


# --- inputs ----------------------------------------------------------------------------------


def test_expand_folder_sorted_images_only(images: Path) -> None:
    paths, problems = expand_inputs([str(images)])
    assert paths == [str(images / "a.png"), str(images / "b.jpg"), str(images / "c.PNG")]
    assert problems == []


def test_expand_files_globs_duplicates_and_missing(images: Path, tmp_path: Path) -> None:
    args = [
        str(images / "b.jpg"),  # a file
        str(images / "*.png"),  # a glob: a.png only (case-sensitive, no hidden files)
        str(images / "b.jpg"),  # a duplicate: dropped
        str(images / "notes.txt"),  # an explicit file is taken whatever its extension
        str(tmp_path / "missing.jpg"),
        str(tmp_path / "none*.jpg"),
    ]
    paths, problems = expand_inputs(args)
    assert paths == [str(images / "b.jpg"), str(images / "a.png"), str(images / "notes.txt")]
    assert problems == [
        f"{tmp_path / 'missing.jpg'}: no such file or folder",
        f"{tmp_path / 'none*.jpg'}: no files match this pattern",
    ]


def test_expand_recursive_glob(tmp_path: Path) -> None:
    (tmp_path / "x" / "y").mkdir(parents=True)
    _image(tmp_path / "x" / "y" / "deep.png", 4, 4)
    _image(tmp_path / "x" / "top.png", 4, 4)
    paths, problems = expand_inputs([str(tmp_path / "**" / "*.png")])
    assert paths == [str(tmp_path / "x" / "top.png"), str(tmp_path / "x" / "y" / "deep.png")]
    assert problems == []


def test_expand_empty_folder(tmp_path: Path) -> None:
    paths, problems = expand_inputs([str(tmp_path)])
    assert paths == [] and len(problems) == 1 and "folder has no image files" in problems[0]


def test_coco_image_ids() -> None:
    assert coco_image_ids(["a/000000397133.jpg", "b/42.png"]) == [397133, 42]
    assert coco_image_ids(["a/1.jpg", "b/x.jpg", "c/7.jpg"]) == [0, 1, 2]  # one not numeric
    assert coco_image_ids(["a/5.jpg", "b/005.png"]) == [0, 1]  # numeric but colliding
    assert coco_image_ids([]) == []


# --- detect outputs --------------------------------------------------------------------------


def test_detect_jsonl_stdout(
    fake: FakeModel, images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["detect", str(images / "a.png"), str(images / "b.jpg"), "--weights", "m.h5"])
    captured = capsys.readouterr()
    assert code == 0
    assert _jsonl(captured.out) == [
        _expected_record(str(images / "a.png"), 0, 40, 20),
        _expected_record(str(images / "b.jpg"), 1, 30, 60),
    ]
    assert fake.seen == {"weights": "m.h5", "backend": "cpu"}  # type: ignore[attr-defined]
    assert "\r" not in captured.err  # no progress bar when stderr is not a terminal


def test_detect_jsonl_file_and_options_forwarded(
    fake: FakeModel, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.jsonl"
    code = main([
        "detect", str(images / "a.png"), "--weights", "m.h5", "--backend", "numpy",
        "--min-prob", "0.5", "--max-detections", "7", "--output", str(out),
    ])
    assert code == 0
    assert capsys.readouterr().out == ""
    rec = _jsonl(out.read_text())
    want = _expected_record(str(images / "a.png"), 0, 40, 20)
    want["detections"] = want["detections"][:1]  # 0.25 < 0.5 dropped by the model
    assert rec == [want]
    assert fake.calls == [{"shape": (20, 40, 3), "min_prob": 0.5, "max": 7}]
    assert fake.seen["backend"] == "numpy"  # type: ignore[attr-defined]


def test_detect_scores_are_exact_float32(
    fake: FakeModel, images: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A float32 like 0.1f prints as 0.1 (shortest form) and reads back to the same float32.
    def detect(image: np.ndarray, **kw: Any) -> FakeDetections:
        v = np.float32(0.1)
        return FakeDetections(
            np.array([[v, v, 3 * v, 1 / np.float32(3)]], np.float32), np.array([1]),
            np.array([np.float32(2) / np.float32(3)], np.float32), ["dog"],
        )

    monkeypatch.setattr(fake, "detect", detect)
    assert main(["detect", str(images / "c.PNG"), "--weights", "m.h5"]) == 0
    det = _jsonl(capsys.readouterr().out)[0]["detections"][0]
    assert det["box"][0] == 0.1
    assert np.float32(det["box"][2]) == np.float32(3) * np.float32(0.1)
    assert np.float32(det["box"][3]) == np.float32(1) / np.float32(3)
    assert np.float32(det["score"]) == np.float32(2) / np.float32(3)
    assert det["label"] == "dog" and det["class_id"] == 1


def test_detect_bad_image_skipped_exit_1(
    fake: FakeModel, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "broken.jpg"
    data = (images / "b.jpg").read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # truncated
    out = tmp_path / "out.jsonl"
    code = main([
        "detect", str(images / "a.png"), str(bad), str(tmp_path / "gone.png"),
        str(images / "c.PNG"), "--weights", "m.h5", "-o", str(out),
    ])
    err = capsys.readouterr().err
    assert code == 1
    assert [r["path"] for r in _jsonl(out.read_text())] == [
        str(images / "a.png"), str(images / "c.PNG")
    ]
    assert "broken.jpg: the file is truncated or corrupt" in err
    assert "gone.png: no such file or folder" in err
    assert "2 input(s) failed, 2 image(s) processed" in err
    # image_id is the position in the expanded input list, failed inputs included
    assert [r["image_id"] for r in _jsonl(out.read_text())] == [0, 2]


def test_detect_model_error_on_one_image_skipped(
    fake: FakeModel, images: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    real = fake.detect

    def detect(image: np.ndarray, **kw: Any) -> FakeDetections:
        if image.shape[:2] == (8, 8):
            raise ValueError("image is too small for the network (8x8)")
        return real(image, **kw)

    monkeypatch.setattr(fake, "detect", detect)
    assert main(["detect", str(images), "--weights", "m.h5"]) == 1
    captured = capsys.readouterr()
    assert len(_jsonl(captured.out)) == 2
    assert "c.PNG: ValueError: image is too small" in captured.err


def test_detect_max_pixels(
    fake: FakeModel, images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = Image.MAX_IMAGE_PIXELS
    # a.png has 800 pixels, b.jpg 1,800, c.PNG 64: only c.PNG is under 700.
    code = main(["detect", str(images), "--weights", "m.h5", "--max-pixels", "700"])
    captured = capsys.readouterr()
    assert code == 1
    assert [r["path"] for r in _jsonl(captured.out)] == [str(images / "c.PNG")]
    assert "a.png: refused as a possible decompression bomb" in captured.err
    assert Image.MAX_IMAGE_PIXELS == before  # Pillow's process-wide limit is restored


def test_detect_timing_summary(
    fake: FakeModel, images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["detect", str(images), "--weights", "m.h5", "--timings"]) == 0
    err = capsys.readouterr().err
    assert "timing over 3 image(s)" in err
    assert "first image" in err and "median of 2" in err
    for stage in cli.STAGES:
        assert f"\n    {stage} " in err
    for row in ("load image", "detect (all)", "total"):
        assert f"\n  {row} " in err
    assert "first image minus median" in err and "Numba compilation" in err


def test_detect_quiet(fake: FakeModel, images: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["detect", str(images), "--weights", "m.h5", "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert len(_jsonl(captured.out)) == 3


def test_detect_random_weights_warned(
    fake: FakeModel, images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.provenance = {"random": True}
    assert main(["detect", str(images / "a.png"), "--weights", "m.h5"]) == 0
    assert "RANDOM weights: detections are meaningless" in capsys.readouterr().err


def test_progress_bar_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    log = cli._Log(stream)
    bar = cli._Progress(log, total=4)
    bar.update(1, "a.png")
    bar.update(2, "b.png")
    log.error("b.png: bad")  # clears the bar line first
    bar.close()
    text = stream.getvalue()
    assert "\r\x1b[K[######------------------] 1/4" in text
    assert "[############------------] 2/4" in text
    assert "\r\x1b[Knpfrcnn: error: b.png: bad\n" in text


def test_progress_log_lines_when_not_a_terminal() -> None:
    stream = io.StringIO()
    bar = cli._Progress(cli._Log(stream), total=3, every_s=0.0)
    bar.update(1, "a.png")
    bar.update(3, "c.png")  # the last one is left to the final summary
    assert stream.getvalue().count("npfrcnn: 1/3 images") == 1
    assert "\r" not in stream.getvalue()


# --- COCO ------------------------------------------------------------------------------------


def test_detect_coco(
    fake: FakeModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = _image(tmp_path / "000000000139.jpg", 40, 20)
    b = _image(tmp_path / "285.png", 30, 60)
    coco = tmp_path / "results.json"
    assert main(["detect", str(a), str(b), "--weights", "m.h5", "--coco", str(coco)]) == 0
    # bbox = [x1, y1, x2 - x1, y2 - y1]; category_id = class_id + 1; ids are the numeric stems.
    assert json.loads(coco.read_text()) == [
        {"image_id": 139, "category_id": 3, "bbox": [0.0, 0.0, 20.0, 10.0], "score": 0.875},
        {"image_id": 139, "category_id": 1, "bbox": [10.0, 5.0, 30.0, 15.0], "score": 0.25},
        {"image_id": 285, "category_id": 3, "bbox": [0.0, 0.0, 15.0, 30.0], "score": 0.875},
        {"image_id": 285, "category_id": 1, "bbox": [7.5, 15.0, 22.5, 45.0], "score": 0.25},
    ]


def test_detect_coco_empty_list(
    fake: FakeModel, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.empty = True
    coco = tmp_path / "results.json"
    assert main(["detect", str(images), "--weights", "m.h5", "--coco", str(coco)]) == 0
    assert json.loads(coco.read_text()) == []
    assert [r["detections"] for r in _jsonl(capsys.readouterr().out)] == [[], [], []]


def test_coco_results_load_in_pycocotools(
    fake: FakeModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    coco_mod = pytest.importorskip("pycocotools.coco")
    a = _image(tmp_path / "7.png", 40, 20)
    out = tmp_path / "r.json"
    assert main(["detect", str(a), "--weights", "m.h5", "--coco", str(out)]) == 0
    gt = coco_mod.COCO()
    gt.dataset = {
        "images": [{"id": 7, "width": 40, "height": 20}],
        "annotations": [],
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(fake.classes)],
    }
    gt.createIndex()
    dt = gt.loadRes(str(out))
    anns = dt.loadAnns(dt.getAnnIds(imgIds=[7]))
    assert sorted(a["category_id"] for a in anns) == [1, 3]
    assert sorted(a["area"] for a in anns) == [200.0, 450.0]  # 20*10 and 30*15


# --- drawing ---------------------------------------------------------------------------------


def test_detect_draw(
    fake: FakeModel, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    big = tmp_path / "big"
    big.mkdir()
    a = _image(big / "a.png", 200, 120, (0, 0, 0))  # same stem as images/a.png
    draw = tmp_path / "drawn" / "sub"
    code = main([
        "detect", str(a), str(images / "a.png"), "--weights", "m.h5", "--draw", str(draw)
    ])
    assert code == 0
    assert sorted(os.listdir(draw)) == ["a-2.png", "a.png"]
    with Image.open(draw / "a.png") as img:
        assert img.format == "PNG" and img.size == (200, 120)
        px = np.asarray(img.convert("RGB"))
    person, cat = cli._PALETTE[2], cli._PALETTE[0]
    # Box (0, 0, 100, 60) in the person colour: its right edge at x = 100, below the label tab.
    assert tuple(px[40, 100]) == person
    # Box (50, 30, 200, 120) in the cat colour: its bottom-left corner region.
    assert tuple(px[119, 50]) == cat
    # Pixels away from every box and label keep the black background.
    assert tuple(px[110, 20]) == (0, 0, 0)


def test_detect_draw_folder_is_a_file(
    fake: FakeModel, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clash = tmp_path / "clash"
    clash.write_text("a file")
    err = _usage_error(["detect", str(images), "--weights", "m.h5", "--draw", str(clash)], capsys)
    assert f"argument --draw: {clash} is a file, not a folder" in err
    err = _usage_error(
        ["detect", str(images), "--weights", "m.h5", "--draw", str(clash / "sub")], capsys
    )
    assert f"cannot create folder {clash / 'sub'}: {clash} is a file, not a folder" in err
    assert fake.calls == []


# --- atomic output ---------------------------------------------------------------------------


def test_interrupt_keeps_finished_images(
    fake: FakeModel, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out, coco = out_dir / "r.jsonl", out_dir / "r.json"
    out.write_text("old jsonl\n")
    coco.write_text("old coco\n")
    fake.interrupt_at = 1  # Ctrl-C during the second image
    code = main([
        "detect", str(images), "--weights", "m.h5", "-o", str(out), "--coco", str(coco)
    ])
    assert code == 130
    err = capsys.readouterr().err
    assert "interrupted after 1 of 3 image(s)" in err and "continue with --resume" in err
    # The first image is kept, in both outputs; nothing else is left in the folder.
    assert [r["path"] for r in _jsonl(out.read_text())] == [str(images / "a.png")]
    assert [r["image_id"] for r in json.loads(coco.read_text())] == [0, 0]
    assert sorted(os.listdir(out_dir)) == ["r.json", "r.jsonl", "r.jsonl.run.json",
                                           "r.jsonl.sha256"]


def test_atomic_write_success_and_mode(tmp_path: Path) -> None:
    p = tmp_path / "x.txt"
    p.write_text("old")
    with atomic_write(p) as f:
        f.write("new")
        assert p.read_text() == "old"  # not visible until the block ends
    assert p.read_text() == "new"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask
    assert os.listdir(tmp_path) == ["x.txt"]


def test_atomic_write_failure_keeps_old(tmp_path: Path) -> None:
    p = tmp_path / "x.bin"
    p.write_bytes(b"good")
    with pytest.raises(RuntimeError), atomic_write(p, "wb") as f:
        f.write(b"partial")
        raise RuntimeError("disk full")
    assert p.read_bytes() == b"good"
    assert os.listdir(tmp_path) == ["x.bin"]


def test_atomic_write_new_file_failure_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), atomic_write(tmp_path / "new.json") as f:
        f.write("[")
        raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


# --- workshop photos through the command ------------------------------------------------------


def test_detect_workshop_folder(
    fake: FakeModel, shared_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = shared_dir / "data" / "workshop-images"
    assert main(["detect", str(folder), "--weights", "m.h5"]) == 0
    recs = _jsonl(capsys.readouterr().out)
    sizes = {Path(r["path"]).name: (r["width"], r["height"]) for r in recs}
    assert sizes == {
        "bicycles.jpg": (960, 638), "cats.jpg": (970, 642), "horse.jpg": (736, 919),
        "kids.jpg": (960, 608), "kittens.png": (1200, 900), "woman.jpg": (731, 508),
    }
    assert [Path(r["path"]).name for r in recs] == sorted(sizes)


# --- convert (wiring; the converter itself is tested with the weights) ------------------------


def test_convert_calls_converter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[tuple[Any, ...]] = []
    mod = types.ModuleType("npfrcnn.weights.convert")

    def checkpoint_to_hdf5(prefix: str, out: str, classes: str) -> dict[str, Any]:
        calls.append((prefix, out, classes))
        return {"skipped_training_variables": ["global_step"]}

    mod.checkpoint_to_hdf5 = checkpoint_to_hdf5  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "npfrcnn.weights.convert", mod)
    out = str(tmp_path / "m.h5")
    assert main(["convert", "ckpt/fasterrcnn", out, "--classes", "ckpt/classes.json"]) == 0
    assert calls == [("ckpt/fasterrcnn", out, "ckpt/classes.json")]
    err = capsys.readouterr().err
    assert "npfrcnn info" in err and "left out 1 training-only variable" in err


def test_convert_errors_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    mod = types.ModuleType("npfrcnn.weights.convert")

    def checkpoint_to_hdf5(prefix: str, out: str, classes: str) -> dict[str, Any]:
        raise ValueError("checkpoint has no variable rpn/conv/kernel")

    mod.checkpoint_to_hdf5 = checkpoint_to_hdf5  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "npfrcnn.weights.convert", mod)
    code = main(["convert", "ckpt/x", str(tmp_path / "m.h5"), "--classes", "c.json"])
    assert code == 2
    assert "cannot convert ckpt/x: checkpoint has no variable rpn/conv/kernel" in (
        capsys.readouterr().err
    )


def test_convert_real_checkpoint(
    tf: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A TF1 name-based checkpoint of a tiny random network, as the workshop's is laid out, goes
    # through the command and comes back tensor for tensor.
    from npfrcnn.config import workshop
    from npfrcnn.weights.hdf5 import read
    from npfrcnn.weights.random import random_weights
    from npfrcnn.weights.tf_reference import save_checkpoint

    config = workshop(units_per_block=(1, 1, 1, 1), num_classes=2,
                      base_depths=(4, 8, 16, 32), root_depth=4, rpn_depth=32)
    tensors = random_weights(config, seed=11)
    prefix = save_checkpoint(tmp_path / "ckpt" / "fasterrcnn", tensors,
                             extra={"global_step": np.array(7, np.int64)})
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps(["bear", "zebra"]))
    out = tmp_path / "model.h5"
    assert main(["convert", prefix, str(out), "--classes", str(classes)]) == 0
    wf = read(out)
    assert wf.classes == ["bear", "zebra"]
    assert wf.config == config
    assert sorted(wf.tensors) == sorted(tensors)
    for name, value in tensors.items():
        np.testing.assert_array_equal(wf.tensors[name], value, err_msg=name)
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    assert "integrity:   ok" in capsys.readouterr().out


def test_convert_requires_classes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["convert", "ckpt/x", "m.h5"])
    assert e.value.code == 2
    assert "--classes" in capsys.readouterr().err


# --- random-model and info (real weights files, tiny network) ---------------------------------

TINY = ["--units", "1,1,1,1", "--width", "4", "--num-classes", "3"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.h5"
    assert main(["random-model", str(path), *TINY, "--seed", "3"]) == 0
    return path


def test_random_model_help_says_meaningless(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["random-model", "--help"])
    assert "MEANINGLESS" in capsys.readouterr().out


def test_random_model_file(tiny_model: Path) -> None:
    from npfrcnn.weights.hdf5 import read

    wf = read(tiny_model)
    assert wf.config.units_per_block == (1, 1, 1, 1)
    assert wf.config.base_depths == (4, 8, 16, 32)
    assert wf.config.depth == 14 and wf.config.num_classes == 3
    assert wf.classes == ["class_0", "class_1", "class_2"]
    assert wf.provenance["random"] is True and wf.provenance["seed"] == 3


def test_random_model_classes_file(tmp_path: Path) -> None:
    from npfrcnn.weights.hdf5 import read

    names = tmp_path / "classes.json"
    names.write_text(json.dumps(["apple", "pear"]))
    out = tmp_path / "m.h5"
    assert main(["random-model", str(out), "--units", "1,1,1,1", "--width", "4",
                 "--classes", str(names)]) == 0
    assert read(out).classes == ["apple", "pear"]


def test_random_model_bad_units(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["random-model", "x.h5", "--units", "1,1,1"])
    assert "expected 4 positive integers" in capsys.readouterr().err


def test_info_ok(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(tiny_model)]) == 0
    out = capsys.readouterr().out
    assert "integrity:   ok" in out
    assert "ResNet-14" in out and "3 classes" in out
    assert "class_0, class_1, class_2" in out
    assert "random weights; detections from this file are meaningless" in out
    assert "problems:    none" in out


def test_info_json_and_tensors(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from npfrcnn.weights.hdf5 import read
    from npfrcnn.weights.names import expected_shapes

    assert main(["info", str(tiny_model), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    config = read(tiny_model).config
    shapes = expected_shapes(config)
    assert info["num_tensors"] == len(shapes)
    assert info["total_bytes"] == 4 * sum(int(np.prod(s)) for s in shapes.values())
    assert info["integrity"] == "ok" and info["problems"] == []
    assert main(["info", str(tiny_model), "--tensors"]) == 0
    out = capsys.readouterr().out
    # 3x3 conv from block3's output (4 * base depth 4W = 64 channels) to rpn_depth 8W = 32.
    assert "  rpn/conv/kernel: 3 x 3 x 64 x 32\n" in out


def test_info_detects_tampering(tiny_model: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.h5"
    bad.write_bytes(tiny_model.read_bytes())
    with h5py.File(bad, "r+") as f:
        f["rpn/conv/kernel"][0, 0, 0, 0] += 1.0
    assert main(["info", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "integrity:   mismatch" in out and "tensors_sha256 mismatch" in out


def test_info_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(tmp_path / "none.h5")]) == 1
    assert "does not exist" in capsys.readouterr().out


def test_detect_stdout_closed_early(
    fake: FakeModel, images: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    class ClosedPipe(io.StringIO):
        def write(self, s: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["detect", str(images), "--weights", "m.h5"]) == 141
    assert len(fake.calls) == 1  # stopped at the first write


# --- the real model (tiny random network) ----------------------------------------------------


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(5)
    path = tmp_path_factory.mktemp("photo") / "scene.png"
    Image.fromarray(rng.integers(0, 256, (72, 104, 3), dtype=np.uint8)).save(path)
    return path


def test_real_model_detect_numpy(
    tiny_model: Path, photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from npfrcnn.image import load
    from npfrcnn.model import FasterRCNN

    out, coco, draw = tmp_path / "r.jsonl", tmp_path / "r.json", tmp_path / "draw"
    code = main([
        "detect", str(photo), "--weights", str(tiny_model), "--backend", "numpy",
        "--max-detections", "5", "-o", str(out), "--coco", str(coco), "--draw", str(draw),
    ])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "RANDOM weights: detections are meaningless" in err
    [rec] = _jsonl(out.read_text())
    assert (rec["width"], rec["height"]) == (104, 72)
    # The command reports exactly what the library returns (float32 values round-trip exactly).
    model = FasterRCNN.from_hdf5(tiny_model, backend="numpy")
    want = model.detect(load(photo), max_detections=5)
    dets = rec["detections"]
    assert len(dets) == len(want.scores) <= 5
    got_boxes = np.array([d["box"] for d in dets], dtype=np.float32).reshape(-1, 4)
    np.testing.assert_array_equal(got_boxes, want.boxes)
    np.testing.assert_array_equal(np.array([d["score"] for d in dets], np.float32), want.scores)
    assert [d["class_id"] for d in dets] == [int(c) for c in want.labels]
    assert [d["label"] for d in dets] == [model.classes[int(c)] for c in want.labels]
    # Invariants of the workshop profile: boxes inside [0, W-1] x [0, H-1], scores descending.
    assert np.all(got_boxes >= 0) and np.all(got_boxes[:, [0, 2]] <= 103)
    assert np.all(got_boxes[:, [1, 3]] <= 71)
    assert all(a["score"] >= b["score"] for a, b in zip(dets, dets[1:], strict=False))
    results = json.loads(coco.read_text())
    assert len(results) == len(dets)
    for r, d in zip(results, dets, strict=True):
        x1, y1, x2, y2 = (np.float32(v) for v in d["box"])
        assert r["bbox"][:2] == d["box"][:2]
        assert np.float32(r["bbox"][2]) == x2 - x1 and np.float32(r["bbox"][3]) == y2 - y1
        assert r["category_id"] == d["class_id"] + 1 and r["image_id"] == 0
    with Image.open(draw / "scene.png") as img:
        assert img.size == (104, 72) and img.mode == "RGB"


def test_real_model_detect_cpu_backend(
    tiny_model: Path, photo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The default backend (Numba kernels): the run works and the output is well formed; parity
    # with the numpy backend is tested with the model.
    code = main(["detect", str(photo), "--weights", str(tiny_model), "--max-detections", "4"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    [rec] = _jsonl(captured.out)
    assert (rec["width"], rec["height"]) == (104, 72)
    assert 0 < len(rec["detections"]) <= 4
    assert {d["label"] for d in rec["detections"]} <= {"class_0", "class_1", "class_2"}


def test_real_model_bad_weights_file(
    tiny_model: Path, photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.h5"
    bad.write_bytes(tiny_model.read_bytes())
    with h5py.File(bad, "r+") as f:
        del f["rpn/conv/bias"]
    assert main(["detect", str(photo), "--weights", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"cannot load weights {bad}" in err and "rpn/conv/bias" in err
