"""Issue 12 for synth / train / eval / demo: arguments checked before any work, no input
overwritten, no silently wrong result, eval's progress, tables and COCO JSON input, train's
resume message, -q and metrics file, --width as random-model's, demo written as detect writes.

Models: the shipped demo model (weights/demo.h5; classes rectangle, ellipse, triangle, the
synthetic generator's) for eval and demo, so that most tests need no TensorFlow; the train
tests run 1 to 3 steps of a width-4 ResNet-14 on 96-pixel images.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from npfrcnn import cli_train
from npfrcnn.cli import main
from npfrcnn.data import make_synthetic


def _demo_weights() -> str:
    w = cli_train.default_weights()
    assert w is not None, "weights/demo.h5 is shipped: missing is a packaging bug"
    return w


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 synthetic 128-px images in both layouts (the demo model's image size)."""
    return make_synthetic(tmp_path_factory.mktemp("synth") / "d", 3, seed=5)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "Traceback" not in err
    return err


# Arguments are checked before any work and before anything is created ---------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--min-prob", "5"], "must be in [0, 1]"),
        (["demo", "--min-prob", "nan"], "finite"),
        (["demo", "--n", "-1"], "positive integer"),
        (["demo", "--n", "0"], "positive integer"),
        (["demo", "--seed", "-3"], "must be 0 or more"),
        (["synth", "--n", "0"], "positive integer"),
        (["synth", "--size", "16"], "at least 32"),
        (["train", "--steps", "0"], "positive integer"),
        (["train", "--steps", "-5"], "positive integer"),
        (["train", "--checkpoint-every", "0"], "positive integer"),
        (["train", "--lr", "nan"], "positive number"),
        (["train", "--lr", "inf"], "positive number"),
        (["train", "--lr", "-0.001"], "positive number"),
        (["train", "--lr", "0"], "positive number"),
        (["train", "--seed", "-1"], "must be 0 or more"),
        (["train", "--width", "0"], "positive integer"),
        (["train", "--depth", "20"], "12 * u + 2"),
        (["train", "--anchor-border", "-1"], "must be 0 or more"),
        (["train", "--log-every", "0"], "positive integer"),
    ],
)
def test_bad_values_are_usage_errors_before_anything_is_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    out = tmp_path / "out"
    cmd = argv[0]
    if cmd == "train":
        rest = ["--data", str(tmp_path), "--out", str(out / "m.h5")]
    else:
        rest = ["--out", str(out)]
    err = _usage_error([*argv, *rest], capsys)
    assert message in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_outputs_that_cannot_be_written_are_usage_errors(
    tmp_path: Path, synth: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no" / "such"
    err = _usage_error(["eval", "--data", str(synth), "--json", str(missing / "r.json")],
                       capsys)
    assert "does not exist" in err
    err = _usage_error(["train", "--data", str(synth), "--out", str(missing / "m.h5")], capsys)
    assert "does not exist" in err
    err = _usage_error(["train", "--data", str(synth), "--out", str(tmp_path / "m.h5"),
                        "--metrics", str(missing / "m.jsonl")], capsys)
    assert "does not exist" in err
    (tmp_path / "afile").write_text("x")
    err = _usage_error(["demo", "--out", str(tmp_path / "afile")], capsys)
    assert "is a file, not a folder" in err
    err = _usage_error(["eval", "--data", str(synth), "--json", str(tmp_path)], capsys)
    assert "is a folder" in err
    if os.geteuid() != 0:  # root may write anywhere: no permission to refuse
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            err = _usage_error(["eval", "--data", str(synth), "--json", str(ro / "r.json")],
                               capsys)
            assert "permission denied" in err
        finally:
            ro.chmod(0o700)
    assert not missing.parent.exists()


# Never overwrite an input ------------------------------------------------------------------


def test_eval_json_never_overwrites_an_input(
    tmp_path: Path, synth: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = _demo_weights()
    data = _copy(synth, tmp_path / "d")
    ann = data / "annotations.json"
    before = ann.read_bytes()
    err = _usage_error(["eval", "--data", str(data), "--json", str(ann)], capsys)
    assert "would destroy an input" in err
    link = tmp_path / "alias.json"  # another name of the same file counts too
    link.symlink_to(ann)
    err = _usage_error(["eval", "--data", str(data), "--json", str(link)], capsys)
    assert "would destroy an input" in err
    image = sorted((data / "train").glob("*.jpg"))[0]
    _usage_error(["eval", "--data", str(data), "--json", str(image)], capsys)
    w = tmp_path / "w.h5"
    shutil.copy(weights, w)
    err = _usage_error(["eval", "--data", str(data), "--weights", str(w), "--json", str(w)],
                       capsys)
    assert "the weights" in err
    assert ann.read_bytes() == before


def test_train_never_overwrites_an_input(
    tmp_path: Path, synth: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("tensorflow")
    data = _copy(synth, tmp_path / "d")
    ann = data / "annotations.json"
    before = ann.read_bytes()
    assert main(["train", "--data", str(ann), "--out", str(ann), "--steps", "1"]) == 2
    assert "would destroy an input" in capsys.readouterr().err
    csv_before = (data / "train.csv").read_bytes()
    assert main(["train", "--data", str(data), "--classes-from-source", "--out",
                 str(tmp_path / "m.h5"), "--metrics", str(data / "train.csv"), "--steps", "1",
                 "--width", "4"]) == 2
    assert "would destroy an input" in capsys.readouterr().err
    image = sorted((data / "train").glob("*.jpg"))[0]
    image_before = image.read_bytes()
    assert main(["train", "--data", str(data), "--out", str(image), "--steps", "1",
                 "--width", "4"]) == 2
    assert "would destroy an input" in capsys.readouterr().err
    assert image.read_bytes() == image_before
    assert (data / "train.csv").read_bytes() == csv_before
    assert ann.read_bytes() == before
    assert not (tmp_path / "m.h5.ckpt.npz").exists()


# No silently wrong result ------------------------------------------------------------------


def test_eval_refuses_sizes_that_disagree_with_the_images(
    tmp_path: Path, synth: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = _demo_weights()
    data = _copy(synth, tmp_path / "d")
    doc = json.loads((data / "annotations.json").read_text())
    doc["images"][1]["width"] = 256  # the file is 128 x 128
    (data / "annotations.json").write_text(json.dumps(doc))
    assert main(["eval", "--weights", weights, "--data", str(data), "-q"]) == 2
    err = capsys.readouterr().err
    assert "is 128x128 but its annotation says 256x128" in err and "Traceback" not in err


def test_eval_refuses_an_empty_dataset(
    tmp_path: Path, synth: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = _demo_weights()
    data = _copy(synth, tmp_path / "d")
    doc = json.loads((data / "annotations.json").read_text())
    doc["annotations"] = []
    (data / "annotations.json").write_text(json.dumps(doc))
    js = tmp_path / "r.json"
    assert main(["eval", "--weights", weights, "--data", str(data), "-q", "--json",
                 str(js)]) == 2
    assert "no annotated box" in capsys.readouterr().err
    doc["images"] = []
    (data / "annotations.json").write_text(json.dumps(doc))
    assert main(["eval", "--weights", weights, "--data", str(data), "-q"]) == 2
    assert "has no image" in capsys.readouterr().err
    assert not js.exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["categories"].append({"id": 1, "name": "circle"}),
         "duplicate category id 1"),
        (lambda d: d["images"].append(dict(d["images"][0], file_name="train/x.jpg")),
         "duplicate image id 1"),
        (lambda d: d["annotations"].append(dict(d["annotations"][0])),
         "duplicate annotation id 1"),
        (lambda d: d["images"].__setitem__(0, "train/a.jpg"), "images[0] must be an object"),
    ],
)
def test_eval_and_train_refuse_duplicate_ids(
    tmp_path: Path, synth: Path, capsys: pytest.CaptureFixture[str], edit, message: str
) -> None:
    weights = _demo_weights()
    data = _copy(synth, tmp_path / "d")
    doc = json.loads((data / "annotations.json").read_text())
    edit(doc)
    (data / "annotations.json").write_text(json.dumps(doc))
    assert main(["eval", "--weights", weights, "--data", str(data), "-q"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


# eval: progress, aligned tables, a COCO JSON file as --data, classes by name ----------------


def _eval(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    assert main(["eval", "--weights", _demo_weights(), *argv]) == 0
    c = capsys.readouterr()
    return c.out, c.err


def test_eval_progress_tables_and_quiet(
    tmp_path: Path, synth: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, err = _eval(["--data", str(synth)], capsys)
    lines = [ln for ln in err.splitlines() if ln.startswith("image ")]
    assert [ln.split()[1] for ln in lines] == ["1/3", "2/3", "3/3"]
    assert all("detections" in ln and "ground truth" in ln for ln in lines)
    text = out.splitlines()
    # COCO table: the 12 values right-aligned in one column (their decimal points line up,
    # -1 included); VOC table: AP, box and detection counts each in one column.
    coco = [ln for ln in text if ln.split()[:1] and ln.split()[0] in (
        "AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR1", "AR10", "AR100",
        "AR_small", "AR_medium", "AR_large")]
    assert len(coco) == 12
    assert len({ln.index(".") for ln in coco}) == 1
    assert len({len(ln) for ln in coco}) == 1
    start = text.index(next(ln for ln in text if ln.strip().startswith("class")))
    voc = text[start + 1:start + 4]
    assert [ln.split()[0] for ln in voc] == ["rectangle", "ellipse", "triangle"]
    assert len({ln.index(".") for ln in voc}) == 1
    assert len({len(ln) for ln in voc}) == 1
    out_q, err_q = _eval(["--data", str(synth), "-q"], capsys)
    assert err_q == "" and out_q == out


def test_eval_takes_a_coco_json_file_and_infers_the_format(
    tmp_path: Path, synth: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    elsewhere = tmp_path / "instances_val.json"
    shutil.copy(synth / "annotations.json", elsewhere)
    ref = tmp_path / "ref.json"
    _eval(["--data", str(synth), "--format", "coco", "--json", str(ref), "-q"], capsys)
    got = tmp_path / "got.json"
    _eval(["--data", str(elsewhere), "--images", str(synth), "--json", str(got), "-q"], capsys)
    a, b = json.loads(ref.read_text()), json.loads(got.read_text())
    assert a["coco"] == b["coco"] and a["voc"] == b["voc"] and b["images"] == 3
    # Without --images the JSON's folder is the image root: here the images are not there.
    assert main(["eval", "--weights", _demo_weights(), "--data", str(elsewhere), "-q"]) == 2
    assert "--images" in capsys.readouterr().err
    # --format is inferred for a folder with only train.csv too (the wheat layout).
    wheat = _copy(synth, tmp_path / "w")
    (wheat / "annotations.json").unlink()
    w = tmp_path / "w.json"
    _eval(["--data", str(wheat), "--classes-from-source", "--json", str(w), "-q"], capsys)
    assert json.loads(w.read_text())["coco"] == a["coco"]


def test_eval_class_ids_do_not_depend_on_the_layout(
    tmp_path: Path, synth: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Category ids 7, 1, 3 (listed in another order, images shuffled) map to the model's
    classes by name: the metrics are those of the generator's ids 1, 2, 3."""
    ref = tmp_path / "ref.json"
    _eval(["--data", str(synth), "--json", str(ref), "-q"], capsys)
    data = _copy(synth, tmp_path / "d")
    doc = json.loads((data / "annotations.json").read_text())
    new_id = {1: 7, 2: 1, 3: 3}
    doc["categories"] = [{"id": new_id[c["id"]], "name": c["name"]}
                         for c in reversed(doc["categories"])]
    for a in doc["annotations"]:
        a["category_id"] = new_id[a["category_id"]]
    doc["images"] = doc["images"][::-1]
    (data / "annotations.json").write_text(json.dumps(doc))
    got = tmp_path / "got.json"
    _eval(["--data", str(data), "--json", str(got), "-q"], capsys)
    a, b = json.loads(ref.read_text()), json.loads(got.read_text())
    assert a["coco"] == b["coco"] and a["voc"] == b["voc"]


# demo writes what detect writes ------------------------------------------------------------


def test_demo_writes_exactly_what_detect_writes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = _demo_weights()
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--n", "2", "-q"]) == 0
    assert capsys.readouterr().err == ""
    inputs = out / "inputs"
    assert sorted(p.name for p in inputs.iterdir()) == ["demo_0.png", "demo_1.png"]
    again = tmp_path / "detect"
    assert main(["detect", str(inputs), "--weights", weights, "--min-prob", "0.5",
                 "--output", str(tmp_path / "d.jsonl"), "--draw", str(again), "-q"]) == 0
    demo_lines = (out / "detections.jsonl").read_text().splitlines()
    detect_lines = (tmp_path / "d.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in demo_lines] == [json.loads(x) for x in detect_lines]
    assert any(json.loads(x)["detections"] for x in demo_lines)  # something was drawn
    for name in ("demo_0.png", "demo_1.png"):
        a = np.asarray(Image.open(out / name))
        b = np.asarray(Image.open(again / name))
        np.testing.assert_array_equal(a, b)


def test_demo_refuses_to_overwrite_its_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    out.mkdir()
    w = out / "detections.jsonl"
    shutil.copy(_demo_weights(), w)
    before = w.read_bytes()
    err = _usage_error(["demo", "--out", str(out), "--weights", str(w), "--n", "1"], capsys)
    assert "would destroy an input" in err
    assert w.read_bytes() == before and not (out / "inputs").exists()


def test_synth_writes_every_file_through_the_atomic_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import npfrcnn._io as io_mod

    written: list[str] = []
    real = io_mod.atomic_write

    def spy(path, *args, **kwargs):
        written.append(os.path.relpath(path, tmp_path / "s"))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(io_mod, "atomic_write", spy)
    assert main(["synth", "--out", str(tmp_path / "s"), "--n", "2", "--size", "64", "-q"]) == 0
    on_disk = sorted(str(p.relative_to(tmp_path / "s")) for p in (tmp_path / "s").rglob("*")
                     if p.is_file())
    assert sorted(written) == on_disk
    assert not [p for p in on_disk if ".tmp" in p or "npfrcnn-tmp" in p]


# train: resume message, -q, metrics, --width -------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("tiny") / "d", 2, seed=3, size=96,
                          max_objects=2, layouts=("coco",))


def _train(data: Path, out: Path, *extra: str) -> int:
    return main(["train", "--data", str(data), "--out", str(out), "--width", "4",
                 "--checkpoint-every", "1", *extra])


def _metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_train_quiet_metrics_resume_message_and_width(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("tensorflow")
    from npfrcnn.weights.hdf5 import read

    out = tmp_path / "m.h5"
    metrics = Path(str(out) + ".metrics.jsonl")
    assert _train(tiny, out, "--steps", "2", "-q") == 0
    assert capsys.readouterr().err == ""  # -q: no progress, no info
    recs = _metrics(metrics)
    assert [r["step"] for r in recs] == [1, 2]
    for r in recs:
        assert set(r) == {"step", "losses", "lr", "time", "elapsed_s", "step_s"}
        assert set(r["losses"]) == {"rpn_cls", "rpn_box", "cls", "box", "total"}
        assert r["lr"] > 0 and r["step_s"] > 0
        total = sum(v for k, v in r["losses"].items() if k != "total")
        assert r["losses"]["total"] == pytest.approx(total, rel=1e-12)
    # --width means what random-model --width means: bottlenecks W, 2W, 4W, 8W, root W, RPN 8W.
    rnd = tmp_path / "r.h5"
    assert main(["random-model", str(rnd), "--units", "1,1,1,1", "--width", "4",
                 "--num-classes", "3"]) == 0
    a, b = read(out).config, read(rnd).config
    assert a.base_depths == b.base_depths == (4, 8, 16, 32)
    assert (a.root_depth, a.rpn_depth) == (b.root_depth, b.rpn_depth) == (4, 32)
    # A fresh run over an existing checkpoint is refused (it may be hours of work) ...
    capsys.readouterr()
    assert _train(tiny, out, "--steps", "3") == 2
    assert "--resume" in capsys.readouterr().err
    # ... resuming says where it resumed from; the metrics file keeps the lines up to the
    # checkpoint's step, drops later ones (steps redone) and appends the new steps.
    with open(metrics, "a") as f:
        f.write(json.dumps({"step": 3, "losses": {}, "lr": 0, "time": 0}) + "\n")
    assert _train(tiny, out, "--steps", "3", "--resume") == 0
    err = capsys.readouterr().err
    assert f"resumed from step 2 of 3 (checkpoint {out}.ckpt.npz)" in err
    recs2 = _metrics(metrics)
    assert [r["step"] for r in recs2] == [1, 2, 3]
    assert recs2[:2] == recs and recs2[2]["losses"]
    assert read(out).provenance["steps"] == 3
    # past the checkpoint's step: refused, naming it
    assert _train(tiny, out, "--steps", "2", "--resume") == 2
    assert "is at step 3, past --steps 2" in capsys.readouterr().err
    # --overwrite starts afresh
    assert _train(tiny, out, "--steps", "1", "--overwrite", "-q") == 0
    assert [r["step"] for r in _metrics(metrics)] == [1]


def test_train_checkpoints_through_the_atomic_writer(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("tensorflow")
    import npfrcnn.train as train_mod

    written: list[Path] = []
    real = train_mod.atomic_write

    def spy(path, *args, **kwargs):
        written.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(train_mod, "atomic_write", spy)
    out = tmp_path / "m.h5"
    assert _train(tiny, out, "--steps", "1", "-q") == 0
    assert Path(str(out) + ".ckpt.npz") in written


# eval's ground truth: crowd boxes, annotation areas and category ids as pycocotools -----------


def test_evaluate_detections_equals_pycocotools_with_crowd_area_and_sparse_ids(
    tmp_path: Path,
) -> None:
    """A COCO file with category ids 7, 1, 3, a crowd region and segmentation areas unlike
    the box areas: eval's numbers are pycocotools' on the same file and results."""
    coco = pytest.importorskip("pycocotools.coco")
    cocoeval = pytest.importorskip("pycocotools.cocoeval")
    import contextlib
    import io

    from npfrcnn.data import read_coco

    root = tmp_path
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((100, 120, 3), np.uint8)).save(root / name)
    doc = {
        "images": [{"id": 5, "file_name": "a.png", "width": 120, "height": 100},
                   {"id": 2, "file_name": "b.png", "width": 120, "height": 100}],
        "categories": [{"id": 7, "name": "dog"}, {"id": 1, "name": "ant"},
                       {"id": 3, "name": "cat"}],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 7, "bbox": [10, 10, 40, 30], "area": 900.0,
             "iscrowd": 0},
            {"id": 2, "image_id": 5, "category_id": 1, "bbox": [60, 50, 50, 40],
             "area": 1500.0, "iscrowd": 0},
            {"id": 3, "image_id": 5, "category_id": 7, "bbox": [0, 60, 50, 40],
             "area": 2000.0, "iscrowd": 1},
            {"id": 4, "image_id": 2, "category_id": 3, "bbox": [5, 5, 20, 20], "area": 300.0,
             "iscrowd": 0},
            {"id": 5, "image_id": 2, "category_id": 7, "bbox": [70, 20, 30, 60],
             "area": 1200.0, "iscrowd": 0},
        ],
    }
    (root / "annotations.json").write_text(json.dumps(doc))
    ds = read_coco(root)
    model_classes = ["cat", "dog", "ant", "cow"]  # a model's own order, one class extra
    cat_of = {"dog": 7, "ant": 1, "cat": 3}
    # (image id, class name, xywh, score): hits, a near miss, a detection on the crowd region
    # (ignored by COCOeval), a false positive, and one of a class the data does not have.
    raw = [(5, "dog", [11, 9, 40, 31], 0.9), (5, "dog", [2, 62, 45, 36], 0.8),
           (5, "ant", [58, 52, 48, 40], 0.7), (5, "ant", [0, 0, 20, 20], 0.6),
           (2, "cat", [6, 4, 19, 22], 0.95), (2, "dog", [72, 25, 25, 40], 0.5),
           (2, "cow", [1, 1, 10, 10], 0.99)]
    dets = []
    for s in ds.samples:
        mine = [r for r in raw if r[0] == int(s.image_id)]
        dets.append({
            "boxes": np.asarray([[x, y, x + w, y + h] for _, _, (x, y, w, h), _ in mine],
                                np.float64).reshape(-1, 4),
            "scores": np.asarray([r[3] for r in mine], np.float64),
            "classes": np.asarray([model_classes.index(r[1]) for r in mine], np.int64),
        })
    ours = cli_train.evaluate_detections(ds, dets, model_classes)
    results = [{"image_id": i, "category_id": cat_of[c], "bbox": b, "score": sc}
               for i, c, b, sc in raw if c in cat_of]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = coco.COCO()
        gt.dataset = json.loads(json.dumps(doc))
        gt.createIndex()
        ev = cocoeval.COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # Same float64 operations on both sides, boxes given as integers (x2 - x1 exact).
    np.testing.assert_allclose(list(ours["coco"].values()), ev.stats, rtol=0, atol=1e-12)
    assert set(ours["voc"]["AP_per_class"]) == {"dog", "ant", "cat"}  # no AP for "cow"
    assert ours["ground_truth"] == {"ant": 1, "cat": 1, "dog": 2}
