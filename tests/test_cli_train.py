"""The synth / train / eval / demo subcommands, and ``detect`` falling back to the demo model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from npfrcnn import cli_train
from npfrcnn.cli import main
from npfrcnn.data import read_coco, read_wheat


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A synthetic set (both layouts) and a model trained on it for 4 steps via the CLI."""
    pytest.importorskip("tensorflow")
    root = tmp_path_factory.mktemp("cli")
    data = root / "data"
    assert main(["synth", "--out", str(data), "--n", "4", "--seed", "9", "--size", "96"]) == 0
    out = root / "m.h5"
    code = main([
        "train", "--data", str(data), "--format", "wheat", "--classes-from-source",
        "--out", str(out), "--steps", "4", "--width", "8", "--checkpoint-every", "2",
        "--output-stride", "8", "--anchor-border", "64",  # the demo model's settings
    ])
    assert code == 0
    return data, out


def test_synth_writes_both_layouts(trained: tuple[Path, Path]) -> None:
    data, _ = trained
    assert len(read_coco(data)) == 4
    assert len(read_wheat(data, classes_from_source=True)) == 4


def test_train_records_provenance_and_resumes(trained: tuple[Path, Path]) -> None:
    from npfrcnn.weights.hdf5 import read

    data, out = trained
    prov = read(out).provenance
    assert prov["steps"] == 4 and prov["data_seed"] == 9 and prov["data_format"] == "wheat"
    assert prov["command"].startswith("npfrcnn train ")
    assert read(out).config.output_stride == 8
    assert prov["train_config"]["anchor_border"] == 64
    assert Path(str(out) + ".ckpt.npz").is_file()
    # Resuming a finished run does no step and re-exports the same weights.
    before = read(out).tensors
    code = main(["train", "--data", str(data), "--format", "wheat", "--classes-from-source",
                 "--out", str(out), "--steps", "4", "--width", "8", "--output-stride", "8",
                 "--anchor-border", "64", "--resume"])
    assert code == 0
    after = read(out).tensors
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])


def test_train_anchor_options_reach_the_model_and_guard_resume(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from npfrcnn.weights.hdf5 import read

    data, _ = trained
    out = tmp_path / "a.h5"
    common = ["train", "--data", str(data), "--format", "wheat", "--classes-from-source",
              "--out", str(out), "--steps", "2", "--width", "8", "--checkpoint-every", "1"]
    assert main([*common, "--anchor-base", "24", "--anchor-scales", "0.5,1",
                 "--anchor-ratios", "1"]) == 0
    config = read(out).config
    assert config.anchor_base_size == 24.0
    assert config.anchor_scales == (0.5, 1.0)
    assert config.anchor_ratios == (1.0,)
    assert config.num_anchors == 2
    # the RPN was built for 2 anchors per position: its class conv has 2 x 2 outputs
    assert read(out).tensors["rpn/cls_conv/kernel"].shape[-1] == 4
    # resuming with other anchors would load weights of another shape: refused, naming both
    capsys.readouterr()
    code = main([*common, "--anchor-base", "32", "--anchor-scales", "0.5,1",
                 "--anchor-ratios", "1", "--resume"])
    assert code == 2
    err = capsys.readouterr().err
    assert "another model configuration" in err and "anchor_base_size was 24.0, now 32.0" in err


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--anchor-scales", "0.5,0,2", "expected a positive number, got '0'"),
        ("--anchor-ratios", "1,x", "expected a number, got 'x'"),
        ("--anchor-base", "-8", "expected a positive number, got '-8'"),
        ("--anchor-scales", ",", "expected numbers separated by commas"),
    ],
)
def test_train_rejects_bad_anchor_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, message: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--data", str(tmp_path), "--format", "wheat", "--out",
              str(tmp_path / "m.h5"), flag, value])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_train_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tensorflow")
    code = main(["train", "--data", str(tmp_path), "--format", "coco", "--out",
                 str(tmp_path / "m.h5")])
    assert code == 2
    assert "annotations.json' does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["train", "--data", str(tmp_path), "--format", "coco", "--out",
              str(tmp_path / "m.h5"), "--profile", "luminoth"])
    assert exc.value.code == 2
    assert "only 'workshop'" in capsys.readouterr().err


def test_eval_prints_and_writes_json(trained: tuple[Path, Path], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    data, model = trained
    js = tmp_path / "r.json"
    assert main(["eval", "--weights", str(model), "--data", str(data), "--format", "coco",
                 "--json", str(js)]) == 0
    printed = capsys.readouterr().out
    assert "COCO bbox metrics" in printed and "Pascal VOC AP" in printed
    assert "AP50" in printed and "mean (mAP)" in printed
    result = json.loads(js.read_text())
    assert result["images"] == 4 and result["engine"] == "npfrcnn-cpu"
    assert set(result["coco"]) >= {"AP", "AP50", "AP75"}
    assert set(result["voc"]) == {"mAP", "AP_per_class"}
    for v in result["coco"].values():
        assert v == -1 or 0 <= v <= 1
    # The TF reference network on the same weights and images gives the same numbers: they are
    # the same network, so only float32 differences in scores and boxes remain (0.005 is the
    # issue's bar).
    js_tf = tmp_path / "tf.json"
    assert main(["eval", "--weights", str(model), "--data", str(data), "--format", "coco",
                 "--json", str(js_tf), "--tf"]) == 0
    tf_result = json.loads(js_tf.read_text())
    assert tf_result["engine"] == "tensorflow"
    for k, v in result["coco"].items():
        assert abs(tf_result["coco"][k] - v) <= 0.005, k


def test_eval_matches_classes_by_name(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """The model was trained on the wheat layout (classes sorted by name); the COCO layout of
    the same images orders its classes by category id. Evaluating on either layout must give
    the same numbers: classes are matched by name, not by index."""
    data, model = trained
    results = []
    for fmt in (["--format", "coco"], ["--format", "wheat", "--classes-from-source"]):
        js = tmp_path / f"{fmt[1]}.json"
        assert main(["eval", "--weights", str(model), "--data", str(data), *fmt,
                     "--json", str(js)]) == 0
        results.append(json.loads(js.read_text()))
    assert results[0]["coco"] == results[1]["coco"]
    assert results[0]["voc"] == results[1]["voc"]


def test_eval_rejects_foreign_classes(trained: tuple[Path, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    data, model = trained
    # Single-class wheat reading of the same images: class "wheat" is not a model class.
    assert main(["eval", "--weights", str(model), "--data", str(data), "--format",
                 "wheat"]) == 2
    err = capsys.readouterr().err
    assert "['wheat'] are not classes of" in err and "Traceback" not in err


def test_eval_missing_data(tmp_path: Path, trained: tuple[Path, Path],
                           capsys: pytest.CaptureFixture[str]) -> None:
    _, model = trained
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--weights", str(model), "--data", str(tmp_path / "none"),
              "--format", "wheat"])
    assert exc.value.code == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["eval", "--weights", str(model), "--data", str(tmp_path),
                 "--format", "wheat"]) == 2
    assert "train.csv" in capsys.readouterr().err


def test_demo_writes_images_and_json(trained: tuple[Path, Path], tmp_path: Path) -> None:
    _, model = trained
    out = tmp_path / "demo"
    assert main(["demo", "--weights", str(model), "--out", str(out), "--n", "2",
                 "--min-prob", "0"]) == 0
    assert (out / "demo_0.png").is_file() and (out / "demo_1.png").is_file()
    doc = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
    assert [Path(d["path"]).name for d in doc] == ["demo_0.png", "demo_1.png"]
    for d in doc:
        for det in d["detections"]:
            assert len(det["box"]) == 4 and 0 <= det["score"] <= 1


def test_detect_uses_default_weights(trained: tuple[Path, Path], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    data, model = trained
    monkeypatch.setattr(cli_train, "default_weights", lambda: str(model))
    image = sorted((data / "train").glob("*.jpg"))[0]
    assert main(["detect", str(image)]) == 0
    captured = capsys.readouterr()
    assert "using the shipped demo model" in captured.err
    line = json.loads(captured.out.splitlines()[0])
    assert "detections" in line
    monkeypatch.setattr(cli_train, "default_weights", lambda: None)
    assert main(["detect", str(image)]) == 2
    assert "--weights is required" in capsys.readouterr().err


def test_default_weights_points_at_the_shipped_file() -> None:
    path = cli_train.default_weights()
    assert path is not None, "weights/demo.h5 is shipped: missing is a packaging bug"
    from npfrcnn.weights.hdf5 import read

    wf = read(path)
    assert wf.classes == ["rectangle", "ellipse", "triangle"]
    assert Path(path).stat().st_size <= 20 * 1024 * 1024
    assert wf.provenance["steps"] > 0 and "npfrcnn train" in wf.provenance["command"]


def test_shipped_model_matches_tf_on_a_synthetic_image() -> None:
    """The demo model in npfrcnn and in the TF reference network give the same detections."""
    path = cli_train.default_weights()
    assert path is not None, "weights/demo.h5 is shipped: missing is a packaging bug"
    pytest.importorskip("tensorflow")
    from npfrcnn.data import synthetic_sample
    from npfrcnn.model import FasterRCNN
    from npfrcnn.weights.hdf5 import read
    from npfrcnn.weights.tf_reference import TFReference

    wf = read(path)
    image, gt, gt_classes = synthetic_sample(2024, 0)
    dets = FasterRCNN(wf.config, wf.classes, wf.tensors).detect(image)
    ref = TFReference(wf.config, wf.tensors).run(image)
    confident = dets.scores >= 0.5
    tf_confident = ref["probs"] >= 0.5
    np.testing.assert_array_equal(dets.labels[confident], ref["labels"][tf_confident])
    # Same network in float32 on both sides; only summation order differs. The stage parity
    # tests bound head outputs at 5e-6 relative, and a delta error of that size moves a box
    # of at most 128 px (the image) by well under 1e-3 px (observed: <= 2.3e-5 px). Softmax
    # probabilities likewise agree to ~1e-6 (observed <= 3e-7).
    np.testing.assert_allclose(dets.boxes[confident], ref["boxes"][tf_confident], atol=1e-3)
    np.testing.assert_allclose(dets.scores[confident], ref["probs"][tf_confident], atol=1e-5)
    np.testing.assert_allclose(dets.scores[confident], ref["probs"][tf_confident], atol=1e-4)
    # And the demo model finds the objects of this image (a trained model, not random).
    assert confident.sum() >= len(gt)
