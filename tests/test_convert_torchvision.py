"""``npfrcnn convert --from torchvision`` on real-layout files, and inference without torch.

Files are written by torch itself (``torch.save``, ``safetensors``) from seeded random-weight
torchvision models (``tests/tv_models.py``); the converted tensors are checked against the torch
tensors with the documented transposes, and the converted model's detections against
torchvision's (``test_torchvision_parity.py`` checks every stage).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

import tv_models  # noqa: E402

from npfrcnn import FasterRCNN  # noqa: E402
from npfrcnn.cli import main  # noqa: E402
from npfrcnn.config import PROFILES, FPNConfig, config_from_json  # noqa: E402
from npfrcnn.weights import read  # noqa: E402
from npfrcnn.weights.coco_names import TORCHVISION_COCO_NAMES  # noqa: E402
from npfrcnn.weights.convert_torchvision import torchvision_to_hdf5  # noqa: E402
from npfrcnn.weights.hdf5 import WeightsError  # noqa: E402
from npfrcnn.weights.torch_checkpoint import CheckpointError  # noqa: E402
from npfrcnn.weights.torchvision_names import torch_shapes  # noqa: E402

SIZE = {"min_size": 160, "max_size": 256}


@pytest.fixture(scope="module")
def v1():
    torch.set_num_threads(2)
    return tv_models.build("r50-frozen0", small=True, seed=5)


def _convert(tmp_path, src, profile="torchvision-r50-fpn", **kw):
    out = tmp_path / "out.h5"
    torchvision_to_hdf5(src, out, profile, changes=SIZE, **kw)
    return read(out)


def test_bare_state_dict_layouts(tmp_path, v1):
    sd = v1.state_dict()
    torch.save(sd, tmp_path / "m.pth")
    wf = _convert(tmp_path, tmp_path / "m.pth")
    cfg = wf.config
    assert isinstance(cfg, FPNConfig)
    assert cfg.units_per_block == (1, 1, 1, 1) and cfg.num_classes == 5
    assert cfg.body_norm == "frozen_bn" and cfg.bn_eps == 0.0 and cfg.fpn_channels == 32
    t = wf.tensors
    w = sd["backbone.body.layer1.0.conv2.weight"].numpy()
    np.testing.assert_array_equal(t["backbone.body.layer1.0.conv2.weight"], w.transpose(2, 3, 1, 0))
    lin = sd["roi_heads.box_predictor.cls_score.weight"].numpy()
    np.testing.assert_array_equal(t["roi_heads.box_predictor.cls_score.weight"], lin.T)
    # fc6: torch flattens [C, 7, 7]; npfrcnn [7, 7, C]. Row (h, w, c) of ours = column c*49+h*7+w.
    fc6 = sd["roi_heads.box_head.fc6.weight"].numpy()
    ours = t["roi_heads.box_head.fc6.weight"]
    c = 32
    for h, ww, ch in [(0, 0, 0), (3, 5, 7), (6, 6, 31)]:
        np.testing.assert_array_equal(ours[(h * 7 + ww) * c + ch], fc6[:, ch * 49 + h * 7 + ww])
    assert wf.provenance["source_sha256"] and wf.provenance["source_format"] == "torch-zip"


def test_training_checkpoint_and_safetensors(tmp_path, v1):
    from safetensors.torch import save_file

    sd = v1.state_dict()
    opt = torch.optim.SGD(v1.parameters(), lr=0.01, momentum=0.9)
    torch.save({"model": sd, "optimizer": opt.state_dict(), "epoch": 3}, tmp_path / "t.pth")
    a = _convert(tmp_path, tmp_path / "t.pth")
    assert a.provenance["container"] == "model"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "m.safetensors"))
    b = _convert(tmp_path, tmp_path / "m.safetensors")
    assert b.provenance["source_format"] == "safetensors"
    assert a.tensors.keys() == b.tensors.keys()
    for k in a.tensors:
        np.testing.assert_array_equal(a.tensors[k], b.tensors[k], err_msg=k)


def test_legacy_keys_and_dataparallel_prefix(tmp_path, v1):
    sd = v1.state_dict()
    old = {}
    for k, v in sd.items():
        k2 = k.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
        for blk in ("inner_blocks", "layer_blocks"):
            for i in range(4):
                k2 = k2.replace(f"backbone.fpn.{blk}.{i}.0.", f"backbone.fpn.{blk}.{i}.")
        old["module." + k2] = v
    assert "module.rpn.head.conv.weight" in old
    torch.save(old, tmp_path / "old.pth")
    wf = _convert(tmp_path, tmp_path / "old.pth")
    ref = _convert(tmp_path, _save(tmp_path, sd))
    for k in ref.tensors:
        np.testing.assert_array_equal(wf.tensors[k], ref.tensors[k], err_msg=k)


def _save(tmp_path, sd, name="ref.pth"):
    torch.save(sd, tmp_path / name)
    return tmp_path / name


def test_other_profile_suggested_and_all_problems_reported(tmp_path, v1):
    src = _save(tmp_path, v1.state_dict())
    with pytest.raises(WeightsError) as e:
        torchvision_to_hdf5(src, tmp_path / "x.h5", "torchvision-r50-fpn-v2", changes=SIZE)
    assert "pass --profile torchvision-r50-fpn" in str(e.value)
    assert len(e.value.problems) > 20  # every missing and unexpected key, at once
    assert not (tmp_path / "x.h5").exists()
    sd = v1.state_dict()
    sd["roi_heads.box_head.fc7.weight"] = sd["roi_heads.box_head.fc7.weight"][:, :10]
    del sd["rpn.head.bbox_pred.bias"]
    sd["roi_heads.mask_head.weight"] = torch.zeros(3)
    with pytest.raises(WeightsError) as e:
        torchvision_to_hdf5(_save(tmp_path, sd, "bad.pth"), tmp_path / "x.h5",
                            "torchvision-r50-fpn", changes=SIZE)
    text = str(e.value)
    for needle in ("fc7.weight' has shape", "missing key 'rpn.head.bbox_pred.bias'",
                   "unexpected key 'roi_heads.mask_head.weight'"):
        assert needle in text


def test_classification_state_dict_is_not_a_detector(tmp_path):
    from torchvision.models import resnet

    src = _save(tmp_path, resnet.ResNet(resnet.Bottleneck, [1, 1, 1, 1]).state_dict())
    with pytest.raises(WeightsError, match="does not look like a torchvision Faster R-CNN"):
        torchvision_to_hdf5(src, tmp_path / "x.h5", "torchvision-r50-fpn")


def test_forbidden_global_refused_nothing_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": Evil()}, tmp_path / "evil.pth")
    assert main(["convert", str(tmp_path / "evil.pth"), str(tmp_path / "e.h5"),
                 "--profile", "torchvision-r50-fpn"]) == 2
    assert not marker.exists() and not (tmp_path / "e.h5").exists()
    with pytest.raises(CheckpointError, match="system"):
        torchvision_to_hdf5(tmp_path / "evil.pth", tmp_path / "e.h5", "torchvision-r50-fpn")


def test_truncated_zip(tmp_path, v1, capsys):
    src = _save(tmp_path, v1.state_dict())
    data = src.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    assert main(["convert", str(cut), str(tmp_path / "c.h5"), "--profile",
                 "torchvision-r50-fpn"]) == 2
    assert "cannot convert" in capsys.readouterr().err
    assert zipfile.is_zipfile(src)


def test_cli_convert_classes_and_knobs(tmp_path, v1):
    src = _save(tmp_path, v1.state_dict())
    names = ["__background__", "a", "b", "c", "d", "e"]
    (tmp_path / "classes.json").write_text(json.dumps(names))
    out = tmp_path / "m.h5"
    assert main(["convert", str(src), str(out), "--profile", "torchvision-r50-fpn",
                 "--classes", str(tmp_path / "classes.json"), "--set", "min_size=160",
                 "--set", "max_size=256", "--set", "box_score_thresh=0.3",
                 "--bn-eps", "1e-5"]) == 0
    wf = read(out)
    assert wf.classes == names[1:]
    assert wf.config.box_score_thresh == 0.3 and wf.config.bn_eps == 1e-5
    assert main(["convert", str(src), str(tmp_path / "n.h5"), "--profile",
                 "torchvision-r50-fpn", "--set", "no_such_knob=1"]) == 2


def test_coco_names_are_torchvisions():
    from torchvision.models._meta import _COCO_CATEGORIES

    assert list(TORCHVISION_COCO_NAMES) == list(_COCO_CATEGORIES[1:])


def test_profiles_round_trip_and_match_torchvision_defaults():
    from torchvision.models.detection import faster_rcnn as frc

    for name in ("torchvision-r50-fpn", "torchvision-r50-fpn-v2", "torchvision-r101-fpn"):
        cfg = PROFILES[name]
        assert config_from_json(cfg.to_json()) == cfg
    m = frc.fasterrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None)
    keys = {k for k in m.state_dict() if not k.endswith("num_batches_tracked")}
    assert keys == set(torch_shapes(PROFILES["torchvision-r50-fpn-v2"]))
    shapes = torch_shapes(PROFILES["torchvision-r50-fpn-v2"])
    for k, v in m.state_dict().items():
        if k in shapes:
            assert tuple(v.shape) == shapes[k], k
    cfg = PROFILES["torchvision-r50-fpn"]
    assert (m.transform.min_size[-1], m.transform.max_size) == (cfg.min_size, cfg.max_size)
    assert m.rpn._pre_nms_top_n["testing"] == cfg.rpn_pre_nms_top_n
    assert m.rpn._post_nms_top_n["testing"] == cfg.rpn_post_nms_top_n
    assert (m.rpn.nms_thresh, m.rpn.score_thresh, m.rpn.min_size) == (
        cfg.rpn_nms_thresh, cfg.rpn_score_thresh, cfg.rpn_min_size)
    rh = m.roi_heads
    assert (rh.score_thresh, rh.nms_thresh, rh.detections_per_img) == (
        cfg.box_score_thresh, cfg.box_nms_thresh, cfg.box_detections_per_img)
    assert tuple(rh.box_coder.weights) == cfg.bbox_reg_weights


def test_full_size_r101_keys_and_shapes():
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.models.detection.faster_rcnn import FasterRCNN as TVFasterRCNN

    m = TVFasterRCNN(resnet_fpn_backbone(backbone_name="resnet101", weights=None), 91)
    shapes = torch_shapes(PROFILES["torchvision-r101-fpn"])
    sd = m.state_dict()
    assert set(sd) == set(shapes)
    for k, v in sd.items():
        assert tuple(v.shape) == shapes[k], k


_NO_TORCH = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch.") or name.startswith("torchvision"):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, Block())
from npfrcnn.cli import main
rc = main(["convert", sys.argv[1], sys.argv[2], "--profile", "torchvision-r50-fpn",
           "--set", "min_size=160", "--set", "max_size=256"])
assert rc == 0, rc
rc = main(["detect", sys.argv[3], "--weights", sys.argv[2], "--output", sys.argv[4], "-q"])
assert rc == 0, rc
assert not any(m == "torch" or m.startswith(("torch.", "torchvision")) for m in sys.modules)
print("NO-TORCH-OK")
"""


def test_convert_and_detect_without_torch(tmp_path, v1):
    from PIL import Image
    from test_torchvision_parity import synthetic

    src = _save(tmp_path, v1.state_dict())
    img = synthetic(150, 220, 1)
    Image.fromarray(img).save(tmp_path / "img.png")
    script = tmp_path / "no_torch.py"
    script.write_text(_NO_TORCH)
    out = tmp_path / "dets.jsonl"
    r = subprocess.run(
        [sys.executable, str(script), str(src), str(tmp_path / "m.h5"),
         str(tmp_path / "img.png"), str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert "NO-TORCH-OK" in r.stdout, r.stderr[-3000:]
    # The torch-free run found what torchvision finds.
    rec = json.loads(out.read_text().splitlines()[0])
    with torch.no_grad():
        ref = v1([tv_models.to_tensor(img)])[0]
    assert len(rec["detections"]) == len(ref["labels"])
    model = FasterRCNN.from_hdf5(tmp_path / "m.h5")
    assert model.config.name == "torchvision-r50-fpn"


def test_old_format_weights_still_load():
    demo = Path(__file__).resolve().parents[1] / "weights" / "demo.h5"
    if not demo.is_file():
        pytest.skip("weights/demo.h5 is absent")
    wf = read(demo)
    assert wf.format_version == 1  # written before format 2; still read
    FasterRCNN(wf.config, wf.classes, wf.tensors)


def test_cli_detect_info_eval_with_a_torchvision_profile(tmp_path, capsys):
    """detect, info and eval work unchanged on a converted torchvision model."""
    assert main(["synth", "--out", str(tmp_path / "data"), "--n", "3", "--seed", "1"]) == 0
    ann = json.loads((tmp_path / "data" / "annotations.json").read_text())
    names = [c["name"] for c in sorted(ann["categories"], key=lambda c: c["id"])]
    tv = tv_models.build("r50-frozen0", small=True, seed=2)
    with torch.no_grad():
        tv.roi_heads.box_predictor.cls_score = torch.nn.Linear(64, len(names) + 1)
        tv.roi_heads.box_predictor.bbox_pred = torch.nn.Linear(64, 4 * (len(names) + 1))
    src = _save(tmp_path, tv.state_dict())
    (tmp_path / "classes.json").write_text(json.dumps(names))
    out = tmp_path / "m.h5"
    assert main(["convert", str(src), str(out), "--profile", "torchvision-r50-fpn",
                 "--classes", str(tmp_path / "classes.json"), "--set", "min_size=160",
                 "--set", "max_size=256"]) == 0
    assert main(["info", str(out)]) == 0
    assert "torchvision-r50-fpn" in capsys.readouterr().out
    img = next((tmp_path / "data").rglob("*.jpg"))
    assert main(["detect", str(img), "--weights", str(out), "--output",
                 str(tmp_path / "d.jsonl"), "-q"]) == 0
    rec = json.loads((tmp_path / "d.jsonl").read_text().splitlines()[0])
    assert all(d["label"] in names for d in rec["detections"])
    assert main(["eval", "--weights", str(out), "--data", str(tmp_path / "data"), "--format",
                 "coco", "--json", str(tmp_path / "metrics.json")]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["images"] == 3 and "coco" in metrics
