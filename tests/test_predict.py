"""The Python API: ``FasterRCNN.predict`` and the result objects (``npfrcnn.results``).

The model is the shipped demo model (``weights/demo.h5``, trained on synthetic shapes) on the
NumPy backend, on images of its own synthetic dataset cropped to 96x128 (so a swapped width and
height shows). Expected values come from ``model.detect`` on the same pixels, from the
``npfrcnn detect`` command's own files, from invariants (indexing agrees with the arrays,
filtering is monotonic, COCO widths are ``x2 - x1``) and from hand-worked boxes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from npfrcnn.cli import main
from npfrcnn.data import synthetic_sample
from npfrcnn.image import load
from npfrcnn.model import STAGES, FasterRCNN
from npfrcnn.results import (
    Detection,
    Detections,
    InputError,
    Prediction,
    coco_results,
    default_image_ids,
)
from tests.helpers import assert_same

DEMO = Path(__file__).resolve().parents[1] / "weights" / "demo.h5"
H, W = 96, 128


@pytest.fixture(scope="module")
def model() -> FasterRCNN:
    return FasterRCNN.from_hdf5(DEMO, backend="numpy")


def _scene(index: int) -> np.ndarray:
    image, _, _ = synthetic_sample(21, index, size=128)
    return np.ascontiguousarray(image[:H])  # [96, 128, 3]


@pytest.fixture(scope="module")
def scenes() -> list[np.ndarray]:
    return [_scene(i) for i in range(3)]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, scenes: list[np.ndarray]) -> list[Path]:
    d = tmp_path_factory.mktemp("scenes")
    out = []
    for i, s in enumerate(scenes):
        p = d / f"scene{i}.png"  # PNG: lossless, so the file decodes to the array
        Image.fromarray(s).save(p)
        out.append(p)
    return out


@pytest.fixture(scope="module")
def pred(model: FasterRCNN, scenes: list[np.ndarray]) -> Prediction:
    [p] = model.predict(scenes[0])
    assert len(p) >= 5, "the demo model finds several shapes in a synthetic scene"
    return p


def _same_dets(got: Detections, want: Any) -> None:
    assert_same(got.boxes, want.boxes)
    assert_same(got.labels, want.labels)
    assert_same(got.scores, want.scores)
    assert list(got.class_names) == list(want.class_names)


# --- predict equals detect -----------------------------------------------------------------


def test_predict_equals_detect_for_paths_arrays_pil(
    model: FasterRCNN, scenes: list[np.ndarray], files: list[Path]
) -> None:
    with Image.open(files[2]) as pil:
        inputs: list[Any] = [str(files[0]), scenes[1], pil, files[0]]
        preds = model.predict(inputs)
    assert isinstance(preds, list) and len(preds) == 4
    want = [model.detect(load(files[0])), model.detect(scenes[1]), model.detect(scenes[2])]
    for p, w in zip(preds, [want[0], want[1], want[2], want[0]], strict=True):
        _same_dets(p.detections, w)
        assert (p.width, p.height) == (W, H)
        assert p.image is not None and p.image.shape == (H, W, 3)
    assert [p.source for p in preds] == [str(files[0]), None, None, str(files[0])]
    np.testing.assert_array_equal(preds[1].image, scenes[1])
    assert preds[1].image is not scenes[1]  # a copy: changing the array later changes nothing
    assert [p.image_id for p in preds] == [0, 1, 2, 3]  # not all numbered files: positions


def test_predict_forwards_min_score_and_max_detections(
    model: FasterRCNN, scenes: list[np.ndarray]
) -> None:
    [p] = model.predict(scenes[0], min_score=0.9, max_detections=3)
    _same_dets(p.detections, model.detect(scenes[0], min_prob=0.9, max_detections=3))
    assert 0 < len(p) <= 3 and np.all(p.scores >= np.float32(0.9))


def test_single_input_is_a_list_of_one_and_empty_list(
    model: FasterRCNN, files: list[Path]
) -> None:
    one = model.predict(files[1])
    assert isinstance(one, list) and len(one) == 1 and one[0].source == str(files[1])
    assert model.predict([]) == []


def test_batch_array_is_n_images(model: FasterRCNN, scenes: list[np.ndarray]) -> None:
    batch = np.stack(scenes[:2])  # [2, 96, 128, 3]
    preds = model.predict(batch)
    assert len(preds) == 2
    for p, s in zip(preds, scenes[:2], strict=True):
        _same_dets(p.detections, model.detect(s))


def test_stream_yields_the_same(model: FasterRCNN, scenes: list[np.ndarray]) -> None:
    it = model.predict(scenes[:2], stream=True)
    assert not isinstance(it, list)
    got = list(it)
    assert len(got) == 2
    for p, s in zip(got, scenes[:2], strict=True):
        _same_dets(p.detections, model.detect(s))


def test_timings(pred: Prediction) -> None:
    assert list(pred.timings) == ["load", *STAGES, "detect"]
    assert all(v >= 0.0 for v in pred.timings.values())
    assert pred.timings["detect"] >= sum(pred.timings[k] for k in STAGES)


def test_exif_orientation_paths_and_pil(
    model: FasterRCNN, scenes: list[np.ndarray], tmp_path: Path
) -> None:
    # Orientation 6: the viewer rotates the stored 128x96 picture by 90 degrees, to 96x128.
    path = tmp_path / "rotated.png"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(scenes[0]).save(path, exif=exif)
    upright = load(path)
    assert upright.shape == (W, H, 3)
    with Image.open(path) as pil:
        from_path, from_pil = model.predict([path, pil])
    want = model.detect(upright)
    for p in (from_path, from_pil):
        assert (p.width, p.height) == (H, W)
        _same_dets(p.detections, want)


# --- Detections indexing -------------------------------------------------------------------


def test_int_index_and_iteration_agree_with_arrays(pred: Prediction, model: FasterRCNN) -> None:
    d = pred.detections
    items = list(d)
    assert len(items) == len(d) == len(pred)
    for i, item in enumerate(items):
        assert isinstance(item, Detection)
        assert item == d[i] == d[i - len(d)] == d[np.int64(i)] == pred[i]
        assert np.array_equal(np.array(item.box, dtype=np.float32), d.boxes[i])
        assert item.box == tuple(float(v) for v in d.boxes[i])  # float32 values exactly
        assert item.label == item.class_id == int(d.labels[i])
        assert item.score == float(d.scores[i])
        assert item.class_name == model.classes[item.label] == d.class_names[i]
        box, label, score, name = item  # a NamedTuple unpacks
        assert (box, label, score, name) == tuple(item)
    assert list(pred) == items


@pytest.mark.parametrize(
    "index",
    [slice(None, 3), slice(1, None, 2), slice(None, None, -1), slice(4, 2), [2, 0], [0, 0, 1],
     [-1], np.array([3, 1]), np.array([], dtype=np.int64), []],
)
def test_selection_agrees_with_arrays(pred: Prediction, index: Any) -> None:
    d = pred.detections
    sub = d[index]
    assert isinstance(sub, Detections)
    rows = np.arange(len(d))[index] if isinstance(index, slice) else np.asarray(index, np.intp)
    assert_same(sub.boxes, d.boxes[rows])
    assert_same(sub.labels, d.labels[rows])
    assert_same(sub.scores, d.scores[rows])
    assert sub.class_names == [d.class_names[int(i)] for i in rows]
    assert list(sub) == [d[int(i)] for i in rows]


def test_boolean_mask(pred: Prediction) -> None:
    d = pred.detections
    mask = d.scores > 0.9
    assert 0 < mask.sum() < len(d), "the test needs a mask that keeps some and drops some"
    sub = d[mask]
    assert_same(sub.scores, d.scores[mask])
    assert sub.class_names == [n for n, m in zip(d.class_names, mask, strict=True) if m]
    psub = pred[pred.scores > 0.9]
    assert isinstance(psub, Prediction)
    assert psub.source is pred.source and psub.image is pred.image
    assert (psub.width, psub.height, psub.image_id) == (pred.width, pred.height, pred.image_id)
    _same_dets(psub.detections, sub)
    assert len(d[[False] * len(d)]) == 0


def test_bad_indices(pred: Prediction) -> None:
    d = pred.detections
    n = len(d)
    with pytest.raises(IndexError, match=f"index {n} is out of range for {n} detections"):
        d[n]
    with pytest.raises(IndexError, match="out of range"):
        d[-n - 1]
    with pytest.raises(IndexError, match="out of range"):
        d[[0, n]]
    with pytest.raises(IndexError, match=rf"shape \(2,\) for {n} detections"):
        d[np.array([True, False])]
    with pytest.raises(TypeError, match="single bool"):
        d[True]
    with pytest.raises(TypeError, match="float 0.5"):
        d[0.5]
    with pytest.raises(TypeError, match="str"):
        d["boxes"]
    with pytest.raises(TypeError, match="2-d"):
        d[np.zeros((1, 1), np.int64)]


def test_detections_checks_its_arrays() -> None:
    boxes = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match=r"scores has shape \(3,\), expected \(2,\)"):
        Detections(boxes, np.zeros(2, np.int64), np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"boxes must be \[K, 4\]"):
        Detections(np.zeros((2, 5), np.float32), np.zeros(2, np.int64), np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="class_names has 1 names for 2 boxes"):
        Detections(boxes, np.zeros(2, np.int64), np.zeros(2, np.float32), ["a"])
    # No names: a detection's class name is its id.
    d = Detections(boxes, np.array([4, 1]), np.zeros(2, np.float32))
    assert [x.class_name for x in d] == ["4", "1"]


# --- filter --------------------------------------------------------------------------------


def test_filter_is_monotonic(pred: Prediction) -> None:
    scores = pred.scores
    thresholds = [0.0, float(scores.min()), 0.5, float(np.median(scores)), 0.95,
                  float(scores.max()), 1.0]
    previous = pred
    for t in sorted(thresholds):
        f = pred.filter(t)
        assert isinstance(f, Prediction) and f.image is pred.image
        keep = scores >= np.float32(t)
        _same_dets(f.detections, pred.detections[keep])
        assert np.all(f.scores >= np.float32(t))
        # A higher threshold keeps a subset of a lower one's detections, in the same order.
        assert list(f) == [d for d in previous if d.score >= np.float32(t)]
        previous = f
    assert len(pred.filter(0.0)) == len(pred)
    assert len(pred.filter(float(scores.max()))) >= 1  # >=: the best detection survives


@pytest.mark.parametrize("bad", [-0.1, 1.5, math.nan, True, "0.5", None])
def test_filter_bad_threshold(pred: Prediction, bad: Any) -> None:
    with pytest.raises(ValueError, match="min_score must"):
        pred.filter(bad)


# --- JSON ----------------------------------------------------------------------------------


def test_json_round_trip(pred: Prediction) -> None:
    line = pred.to_json()
    assert "\n" not in line
    record = json.loads(line)
    assert set(record) == {"path", "image_id", "width", "height", "detections"}
    assert (record["width"], record["height"], record["path"]) == (W, H, None)
    back = Prediction.from_json(line)
    _same_dets(back.detections, pred.detections)  # float32 values come back exactly
    assert (back.width, back.height, back.source, back.image_id) == (W, H, None, 0)
    assert back.to_json() == line
    assert json.loads(pred.to_json(image_id=42))["image_id"] == 42
    for d, r in zip(pred, record["detections"], strict=True):
        assert set(r) == {"box", "label", "class_id", "score"}
        assert (r["label"], r["class_id"]) == (d.class_name, d.label)
        assert_same(np.float32(r["box"]), np.float32(d.box))
        assert np.float32(r["score"]) == np.float32(d.score)
        # Each float is the shortest decimal of its float32 (as the command writes it).
        assert all(v == float(str(np.float32(v))) for v in [*r["box"], r["score"]])


def test_from_json_errors() -> None:
    with pytest.raises(ValueError, match="not a JSON line"):
        Prediction.from_json("{")
    with pytest.raises(ValueError, match="not an npfrcnn detection record"):
        Prediction.from_json('{"path": null}')
    with pytest.raises(ValueError, match="JSON object"):
        Prediction.from_json("[]")


def test_records_equal_the_cli_output(
    model: FasterRCNN, scenes: list[np.ndarray], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Numbered files: both the command and predict take the stems as COCO image ids.
    paths = []
    for stem, s in (("12", scenes[0]), ("7", scenes[1])):
        paths.append(str(tmp_path / f"{stem}.png"))
        Image.fromarray(s).save(paths[-1])
    out, coco, drawn = tmp_path / "out.jsonl", tmp_path / "coco.json", tmp_path / "drawn"
    code = main(["detect", *paths, "--weights", str(DEMO), "--backend", "numpy", "-q",
                 "-o", str(out), "--coco", str(coco), "--draw", str(drawn)])
    assert code == 0, capsys.readouterr().err
    preds = model.predict(paths)
    assert [p.image_id for p in preds] == [12, 7]
    assert out.read_text() == "".join(p.to_json() + "\n" for p in preds)
    assert json.loads(coco.read_text()) == [r for p in preds for r in p.to_coco()]
    for p in preds:  # the command's PNG drawing, pixel for pixel
        with Image.open(drawn / Path(str(p.source)).name) as img:
            np.testing.assert_array_equal(np.asarray(img.convert("RGB")), np.asarray(p.draw()))


def test_default_image_ids() -> None:
    assert default_image_ids(["a/000000397133.jpg", "b/12.png"]) == [397133, 12]
    assert default_image_ids(["a/1.jpg", "b/01.png"]) == [0, 1]  # same number twice
    assert default_image_ids(["a/1.jpg", None]) == [0, 1]  # an array has no stem
    assert default_image_ids(["a/1.jpg", "b/x.png"]) == [0, 1]
    assert default_image_ids([]) == []


# --- COCO ----------------------------------------------------------------------------------


def test_to_coco_hand_worked() -> None:
    dets = Detections(
        np.array([[1.5, 2.0, 10.25, 4.0], [0.0, 0.0, 127.0, 95.0]], np.float32),
        np.array([2, 0], np.int64), np.array([0.75, 0.5], np.float32), ["c", "a"],
    )
    p = Prediction(dets, "x.png", W, H, image_id=9)
    assert p.to_coco() == [
        {"image_id": 9, "category_id": 3, "bbox": [1.5, 2.0, 8.75, 2.0], "score": 0.75},
        {"image_id": 9, "category_id": 1, "bbox": [0.0, 0.0, 127.0, 95.0], "score": 0.5},
    ]
    assert [r["category_id"] for r in p.to_coco(category_ids=[10, 20, 30])] == [30, 10]
    assert [r["category_id"] for r in p.to_coco(category_ids={"a": 5, "c": 7})] == [7, 5]
    # None: the dataset has no category for that class; its detections are left out.
    assert [r["score"] for r in p.to_coco(category_ids=[None, 20, 30])] == [0.75]
    assert [r["score"] for r in p.to_coco(category_ids={"a": 5, "c": None})] == [0.5]
    assert {r["image_id"] for r in p.to_coco(image_id=3)} == {3}
    with pytest.raises(ValueError, match="no entry for class 'c'"):
        p.to_coco(category_ids={"a": 5})
    with pytest.raises(ValueError, match="no entry for class_id 2"):
        p.to_coco(category_ids=[1, 2])
    with pytest.raises(ValueError, match="ints"):
        p.to_coco(category_ids=[1, 2, 3.5])  # type: ignore[list-item]
    assert Prediction(dets[[]], None, W, H).to_coco() == []


def test_to_coco_widths_are_x2_minus_x1(pred: Prediction) -> None:
    results = pred.to_coco()
    assert len(results) == len(pred)
    for r, d in zip(results, pred, strict=True):
        x1, y1, x2, y2 = (np.float32(v) for v in d.box)
        assert [np.float32(v) for v in r["bbox"][:2]] == [x1, y1]
        assert np.float32(r["bbox"][2]) == x2 - x1 and np.float32(r["bbox"][3]) == y2 - y1
        assert r["category_id"] == d.label + 1 and r["image_id"] == pred.image_id
        assert np.float32(r["score"]) == np.float32(d.score)
    # Workshop boxes are clipped to [0, W-1] x [0, H-1].
    assert np.all(pred.boxes >= 0)
    assert np.all(pred.boxes[:, [0, 2]] <= W - 1) and np.all(pred.boxes[:, [1, 3]] <= H - 1)
    assert coco_results(0, pred.boxes, pred.labels, pred.scores) == results


# --- draw ----------------------------------------------------------------------------------


def test_draw(pred: Prediction) -> None:
    img = pred.draw()
    assert isinstance(img, Image.Image)
    assert img.size == (pred.width, pred.height) == (W, H) and img.mode == "RGB"
    drawn = np.asarray(img)
    assert pred.image is not None
    assert not np.array_equal(drawn, pred.image)  # boxes were drawn
    # Nothing to draw: the picture is the image itself.
    empty = pred[[]]
    np.testing.assert_array_equal(np.asarray(empty.draw()), pred.image)


def test_draw_after_json_needs_the_image(pred: Prediction) -> None:
    back = Prediction.from_json(pred.to_json())
    with pytest.raises(ValueError, match="holds no image"):
        back.draw()
    assert pred.image is not None
    np.testing.assert_array_equal(np.asarray(back.draw(pred.image)), np.asarray(pred.draw()))
    with pytest.raises(ValueError, match=r"uint8 \[96, 128, 3\]"):
        back.draw(pred.image[:10])


def test_repr_is_short(pred: Prediction) -> None:
    text = repr(pred)
    assert text.startswith(f"Prediction(array, {W}x{H}, image_id=0, {len(pred)} detections: ")
    assert "\n" not in text and len(text) < 200


# --- bad inputs ----------------------------------------------------------------------------


@pytest.fixture
def counting(model: FasterRCNN, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = model.detect

    def detect(image: np.ndarray, **kw: Any) -> Any:
        calls.append(1)
        return real(image, **kw)

    monkeypatch.setattr(model, "detect", detect)
    return calls


def test_every_bad_input_reported_before_any_work(
    model: FasterRCNN, scenes: list[np.ndarray], files: list[Path], tmp_path: Path,
    counting: list[int],
) -> None:
    good = scenes[0]
    inputs: list[Any] = [
        good,
        str(tmp_path / "missing.jpg"),
        tmp_path,
        good.astype(np.float32),
        good[:, :, 0],
        np.zeros((H, W, 4), np.uint8),
        np.ascontiguousarray(good.transpose(2, 0, 1)),
        np.zeros((0, 5, 3), np.uint8),
        7,
        b"\x89PNG",
        [good],
        str(tmp_path / "*.jpg"),
        files[0],
    ]
    with pytest.raises(InputError) as e:
        model.predict(inputs)
    msg = str(e.value)
    assert counting == []
    assert msg.startswith("11 inputs cannot be used (of 13); nothing was run:")
    assert len(e.value.problems) == 11
    expected = [
        f"input 1 ({tmp_path / 'missing.jpg'}): no such file; check the path",
        f"input 2 ({tmp_path}): is a folder",
        "input 3 (array): dtype float32; expected uint8",
        "input 4 (array): shape [96, 128] looks grayscale",
        "input 5 (array): shape [96, 128, 4] has 4 channels (RGBA?)",
        "input 6 (array): shape [3, 96, 128] looks channels-first",
        "input 7 (array): shape [0, 5, 3] has zero size",
        "input 8: expected a path (str or os.PathLike), a uint8 [H, W, 3] RGB numpy array or "
        "a PIL image, got int",
        "input 9: raw bytes are not an image",
        "input 10: a list inside the list",
        f"input 11 ({tmp_path / '*.jpg'}): no such file; patterns are not expanded",
    ]
    for problem, want in zip(e.value.problems, expected, strict=True):
        assert problem.startswith(want), problem
    assert "astype(np.uint8)" in msg and "transpose(1, 2, 0)" in msg and "a[..., :3]" in msg


def test_undecodable_file_reported_before_any_work(
    model: FasterRCNN, scenes: list[np.ndarray], files: list[Path], tmp_path: Path,
    counting: list[int],
) -> None:
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(files[0].read_bytes()[:200])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(InputError) as e:
        model.predict([scenes[0], truncated, text])
    assert counting == []
    assert e.value.problems[0].startswith(f"input 1 ({truncated}): the file is truncated")
    assert e.value.problems[1].startswith(f"input 2 ({text}): not an image file")
    assert isinstance(e.value, ValueError)


def test_closed_pil_image(model: FasterRCNN, files: list[Path], counting: list[int]) -> None:
    with Image.open(files[0]) as img:
        pass
    with pytest.raises(InputError, match=r"input 0 \(PIL image\): the image is closed"):
        model.predict(img)
    assert counting == []


def test_stream_checks_first_and_decodes_lazily(
    model: FasterRCNN, scenes: list[np.ndarray], tmp_path: Path, counting: list[int]
) -> None:
    with pytest.raises(InputError, match="no such file"):
        model.predict([scenes[0], tmp_path / "missing.png"], stream=True)  # before iterating
    assert counting == []
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    it = model.predict([scenes[0], bad], stream=True)
    first = next(it)
    _same_dets(first.detections, model.detect(scenes[0]))
    with pytest.raises(InputError, match="1 earlier input was processed") as e:
        next(it)
    assert f"input 1 ({bad}): not an image file" in str(e.value)


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"min_score": 1.5}, "min_score must be in"), ({"min_score": -0.1}, "min_score must be in"),
     ({"min_score": math.nan}, "min_score must be in"),
     ({"min_score": True}, "min_score must be a number"),
     ({"min_score": "0.5"}, "min_score must be a number"),
     ({"max_detections": -1}, "max_detections must be"),
     ({"max_detections": 2.5}, "max_detections must be"),
     ({"max_detections": True}, "max_detections must be")],
)
def test_bad_arguments(
    model: FasterRCNN, scenes: list[np.ndarray], counting: list[int], kw: dict[str, Any],
    match: str,
) -> None:
    with pytest.raises(ValueError, match=match):
        model.predict(scenes[0], **kw)
    assert counting == []


@pytest.mark.parametrize("bad", [7, {"a": 1}, (x for x in [1])])
def test_not_an_input_container(model: FasterRCNN, bad: Any) -> None:
    with pytest.raises(InputError, match="predict takes a path"):
        model.predict(bad)


def test_bad_batch_array(model: FasterRCNN, counting: list[int]) -> None:
    with pytest.raises(InputError, match=r"a \[2, 8, 8, 3\] float32 batch; expected uint8"):
        model.predict(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(InputError, match=r"input 1 \(array\): a \[1, 8, 8, 3\] batch inside"):
        model.predict([np.zeros((8, 8, 3), np.uint8), np.zeros((1, 8, 8, 3), np.uint8)])
    assert counting == []
