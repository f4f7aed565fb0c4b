"""``npfrcnn convert --from detectron2``: model-zoo pickles and ``model_final.pth``, without torch.

The state dicts are random, shaped by :func:`npfrcnn.weights.detectron2_names.torch_shapes` for
reduced configs (one block per stage, narrow layers), written the ways Detectron2's files are:
``pickle.dump`` of NumPy arrays (the model zoo's ``{"model": ..., "__author__": ...}``, every
protocol, big-endian and Fortran-order arrays), ``torch.save`` of a trainer checkpoint (the
state dict under ``"model"`` beside an SGD state after one step, scheduler states and the
iteration), and bare state dicts. Every converted tensor is checked against its source with the
documented layouts, FPN ``fc1``'s permutation against torch's own ``Linear`` on a flattened
``[1, C, 7, 7]`` input. The unsafe and broken files are refused, with nothing in them run.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from npfrcnn.cli import main
from npfrcnn.config import Detectron2Config
from npfrcnn.config.profiles.detectron2 import detectron2_profile
from npfrcnn.weights import read
from npfrcnn.weights.convert_detectron2 import (
    COCO_CLASSES,
    detectron2_to_hdf5,
    read_detectron2_weights,
    suggest_profile,
)
from npfrcnn.weights.detectron2_names import torch_shapes
from npfrcnn.weights.detectron2_pickle import PICKLE_GLOBALS, is_plain_pickle, loads
from npfrcnn.weights.hdf5 import WeightsError
from npfrcnn.weights.torch_checkpoint import CheckpointError

_FIELDS = set(Detectron2Config.__dataclass_fields__)
# Narrow layers; stem and res2 widths where the config has them as fields.
SMALL: dict[str, object] = {"width_per_group": 8, "fpn_channels": 16, "fc_dim": 32}
SMALL.update({k: v for k, v in (("stem_out_channels", 8), ("res2_out_channels", 32))
              if k in _FIELDS})
ONE = (1, 1, 1, 1)
AUTHOR = "Detectron2 Model Zoo"


def _config(profile="detectron2-r50-fpn", num_classes=3, units=ONE, **kw):
    return detectron2_profile(profile, num_classes=num_classes, units_per_block=units,
                              **{**SMALL, **kw})


def _state(config, seed=0):
    rng = np.random.default_rng(seed)
    sd = {}
    for k, shape in torch_shapes(config).items():
        a = rng.standard_normal(shape).astype(np.float32)
        sd[k] = np.abs(a) + 0.5 if k.endswith("running_var") else a
    return sd


def _dump(path, obj, protocol=pickle.DEFAULT_PROTOCOL):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return path


def _zoo(tmp_path, sd, name="model_final.pkl", protocol=pickle.DEFAULT_PROTOCOL):
    return _dump(tmp_path / name, {"model": sd, "__author__": AUTHOR}, protocol)


def _convert(tmp_path, src, profile="detectron2-r50-fpn", name="out.h5", **kw):
    out = tmp_path / name
    result = detectron2_to_hdf5(src, out, profile, **kw)
    return read(out), result


def _check_layouts(config, sd, tensors):
    """Every converted tensor against its source: OIHW -> HWIO, Linear (out, in) -> (in, out),
    FPN fc1 through torch's flatten order (checked apart, in test_fc1_matches_torch_linear)."""
    assert set(tensors) == set(torch_shapes(config))
    for k, src in sd.items():
        got = tensors[k]
        assert got.dtype == np.float32 and got.flags.c_contiguous, k
        if k == "roi_heads.box_head.fc1.weight":
            # Row (h, w, c) of ours (NHWC flatten) = column (c, h, w) of torch's (NCHW flatten).
            s, c = config.pooler_resolution, config.fpn_channels
            h, w, ch = (i.ravel() for i in np.indices((s, s, c)))
            ours, theirs = (h * s + w) * c + ch, ch * s * s + h * s + w
            np.testing.assert_array_equal(got[ours], src[:, theirs].T)
        elif src.ndim == 4:
            np.testing.assert_array_equal(got, src.transpose(2, 3, 1, 0), err_msg=k)
        elif src.ndim == 2:
            np.testing.assert_array_equal(got, src.T, err_msg=k)
        else:
            np.testing.assert_array_equal(got, src, err_msg=k)


# --- model-zoo pickles --------------------------------------------------------------------------


def test_model_zoo_pkl_fpn(tmp_path):
    config = _config()
    sd = _state(config)
    src = _zoo(tmp_path, sd)
    wf, result = _convert(tmp_path, src)
    assert wf.config == result["config"]
    assert wf.config.variant == "fpn" and wf.config.units_per_block == ONE
    assert wf.config.num_classes == 3 and wf.config.fpn_channels == 16 and wf.config.fc_dim == 32
    assert wf.classes == ["class_0", "class_1", "class_2"]
    _check_layouts(wf.config, sd, wf.tensors)
    prov = wf.provenance
    assert prov["source_format"] == "detectron2-pkl" and prov["author"] == AUTHOR
    assert prov["container"] == "model" and prov["source"] == "model_final.pkl"
    assert prov["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert "--from detectron2 --profile detectron2-r50-fpn" in prov["converter"]
    assert result["notes"] == []


def test_fc1_matches_torch_linear(tmp_path):
    """Our fc1 on the NHWC flatten == torch's Linear on the NCHW flatten (Detectron2's)."""
    torch = pytest.importorskip("torch")
    config = _config()
    sd = _state(config, seed=3)
    wf, _ = _convert(tmp_path, _zoo(tmp_path, sd))
    c, s = config.fpn_channels, config.pooler_resolution
    lin = torch.nn.Linear(c * s * s, config.fc_dim)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(sd["roi_heads.box_head.fc1.weight"]))
        lin.bias.copy_(torch.from_numpy(sd["roi_heads.box_head.fc1.bias"]))
        x = torch.randn(2, c, s, s, generator=torch.Generator().manual_seed(0))
        ref = lin(torch.flatten(x, 1)).numpy()
    nhwc = x.permute(0, 2, 3, 1).reshape(2, -1).numpy().astype(np.float64)
    ours = nhwc @ wf.tensors["roi_heads.box_head.fc1.weight"] + wf.tensors[
        "roi_heads.box_head.fc1.bias"]
    # float32 sums of 784 products of N(0, 1) numbers in two orders: |error| << 1e-3
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-3)
    fc2 = wf.tensors["roi_heads.box_head.fc2.weight"]
    np.testing.assert_array_equal(fc2, sd["roi_heads.box_head.fc2.weight"].T)


def test_c4_and_resnet50_c4(tmp_path):
    config = _config("detectron2-r101-c4")
    sd = _state(config)
    assert any(k.startswith("roi_heads.res5.0.") for k in sd)
    wf, result = _convert(tmp_path, _zoo(tmp_path, sd), "detectron2-r101-c4")
    assert wf.config.variant == "c4" and result["notes"] == []
    _check_layouts(wf.config, sd, wf.tensors)
    # Detectron2's R50-C4: no profile of its own; converts with r101-c4's, with a note.
    r50 = _config("detectron2-r101-c4", units=(3, 4, 6, 3))
    wf, result = _convert(tmp_path, _zoo(tmp_path, _state(r50), "r50c4.pkl"),
                          "detectron2-r101-c4", name="r50c4.h5")
    assert wf.config.units_per_block == (3, 4, 6, 3) and wf.config.depth == 50
    assert any("ResNet-50 C4" in n for n in result["notes"])


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_pickle_protocols_byte_orders_and_layouts(tmp_path, protocol):
    config = _config()
    sd = _state(config, seed=protocol)
    big = "backbone.bottom_up.res2.0.conv2.weight"
    fortran = "backbone.fpn_output3.weight"
    strided = "proposal_generator.rpn_head.conv.weight"
    saved = dict(sd)
    saved[big] = sd[big].astype(">f4")
    saved[fortran] = np.asfortranarray(sd[fortran])
    saved[strided] = np.ascontiguousarray(sd[strided].transpose(1, 0, 3, 2)).transpose(1, 0, 3, 2)
    saved["roi_heads.box_predictor.cls_score.bias"] = sd[
        "roi_heads.box_predictor.cls_score.bias"].astype(np.float64)
    assert not saved[strided].flags.c_contiguous and not saved[fortran].flags.c_contiguous
    model = collections.OrderedDict(saved)
    src = _dump(tmp_path / "p.pkl", {"model": model, "__author__": AUTHOR}, protocol)
    # Our reader gives what pickle.load gives, as fresh native C-contiguous arrays.
    mine = loads(src.read_bytes())
    theirs = pickle.loads(src.read_bytes(), encoding="latin1")
    assert list(mine["model"]) == list(theirs["model"])
    for k, a in theirs["model"].items():
        b = mine["model"][k]
        assert b.dtype == a.dtype.newbyteorder("=") and b.flags.c_contiguous and b.flags.owndata
        np.testing.assert_array_equal(b, a, err_msg=k)
    wf, _ = _convert(tmp_path, src)
    _check_layouts(wf.config, sd, wf.tensors)


def test_loads_matches_pickle_for_plain_data():
    obj = {
        "ints": [1, -2, 2**70], "f": 1.5, "c": complex(1, -2), "s": {1, 2}, "fs": frozenset("ab"),
        "b": b"\x00\xff", "ba": bytearray(b"xy"), "e": b"", "t": (1, ("x", None)), "u": "é",
        "od": collections.OrderedDict([("a", 1), ("b", [2])]),
        "scalars": [np.float32(1.25), np.int64(-3), np.bool_(True), np.float16(2.0)],
        "zero": np.zeros((0, 3), np.float32), "bool": np.array([True, False]),
        "u8": np.arange(5, dtype=np.uint8), "c64": np.array([1 + 2j], np.complex64),
        "i2be": np.array([1, -2], ">i2"), "0d": np.array(3.5),
    }
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        data = pickle.dumps(obj, protocol=protocol)
        assert is_plain_pickle(data[:16]), protocol
        mine, theirs = loads(data), pickle.loads(data)
        assert mine.keys() == theirs.keys()
        for k in theirs:
            a, b = theirs[k], mine[k]
            if isinstance(a, np.ndarray):
                assert b.dtype == a.dtype.newbyteorder("=") and b.shape == a.shape, k
                np.testing.assert_array_equal(b, a)
            elif k == "scalars":
                assert [type(x) for x in b] == [type(x) for x in a] and b == a
            else:
                assert b == a and (type(b) is type(a) or isinstance(a, dict)), k


def test_python2_pickle(tmp_path):
    """A protocol-2 pickle as Python 2 wrote it: ``__builtin__``, str data, int align flags."""
    f4 = np.arange(6, dtype="<f4").tobytes().decode("latin-1")

    def s(text):  # Python 2's BINSTRING of a str
        raw = text.encode("latin-1")
        return b"U" + bytes([len(raw)]) + raw if len(raw) < 256 else (
            b"T" + len(raw).to_bytes(4, "little") + raw)

    arr = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + s("b")
           + b"\x87R(K\x01K\x02K\x03\x86cnumpy\ndtype\n" + s("f4") + b"K\x00K\x01\x87R"
           + b"(K\x03" + s("<") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89" + s(f4)
           + b"tb")
    data = (b"\x80\x02}(" + s("model") + b"}" + s("w") + arr + b"s" + s("__author__")
            + s("py2") + s("ids") + b"c__builtin__\nset\n]K\x01a\x85R" + b"u.")
    got = loads(data)
    np.testing.assert_array_equal(got["model"]["w"], np.arange(6, dtype="f4").reshape(2, 3))
    assert got["ids"] == {1} and got["__author__"] == "py2"
    assert pickle.loads(data, encoding="latin1")["__author__"] == "py2"


def test_bare_state_dicts_and_content_not_extension(tmp_path):
    config = _config()
    sd = _state(config)
    bare = _dump(tmp_path / "bare.pth", sd)  # a pickle, whatever its name says
    wf, result = _convert(tmp_path, bare)
    assert wf.provenance["source_format"] == "detectron2-pkl"
    assert "container" not in wf.provenance and "author" not in wf.provenance
    _check_layouts(wf.config, sd, wf.tensors)
    nameless = _dump(tmp_path / "m.pkl", {"model": sd})  # no __author__: read, with a note
    _, result = _convert(tmp_path, nameless, name="n.h5")
    assert any("no __author__" in n for n in result["notes"])


# --- Detectron2 trainer checkpoints (torch.save) ---------------------------------------------


def _trainer_checkpoint(torch, sd, *, prefix="", new_layout=False):
    """What Detectron2's DefaultTrainer saves as model_final.pth (fvcore Checkpointer.save)."""
    params = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in sd.items()
              if not k.endswith(("running_mean", "running_var"))}
    opt = torch.optim.SGD(params.values(), lr=0.02, momentum=0.9, weight_decay=1e-4)
    sum((p * p).sum() for p in params.values()).backward()
    opt.step()  # momentum buffers exist after one step
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [10, 20], 0.1)
    model = collections.OrderedDict(
        (prefix + k, params[k].detach() if k in params else torch.from_numpy(v))
        for k, v in sd.items()
    )
    after = {k: params[k].detach().numpy().copy() if k in params else v for k, v in sd.items()}
    if new_layout:  # detectron2 0.6: DefaultTrainer.state_dict(), AMPTrainer's grad scaler
        ckpt = {"model": model, "trainer": {
            "iteration": 89999,
            "hooks": {"LRScheduler": {"base_lrs": [0.02], "last_epoch": 90000}},
            "_trainer": {"iteration": 89999, "optimizer": opt.state_dict(), "grad_scaler": {
                "scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                "growth_interval": 2000, "_growth_tracker": 0}},
        }, "iteration": 89999}
    else:  # detectron2 0.1-0.2: optimizer and scheduler beside the model
        ckpt = {"model": model, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "iteration": 89999}
    return ckpt, after


@pytest.mark.parametrize("new_layout", [False, True])
def test_model_final_pth(tmp_path, new_layout):
    torch = pytest.importorskip("torch")
    config = _config()
    ckpt, after = _trainer_checkpoint(torch, _state(config), new_layout=new_layout)
    torch.save(ckpt, tmp_path / "model_final.pth")
    wf, result = _convert(tmp_path, tmp_path / "model_final.pth")
    assert wf.provenance["source_format"] == "torch-zip" and wf.provenance["container"] == "model"
    _check_layouts(wf.config, after, wf.tensors)
    assert result["notes"] == []


def test_pth_ddp_prefix_legacy_format_and_extras(tmp_path):
    torch = pytest.importorskip("torch")
    config = _config()
    sd = _state(config)
    ckpt, after = _trainer_checkpoint(torch, sd, prefix="module.")
    ckpt["model"]["module.pixel_mean"] = torch.tensor([103.53, 116.28, 123.675]).view(3, 1, 1)
    ckpt["model"]["module.pixel_std"] = torch.tensor([57.375, 57.12, 58.395]).view(3, 1, 1)
    ckpt["model"]["module.backbone.bottom_up.res2.0.conv1.norm.num_batches_tracked"] = (
        torch.tensor(7))
    ckpt["model"]["module.proposal_generator.anchor_generator.cell_anchors.0"] = torch.zeros(3, 4)
    torch.save(ckpt, tmp_path / "old.pkl", _use_new_zipfile_serialization=False)  # not a pickle
    wf, result = _convert(tmp_path, tmp_path / "old.pkl")
    assert wf.provenance["source_format"] == "torch-legacy"
    _check_layouts(wf.config, after, wf.tensors)
    notes = "\n".join(result["notes"])
    assert "'module.' prefix" in notes and "num_batches_tracked" in notes
    assert "cell_anchors.0" in notes
    # pixel_mean agrees with the config; pixel_std does not: the note says how to use the file's.
    assert "pixel_mean" not in notes.replace("ignored pixel_mean", "")
    assert "--set pixel_std=[57.375,57.12,58.395]" in notes
    assert len(wf.provenance["dropped"]) == 4


def test_reads_without_torch(tmp_path):
    """The whole conversion, pickle and torch zip alike, with torch unimportable."""
    torch = pytest.importorskip("torch")
    config = _config()
    sd = _state(config)
    _zoo(tmp_path, sd)
    ckpt, _ = _trainer_checkpoint(torch, sd, new_layout=True)
    torch.save(ckpt, tmp_path / "model_final.pth")
    script = tmp_path / "no_torch.py"
    script.write_text(_NO_TORCH)
    r = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True,
                       text=True, timeout=300)
    assert "NO-TORCH-OK" in r.stdout, r.stderr[-3000:]
    a, b = read(tmp_path / "a.h5"), read(tmp_path / "b.h5")
    assert a.config == b.config and a.tensors.keys() == b.tensors.keys()


_NO_TORCH = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith(("torch.", "torchvision")):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, Block())
from npfrcnn.cli import main
d = sys.argv[1]
assert main(["convert", d + "/model_final.pkl", d + "/a.h5", "--profile",
             "detectron2-r50-fpn"]) == 0
assert main(["convert", d + "/model_final.pth", d + "/b.h5", "--from", "detectron2",
             "--profile", "detectron2-r50-fpn"]) == 0
assert not any(m == "torch" or m.startswith(("torch.", "torchvision")) for m in sys.modules)
print("NO-TORCH-OK")
"""


# --- CLI ----------------------------------------------------------------------------------------


def test_cli_convert_classes_and_knobs(tmp_path, capsys):
    src = _zoo(tmp_path, _state(_config()))
    (tmp_path / "classes.json").write_text(json.dumps(["cat", "dog", "bird"]))
    out = tmp_path / "m.h5"
    assert main(["convert", str(src), str(out), "--profile", "detectron2-r50-fpn",
                 "--classes", str(tmp_path / "classes.json"), "--set", "score_thresh_test=0.3",
                 "--set", "min_size_test=600", "--bn-eps", "1e-4"]) == 0
    err = capsys.readouterr().err
    assert "detectron2-r50-fpn" in err and "3 classes" in err and "npfrcnn info" in err
    wf = read(out)
    assert wf.classes == ["cat", "dog", "bird"]
    assert wf.config.score_thresh_test == 0.3 and wf.config.min_size_test == 600
    assert wf.config.bn_eps == 1e-4
    assert main(["convert", str(src), str(tmp_path / "x.h5"), "--from", "detectron2",
                 "--profile", "detectron2-r50-fpn", "--set", "no_such_knob=1"]) == 2
    assert "no_such_knob" in capsys.readouterr().err
    assert main(["convert", str(src), str(tmp_path / "x.h5"), "--profile",
                 "detectron2-r50-fpn", "--set", "variant=\"c4\""]) == 2
    assert main(["convert", str(src), str(tmp_path / "x.h5"), "--from", "detectron2",
                 "--profile", "torchvision-r50-fpn"]) == 2
    assert "not a Detectron2 profile" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["convert", str(src), str(tmp_path / "x.h5"), "--from", "detectron2"])
    assert e.value.code == 2 and "needs --profile" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()


def test_classes_file_of_the_wrong_length(tmp_path, capsys):
    src = _zoo(tmp_path, _state(_config()))
    bad = tmp_path / "classes.json"
    bad.write_text(json.dumps(["a", "b", "c", "__background__"]))
    with pytest.raises(ValueError, match="has 4 names but the weights have 3 classes"):
        detectron2_to_hdf5(src, tmp_path / "x.h5", "detectron2-r50-fpn", classes_json_path=bad)
    assert main(["convert", str(src), str(tmp_path / "x.h5"), "--profile",
                 "detectron2-r50-fpn", "--classes", str(bad)]) == 2
    assert "without a background entry" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()


def test_coco_80_classes_by_default(tmp_path):
    wf, _ = _convert(tmp_path, _zoo(tmp_path, _state(_config(num_classes=80))))
    assert wf.classes == list(COCO_CLASSES)
    assert len(COCO_CLASSES) == 80 and "N/A" not in COCO_CLASSES
    assert (COCO_CLASSES[0], COCO_CLASSES[56], COCO_CLASSES[79]) == (
        "person", "chair", "toothbrush")
    meta = Path("/work/d2src/detectron2/data/datasets/builtin_meta.py")
    if meta.is_file():  # Detectron2's own list, where its source is at hand
        import ast

        text = meta.read_text()
        start = text.index("COCO_CATEGORIES = [") + len("COCO_CATEGORIES = ")
        cats = ast.literal_eval(text[start : text.index("]\n", start) + 1])
        assert list(COCO_CLASSES) == [c["name"] for c in cats if c["isthing"] == 1]


# --- wrong profile, wrong keys ----------------------------------------------------------------


def test_wrong_profile_suggests_the_one_that_fits(tmp_path):
    r50 = _state(_config(units=(3, 4, 6, 3)))  # a real R50-FPN's block counts
    src = _zoo(tmp_path, r50)
    for profile in ("detectron2-r101-c4", "detectron2-r101-fpn"):
        with pytest.raises(WeightsError) as e:
            detectron2_to_hdf5(src, tmp_path / "x.h5", profile)
        assert "these are detectron2-r50-fpn weights: pass --profile detectron2-r50-fpn" in str(
            e.value)
    assert "ResNet-101" in str(e.value)
    c4 = _zoo(tmp_path, _state(_config("detectron2-r101-c4")), "c4.pkl")
    with pytest.raises(WeightsError, match="these are detectron2-r101-c4 weights"):
        detectron2_to_hdf5(c4, tmp_path / "x.h5", "detectron2-r50-fpn")
    assert suggest_profile(list(_state(_config(units=(3, 4, 23, 3))))) == "detectron2-r101-fpn"
    assert suggest_profile(["backbone.body.layer1.0.conv1.weight"]) is None
    assert not (tmp_path / "x.h5").exists()
    with pytest.raises(ValueError, match="unknown Detectron2 profile"):
        detectron2_to_hdf5(src, tmp_path / "x.h5", "detectron2-x152")


def test_missing_extra_and_misshaped_keys_reported_at_once(tmp_path):
    sd = _state(_config())
    del sd["proposal_generator.rpn_head.anchor_deltas.bias"]
    sd["roi_heads.mask_head.predictor.weight"] = np.zeros((3, 8, 1, 1), np.float32)
    sd["backbone.fpn_output4.weight"] = sd["backbone.fpn_output4.weight"][:, :, :1]
    sd["roi_heads.box_head.fc2.bias"] = sd["roi_heads.box_head.fc2.bias"].astype(np.int32)
    sd["pixel_mean"] = np.zeros((3, 1, 1), np.float32)  # benign: tolerated, not a problem
    with pytest.raises(WeightsError) as e:
        detectron2_to_hdf5(_zoo(tmp_path, sd), tmp_path / "x.h5", "detectron2-r50-fpn")
    text = str(e.value)
    for needle in ("missing key 'proposal_generator.rpn_head.anchor_deltas.bias'",
                   "unexpected key 'roi_heads.mask_head.predictor.weight'",
                   "'backbone.fpn_output4.weight' has shape [16, 16, 1, 3]",
                   "'roi_heads.box_head.fc2.bias' has dtype int32"):
        assert needle in text
    assert len(e.value.problems) == 4 and "pixel_mean" not in text
    assert not (tmp_path / "x.h5").exists()


def test_not_a_detectron2_model(tmp_path):
    src = _zoo(tmp_path, {"backbone.body.layer1.0.conv1.weight": np.zeros((1, 1, 1, 1))})
    with pytest.raises(WeightsError, match="does not look like a Detectron2 Faster R-CNN"):
        detectron2_to_hdf5(src, tmp_path / "x.h5", "detectron2-r50-fpn")
    # tools/convert-torchvision-to-d2.py's backbone files: names for Detectron2's heuristics.
    src = _dump(tmp_path / "R-50.pkl", {"model": {"stem.conv1.weight": np.zeros((64, 3, 7, 7))},
                                         "__author__": "torchvision", "matching_heuristics": True})
    with pytest.raises(WeightsError) as e:
        detectron2_to_hdf5(src, tmp_path / "x.h5", "detectron2-r50-fpn")
    assert "matching_heuristics" in e.value.problems[0]


@pytest.mark.parametrize("obj", [
    {"blobs": {"res2_0_branch2a_w": np.zeros(2, np.float32)}},
    {"conv1_w": np.zeros(2, np.float32), "res_conv1_bn_s": np.zeros(2, np.float32)},
    {"model": {"res2_0_branch2a_w": np.zeros(2, np.float32)}, "__author__": "Caffe2"},
])
def test_detectron1_blobs_refused(tmp_path, obj):
    with pytest.raises(CheckpointError, match="Detectron1 / Caffe2 names"):
        read_detectron2_weights(_dump(tmp_path / "d1.pkl", obj, 2))


# --- unsafe and broken files ------------------------------------------------------------------


def _ops(obj):
    """The opcodes that push ``obj`` (protocol 2, without PROTO and STOP)."""
    return pickle.dumps(obj, protocol=2)[2:-1]


def _evil(module, name, args):
    """``{"model": {"w": module.name(*args)}, "__author__": "x"}`` as a protocol-2 pickle."""
    call = b"c" + module.encode() + b"\n" + name.encode() + b"\n" + _ops(args) + b"R"
    return (b"\x80\x02}(" + _ops("model") + b"}(" + _ops("w") + call + b"u" + _ops("__author__")
            + _ops("x") + b"u.")


@pytest.mark.parametrize("how", ["system", "eval"])
def test_malicious_pickle_refused_before_anything_runs(tmp_path, how):
    marker = tmp_path / "pwned"
    if how == "system":
        data = _evil("os", "system", (f"touch {marker}",))
    else:
        data = _evil("builtins", "eval", (f"open({str(marker)!r}, 'w').close()",))
    pickle.loads(data)  # the payload is live: plain pickle runs it
    assert marker.exists()
    marker.unlink()
    src = tmp_path / "evil.pkl"
    src.write_bytes(data)
    with pytest.raises(CheckpointError) as e:
        detectron2_to_hdf5(src, tmp_path / "e.h5", "detectron2-r50-fpn")
    shown = "os.system" if how == "system" else "builtins.eval"
    assert f"'{shown}'" in str(e.value) and "nothing in the file was run" in str(e.value)
    assert main(["convert", str(src), str(tmp_path / "e.h5"), "--profile",
                 "detectron2-r50-fpn"]) == 2
    assert not marker.exists() and not (tmp_path / "e.h5").exists()


def test_reduce_from_pickle_dump_refused(tmp_path):
    marker = tmp_path / "made"

    class Evil:
        def __reduce__(self):
            return (os.makedirs, (str(marker),))

    src = _zoo(tmp_path, {"w": Evil()}, "evil.pkl")
    with pytest.raises(CheckpointError, match=r"'(os|posix)\.makedirs'"):
        read_detectron2_weights(src)
    assert not marker.exists()


def test_class_global_refused_and_its_module_never_imported(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "npfrcnn_d2_evil.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nclass Thing:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    data = (b"\x80\x02}(" + _ops("model") + b"}(" + _ops("w")
            + b"cnpfrcnn_d2_evil\nThing\n)\x81" + b"uu.")
    src = tmp_path / "cls.pkl"
    src.write_bytes(data)
    with pytest.raises(CheckpointError, match="'npfrcnn_d2_evil.Thing'"):
        read_detectron2_weights(src)
    assert not marker.exists() and "npfrcnn_d2_evil" not in sys.modules


def test_torch_tensors_in_a_pickle_refused(tmp_path):
    torch = pytest.importorskip("torch")
    src = _zoo(tmp_path, {"w": torch.ones(2)}, "t.pkl")
    with pytest.raises(CheckpointError) as e:
        read_detectron2_weights(src)
    text = str(e.value)
    assert "torch._utils._rebuild_tensor_v2" in text and "Pass the .pth file" in text
    assert ".numpy()" in text


@pytest.mark.parametrize("value, message", [
    (np.array([1, "a"], dtype=object), "object dtype"),
    (np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")]), "structured"),
    (np.array(["ab"]), "unicode-string dtype"),
    (np.array(["2020-01-01"], dtype="datetime64[D]"), "datetime dtype"),
])
def test_non_numeric_arrays_refused(tmp_path, value, message):
    for protocol in (2, 5):
        src = _zoo(tmp_path, {"w": value}, f"bad{protocol}.pkl", protocol)
        with pytest.raises(CheckpointError, match=message):
            read_detectron2_weights(src)


@pytest.mark.parametrize("data, message", [
    # A dtype's state with fields; an array's data shorter than its shape; BUILD on a dtype twice.
    (b"\x80\x02cnumpy\ndtype\n" + _ops(("f4", False, True)) + b"R"
     + _ops((3, "<", None, ("a",), {"a": 1}, -1, -1, 0)) + b"b.", "only plain numeric"),
    (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85C\x01b\x87R"
     + b"(K\x01K\x04\x85cnumpy\ndtype\n" + _ops(("f4", False, True)) + b"R"
     + _ops((3, "<", None, None, None, -1, -1, 0)) + b"b\x89C\x08" + b"\x00" * 8 + b"tb.",
     "needs 16 bytes, the pickle holds 8"),
    (b"\x80\x02cnumpy\ndtype\n" + _ops(("f4", False, True)) + b"R"
     + _ops((3, "<", None, None, None, -1, -1, 0)) + b"b" + _ops((3, ">", None, None, None, -1,
                                                                   -1, 0)) + b"b.",
     "sets the state of dtype"),
    (b"\x80\x02cnumpy\nndarray\n)R.", "calls numpy.ndarray"),
    (b"\x80\x02cnumpy\nload\n" + _ops(("x.npy",)) + b"R.", "'numpy.load'"),
    (b"\x80\x02ccopyreg\n_reconstructor\n.", "'copyreg._reconstructor'"),
    (b"\x80\x02c__builtin__\ngetattr\n.", "'builtins.getattr'"),
    (b"\x80\x04\x8c\x02os\x94\x8c\x06system\x94\x93" + _ops(("echo hi",)) + b"R.",
     "'os.system'"),
])
def test_stand_ins_check_their_arguments(data, message):
    with pytest.raises(CheckpointError, match=message):
        loads(data)


def test_broken_files(tmp_path):
    src = _zoo(tmp_path, _state(_config()))
    data = src.read_bytes()
    (tmp_path / "cut.pkl").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="damaged or incomplete"):
        read_detectron2_weights(tmp_path / "cut.pkl")
    (tmp_path / "empty.pkl").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        read_detectron2_weights(tmp_path / "empty.pkl")
    with pytest.raises(CheckpointError, match="is a folder"):
        read_detectron2_weights(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_detectron2_weights(tmp_path / "nope.pkl")
    (tmp_path / "text.pkl").write_text("hello, world\n")
    with pytest.raises(CheckpointError, match="neither a torch.save file"):
        read_detectron2_weights(tmp_path / "text.pkl")
    _dump(tmp_path / "list.pkl", [np.zeros(2)])
    with pytest.raises(CheckpointError, match="not a dict of weights"):
        read_detectron2_weights(tmp_path / "list.pkl")
    _dump(tmp_path / "none.pkl", {"model": {"w": None}, "__author__": "x"})
    with pytest.raises(CheckpointError, match="not name -> array"):
        read_detectron2_weights(tmp_path / "none.pkl")
    for name in ("cut.pkl", "empty.pkl", "nope.pkl"):
        assert main(["convert", str(tmp_path / name), str(tmp_path / "x.h5"), "--profile",
                     "detectron2-r50-fpn"]) == 2
    assert main(["convert", str(tmp_path), str(tmp_path / "x.h5"), "--profile",
                 "detectron2-r50-fpn"]) == 2
    assert not (tmp_path / "x.h5").exists()


def test_truncated_pth(tmp_path):
    torch = pytest.importorskip("torch")
    ckpt, _ = _trainer_checkpoint(torch, _state(_config()))
    torch.save(ckpt, tmp_path / "model_final.pth")
    data = (tmp_path / "model_final.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="damaged or truncated"):
        read_detectron2_weights(tmp_path / "cut.pth")


def test_allowlist_is_small_and_explicit():
    assert set(PICKLE_GLOBALS) == {
        "numpy.ndarray", "numpy.dtype", "collections.OrderedDict", "_codecs.encode",
        "builtins.bytes", "builtins.bytearray", "builtins.set", "builtins.frozenset",
        "builtins.complex",
        *(f"{core}.{fn}" for core in ("numpy.core", "numpy._core") for fn in (
            "multiarray._reconstruct", "multiarray.scalar", "numeric._frombuffer")),
    }
