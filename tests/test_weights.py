"""The weights name table, the HDF5 format, random weights and the TF checkpoint converter."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
from helpers import assert_same

from npfrcnn.config import workshop
from npfrcnn.weights import (
    FORMAT_VERSION,
    WeightsError,
    expected_shapes,
    external_data,
    inspect,
    make_random_model,
    random_weights,
    read,
    write,
)


def small_config(**changes):
    kw = dict(
        units_per_block=(1, 1, 2, 1), root_depth=8, base_depths=(8, 16, 32, 64), rpn_depth=32,
        num_classes=3,
    )
    kw.update(changes)
    return workshop(**kw)


CLASSES = ["cat", "dog", "person"]


# Name table ---------------------------------------------------------------------------------


def test_resnet101_name_table_counts_and_shapes():
    shapes = expected_shapes(workshop(depth=101))
    # Hand count: root conv + 4 BN tensors = 5; 33 units x 3 convs x 5 = 495; 4 projection
    # shortcuts (unit_1 of each block) x 5 = 20; RPN 3 convs x 2 = 6; R-CNN 2 dense x 2 = 4.
    assert len(shapes) == 5 + 495 + 20 + 6 + 4 == 530
    s = "resnet_v1_101"
    want = {
        f"{s}/conv1/conv2d/kernel": (7, 7, 3, 64),
        f"{s}/conv1/batch_normalization/gamma": (64,),
        f"{s}/conv1/batch_normalization/moving_variance": (64,),
        f"{s}/block1/unit_1/bottleneck_v1/shortcut/conv2d/kernel": (1, 1, 64, 256),
        f"{s}/block1/unit_1/bottleneck_v1/conv1/conv2d/kernel": (1, 1, 64, 64),
        f"{s}/block1/unit_3/bottleneck_v1/conv2/conv2d/kernel": (3, 3, 64, 64),
        f"{s}/block2/unit_1/bottleneck_v1/shortcut/conv2d/kernel": (1, 1, 256, 512),
        f"{s}/block3/unit_23/bottleneck_v1/conv2/conv2d/kernel": (3, 3, 256, 256),
        f"{s}/block3/unit_23/bottleneck_v1/conv3/batch_normalization/beta": (1024,),
        f"{s}/block4/unit_1/bottleneck_v1/shortcut/conv2d/kernel": (1, 1, 1024, 2048),
        f"{s}/block4/unit_3/bottleneck_v1/conv3/conv2d/kernel": (1, 1, 512, 2048),
        "rpn/conv/kernel": (3, 3, 1024, 512),
        "rpn/conv/bias": (512,),
        "rpn/cls_conv/kernel": (1, 1, 512, 30),
        "rpn/bbox_conv/kernel": (1, 1, 512, 60),
        "rpn/bbox_conv/bias": (60,),
        "rcnn/fc_classifier/kernel": (2048, 81),
        "rcnn/fc_classifier/bias": (81,),
        "rcnn/fc_bbox/kernel": (2048, 320),
        "rcnn/fc_bbox/bias": (320,),
    }
    for name, shape in want.items():
        assert shapes[name] == shape, name
    # Identity shortcuts have no variables; there is no unit_24 and no block5.
    assert f"{s}/block1/unit_2/bottleneck_v1/shortcut/conv2d/kernel" not in shapes
    assert f"{s}/block3/unit_24/bottleneck_v1/conv1/conv2d/kernel" not in shapes
    assert not any("block5" in n for n in shapes)


def test_scope_follows_depth():
    assert all(n.startswith(("resnet_v1_50/", "rpn/", "rcnn/"))
               for n in expected_shapes(workshop(depth=50)))
    assert len(expected_shapes(workshop(depth=152))) == 5 + 50 * 15 + 20 + 10


# HDF5 format --------------------------------------------------------------------------------


@pytest.fixture()
def good(tmp_path):
    cfg = small_config()
    w = random_weights(cfg, seed=5)
    path = write(tmp_path / "w.h5", cfg, CLASSES, w, {"source": "unit test", "source_sha256": "0"})
    return cfg, w, path


def test_round_trip(good):
    cfg, w, path = good
    f = read(path)
    assert f.config == cfg and f.classes == CLASSES and f.format_version == FORMAT_VERSION
    assert set(f.tensors) == set(w)
    for n in w:
        assert_same(f.tensors[n], w[n])
    assert f.provenance["source"] == "unit test"
    assert len(f.provenance["tensors_sha256"]) == 64
    with h5py.File(path) as h:
        assert h.attrs["format"] == "npfrcnn"
        assert json.loads(h.attrs["classes"]) == CLASSES
        assert "resnet_v1_17" in h and "rpn/conv/kernel" in h  # stored under TF names


def test_write_reports_every_problem_at_once(tmp_path):
    cfg = small_config()
    w = random_weights(cfg)
    del w["rpn/conv/bias"]
    w["rpn/extra"] = np.zeros(3, np.float32)
    w["rcnn/fc_bbox/bias"] = np.zeros(5, np.float32)
    w["rcnn/fc_bbox/kernel"] = w["rcnn/fc_bbox/kernel"].astype(np.float64)
    w["rpn/cls_conv/bias"] = w["rpn/cls_conv/bias"].copy()
    w["rpn/cls_conv/bias"][0] = np.nan
    with pytest.raises(WeightsError) as e:
        write(tmp_path / "bad.h5", cfg, CLASSES[:2], w)
    msg = str(e.value)
    for part in ("missing tensor 'rpn/conv/bias'", "unexpected tensor 'rpn/extra'",
                 "'rcnn/fc_bbox/bias' has shape (5,)", "'rcnn/fc_bbox/kernel' has dtype float64",
                 "'rpn/cls_conv/bias' has 1 non-finite", "2 class names"):
        assert part in msg, part
    assert len(e.value.problems) == 6
    assert not os.listdir(tmp_path)  # nothing written


def test_read_reports_every_problem_at_once(good):
    _, _, path = good
    with h5py.File(path, "a") as h:
        del h["rpn/conv/bias"]
        h["rpn/extra"] = np.zeros(3, np.float32)
        del h["rcnn/fc_bbox/bias"]
        h["rcnn/fc_bbox/bias"] = np.zeros(5, np.float32)
        a = h["rpn/cls_conv/bias"][()]
        a[1] = np.inf
        h["rpn/cls_conv/bias"][...] = a
    with pytest.raises(WeightsError) as e:
        read(path)
    msg = str(e.value)
    assert "missing tensor 'rpn/conv/bias'" in msg
    assert "unexpected tensor 'rpn/extra'" in msg
    assert "'rcnn/fc_bbox/bias' has shape (5,)" in msg
    assert "'rpn/cls_conv/bias' has 1 non-finite" in msg
    assert len(e.value.problems) == 4
    info = inspect(path)
    assert len(info["problems"]) >= 4 and info["integrity"] == "mismatch"


def test_read_detects_altered_tensors(good):
    _, _, path = good
    with h5py.File(path, "a") as h:
        h["rpn/conv/bias"][0] = h["rpn/conv/bias"][0] + 1.0
    with pytest.raises(WeightsError, match="tensors_sha256 mismatch"):
        read(path)


def test_read_bad_files(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        read(tmp_path / "nope.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(WeightsError, match="not a readable HDF5"):
        read(tmp_path / "text.h5")
    with h5py.File(tmp_path / "other.h5", "w") as h:
        h["x"] = np.zeros(2)
    with pytest.raises(WeightsError) as e:
        read(tmp_path / "other.h5")
    assert "not an npfrcnn weights file" in str(e.value)
    assert "config is missing" in str(e.value)


def test_read_truncated_file(good, tmp_path):
    _, _, path = good
    data = path.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError):
        read(cut)
    assert inspect(cut)["problems"]


def test_atomic_write_keeps_old_file_on_failure(good, monkeypatch):
    cfg, w, path = good
    before = path.read_bytes()

    def boom(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(h5py.Group, "create_dataset", boom)
    with pytest.raises(OSError, match="disk full"):
        write(path, cfg, CLASSES, random_weights(cfg, seed=9))
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == [path.name]  # no temporary file left behind


def test_inspect_summary(good):
    cfg, w, path = good
    info = inspect(path)
    assert info["problems"] == [] and info["integrity"] == "ok"
    assert info["num_tensors"] == len(w) == len(info["shapes"])
    assert info["total_bytes"] == sum(a.nbytes for a in w.values())
    assert info["config"]["units_per_block"] == [1, 1, 2, 1]
    assert info["classes"] == CLASSES and info["format"] == "npfrcnn"
    assert info["shapes"]["rpn/conv/kernel"] == [3, 3, 128, 32]
    assert inspect(path.parent / "missing.h5")["problems"]


# Random weights -------------------------------------------------------------------------------


def test_random_weights_deterministic_float32_finite():
    cfg = small_config()
    a, b, c = random_weights(cfg, 1), random_weights(cfg, 1), random_weights(cfg, 2)
    assert set(a) == set(expected_shapes(cfg))
    for n, shape in expected_shapes(cfg).items():
        assert a[n].shape == shape and a[n].dtype == np.float32 and np.isfinite(a[n]).all()
        assert_same(a[n], b[n])
    assert not np.array_equal(a["rpn/conv/kernel"], c["rpn/conv/kernel"])
    assert all((a[n] > 0).all() for n in a if n.endswith("moving_variance"))


def test_make_random_model_says_random(tmp_path):
    cfg = small_config()
    path = make_random_model(tmp_path / "r.h5", cfg, seed=3)
    f = read(path)
    assert f.provenance["random"] is True and "RANDOM" in f.provenance["source"]
    assert f.classes == ["class_0", "class_1", "class_2"]


def test_random_weights_keep_resnet101_activations_informative():
    """Full depth and width, tiny image: features finite and neither vanishing nor exploding;
    class probabilities not saturated, so detections are non-trivial."""
    from npfrcnn import FasterRCNN

    cfg = workshop(depth=101, num_classes=80, rpn_post_nms_top_n=8)
    model = FasterRCNN(cfg, [f"c{i}" for i in range(80)], random_weights(cfg), backend="cpu")
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(64, 80, 3)).astype(np.uint8)
    fm = model.features(model.preprocess(img))
    assert np.isfinite(fm).all() and 0.1 < float(fm.std()) < 100.0
    rpn = model.rpn(fm)
    assert 0.05 < float(rpn.cls_prob[:, 1].min()) and float(rpn.cls_prob[:, 1].max()) < 0.95
    d = model.detect(img)
    assert len(d) > 0 and np.isfinite(d.scores).all() and float(d.scores.max()) < 0.99


# Converter (TF checkpoint in the workshop's naming) -------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tf, tmp_path_factory):
    from npfrcnn.weights.tf_reference import save_checkpoint

    cfg = small_config()
    w = random_weights(cfg, seed=11)
    folder = tmp_path_factory.mktemp("checkpoint")
    extra = {
        "global_step": np.int64(1234),
        "rpn/conv/kernel/Momentum": np.zeros_like(w["rpn/conv/kernel"]),
    }
    prefix = save_checkpoint(folder / "fasterrcnn", w, extra)
    (folder / "classes.json").write_text(json.dumps(CLASSES))
    return cfg, w, prefix, folder / "classes.json"


def test_checkpoint_written_by_tf_has_workshop_names(tf, checkpoint):
    cfg, w, prefix, _ = checkpoint
    names = dict(tf.train.list_variables(prefix))
    assert set(names) == set(w) | {"global_step", "rpn/conv/kernel/Momentum"}
    assert tuple(names["resnet_v1_17/conv1/conv2d/kernel"]) == (7, 7, 3, 8)


def test_convert_checkpoint(checkpoint, tmp_path):
    from npfrcnn.weights.convert import checkpoint_to_hdf5

    cfg, w, prefix, classes = checkpoint
    prov = checkpoint_to_hdf5(prefix, tmp_path / "out.h5", classes)
    f = read(tmp_path / "out.h5")
    assert f.config == cfg and f.classes == CLASSES  # depth and widths read from the checkpoint
    for n in w:
        assert_same(f.tensors[n], w[n])
    assert prov["skipped_training_variables"] == ["global_step", "rpn/conv/kernel/Momentum"]
    assert len(f.provenance["source_sha256"]) == 64
    assert set(f.provenance["source_files_sha256"]) == {
        "fasterrcnn.index", "fasterrcnn.data-00000-of-00001",
    }


def test_convert_reports_missing_and_extra_at_once(tf, checkpoint, tmp_path):
    from npfrcnn.weights.convert import checkpoint_to_hdf5
    from npfrcnn.weights.tf_reference import save_checkpoint

    cfg, w, _, classes = checkpoint
    bad = dict(w)
    del bad["rpn/conv/bias"]
    del bad["rcnn/fc_bbox/kernel"]
    bad["rcnn/fc_mystery/kernel"] = np.zeros((2, 2), np.float32)
    prefix = save_checkpoint(tmp_path / "bad", bad)
    with pytest.raises(WeightsError) as e:
        checkpoint_to_hdf5(prefix, tmp_path / "out.h5", classes, config=cfg)
    msg = str(e.value)
    assert "missing variable 'rpn/conv/bias'" in msg
    assert "missing variable 'rcnn/fc_bbox/kernel'" in msg
    assert "unexpected variable 'rcnn/fc_mystery/kernel'" in msg
    assert not (tmp_path / "out.h5").exists()


def test_convert_bad_inputs(checkpoint, tmp_path):
    from npfrcnn.weights.convert import checkpoint_to_hdf5

    _, _, prefix, classes = checkpoint
    with pytest.raises(ValueError, match="cannot read TF checkpoint"):
        checkpoint_to_hdf5(tmp_path / "nothing", tmp_path / "o.h5", classes)
    (tmp_path / "c.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="JSON list of class names"):
        checkpoint_to_hdf5(prefix, tmp_path / "o.h5", tmp_path / "c.json")
    (tmp_path / "four.json").write_text(json.dumps(CLASSES + ["extra"]))
    with pytest.raises(WeightsError, match="fc_classifier"):
        checkpoint_to_hdf5(prefix, tmp_path / "o.h5", tmp_path / "four.json")


# Self-contained files and attribute types ------------------------------------------------------
# Each bad file is the good one with one thing changed by h5py; `other.h5` beside it holds data
# that must never be read (its values would pass every check).


def _other_file(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as g:
        g["bias"] = np.zeros(32, np.float32)
        g["grp/bias"] = np.zeros(32, np.float32)
    return "other.h5"


def _replace_with_external_link(h, other):
    del h["rpn/conv/bias"]
    h["rpn/conv/bias"] = h5py.ExternalLink(other, "/bias")


def _replace_with_soft_link_through_external(h, other):
    h["ext"] = h5py.ExternalLink(other, "/grp")
    del h["rpn/conv/bias"]
    h["rpn/conv/bias"] = h5py.SoftLink("/ext/bias")


def _replace_with_vds(h, other):
    del h["rpn/conv/bias"]
    layout = h5py.VirtualLayout(shape=(32,), dtype=np.float32)
    layout[:] = h5py.VirtualSource(other, "bias", shape=(32,))
    h.create_virtual_dataset("rpn/conv/bias", layout)


def _replace_with_external_storage(h, other):
    raw = os.path.join(os.path.dirname(h.filename), "raw.bin")
    with open(raw, "wb") as out:
        out.write(np.zeros(32, np.float32).tobytes())
    del h["rpn/conv/bias"]
    h.create_dataset("rpn/conv/bias", shape=(32,), dtype=np.float32, external=[(raw, 0, 128)])


def _replace_with_plugin_filter(h, other):
    data = h["rpn/conv/bias"][()]
    del h["rpn/conv/bias"]
    # 32001 is Blosc's registered id: not built into HDF5, so reading loads a plugin library.
    h.create_dataset("rpn/conv/bias", data=data, chunks=(32,), compression=32001,
                     allow_unknown_filter=True)


@pytest.mark.parametrize("change, words", [
    (_replace_with_external_link, ["'rpn/conv/bias' is an external link", "'other.h5'"]),
    (_replace_with_soft_link_through_external,
     ["'rpn/conv/bias' is a soft link to '/ext/bias'", "through the external link 'ext'",
      "'ext' is an external link"]),
    (_replace_with_vds, ["'rpn/conv/bias' is a virtual dataset", "'other.h5'"]),
    (_replace_with_external_storage, ["'rpn/conv/bias' keeps its raw data in external", "raw.bin"]),
    (_replace_with_plugin_filter, ["'rpn/conv/bias' uses HDF5 filter 32001", "plugin"]),
])
def test_read_refuses_files_that_read_other_files(good, tmp_path, monkeypatch, change, words):
    _, _, path = good
    other = _other_file(tmp_path)
    with h5py.File(path, "a") as h:
        change(h, other)
    # h5py would resolve the relative names against the working directory: put `other.h5`
    # there, so that following a link would succeed (and the refusal is not a missing file).
    monkeypatch.chdir(tmp_path)
    reads = []
    monkeypatch.setattr(h5py.Dataset, "__getitem__", lambda self, key: reads.append(self.name))
    with pytest.raises(WeightsError) as e:
        read(path)
    assert reads == []  # refused before any dataset's data was read
    msg = str(e.value)
    for w in words:
        assert w in msg, (w, msg)
    assert "must hold all its data itself" in msg or "without that filter" in msg
    assert "missing tensor" not in msg  # no noise from the tensors it did not read
    assert external_data(path) == e.value.problems
    info = inspect(path)
    assert reads == []
    assert info["problems"] == e.value.problems and info["integrity"] == "unknown"
    assert info["self_contained"] is ("filter" in words[0])
    assert info["shapes"]["rpn/conv/kernel"] == [3, 3, 128, 32]


def test_in_file_soft_links_and_good_files_are_self_contained(good):
    _, _, path = good
    assert external_data(path) == [] and inspect(path)["self_contained"] is True
    with h5py.File(path, "a") as h:
        h["alias"] = h5py.SoftLink("/rpn/conv/bias")  # stays in the file: reads nothing else
        h["dangling"] = h5py.SoftLink("/nowhere")
    assert external_data(path) == []
    read(path)  # soft links are not datasets of their own: the file still loads


def test_read_refuses_a_dataset_larger_than_memory_without_reading_it(good, monkeypatch):
    _, _, path = good
    import npfrcnn._validate as validate

    monkeypatch.setattr(validate, "memory_limit_bytes", lambda: 4096)
    reads = []
    monkeypatch.setattr(h5py.Dataset, "__getitem__", lambda self, key: reads.append(self.name))
    with pytest.raises(WeightsError, match=r"'rpn/conv/kernel' has shape \(3, 3, 128, 32\) "
                       r"\(144 KiB\), more than this machine's 4 KiB"):
        read(path)
    assert reads == []


def _set_attr(key, value):
    def change(h):
        h.attrs[key] = value
    return change


def _set_bytes_attr(key, raw, fixed=False):
    def change(h):
        if fixed:  # a fixed-length string: h5py gives it back as bytes
            h.attrs[key] = np.bytes_(raw)
        else:  # variable-length: h5py decodes it, undecodable bytes as lone surrogates
            h.attrs.create(key, raw, dtype=h5py.string_dtype("ascii"))
    return change


@pytest.mark.parametrize("change, words", [
    (_set_bytes_attr("config", b"\xff\xfe{}"), ["root attribute config is not valid UTF-8"]),
    (_set_bytes_attr("classes", b'["caf\xe9"]'), ["root attribute classes is not valid UTF-8"]),
    (_set_bytes_attr("format", b"npfrcnn\xff"), ["root attribute format is not valid UTF-8"]),
    (_set_bytes_attr("config", b"{\x80}", fixed=True),
     ["root attribute config is not valid UTF-8 text (invalid start byte at byte 1)"]),
    (_set_attr("config", 5), ["root attribute config must be a string, got int64 5"]),
    (_set_attr("classes", np.array(["cat", "dog", "person"], dtype=h5py.string_dtype())),
     ["root attribute classes must be a single string, got an array of shape (3,)"]),
    (_set_attr("format_version", np.array([2, 2])),
     ["root attribute format_version must be a single integer, got an array of shape (2,)"]),
    (_set_attr("format_version", "2"),
     ["root attribute format_version must be an integer, got str"]),
    (_set_attr("format_version", 2.0),
     ["root attribute format_version must be an integer, got float64"]),
    (_set_attr("config", '{"num_classes": 3'), ["root attribute config is invalid"]),
    (_set_attr("config", "[" * 100_000), ["root attribute config is invalid"]),
    (_set_attr("classes", "[" * 100_000), ["root attribute classes is not valid JSON"]),
    (_set_attr("provenance", "{"), ["root attribute provenance is not valid JSON"]),
    (_set_attr("provenance", '{"source": "x", "tensors_sha256": 5}'),
     ["tensors_sha256 must be 64 lower-case hex digits, got 5"]),
    (_set_attr("provenance", h5py.Empty("f4")), ["root attribute provenance is empty"]),
])
def test_read_names_attributes_of_the_wrong_type_or_encoding(good, change, words):
    _, _, path = good
    with h5py.File(path, "a") as h:
        change(h)
    with pytest.raises(WeightsError) as e:
        read(path)
    msg = str(e.value)
    for w in words:
        assert w in msg, (w, msg)
    assert inspect(path)["problems"]  # inspect reports it too, without raising
