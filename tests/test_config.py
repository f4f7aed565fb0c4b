"""ModelConfig and the workshop profile (values from pipeline-spec 1.3, 1.4, 1.8 and section 7)."""

from __future__ import annotations

import dataclasses

import pytest

from npfrcnn.config import PROFILES, ModelConfig, get_profile, workshop


def test_workshop_profile_values_match_the_notebook():
    c = PROFILES["workshop"]
    assert c == ModelConfig() == workshop()
    assert c.name == "workshop" and c.num_classes == 80
    # Preprocessing: RGB minus (123.68, 116.78, 103.94), native size (faster.py constants).
    assert c.channel_order == "RGB" and c.pixel_means == (123.68, 116.78, 103.94)
    assert c.resize_min is None and c.resize_max is None
    # Backbone: ResNet-101 (3, 4, 23, 3), VALID pool1, stride in the 3x3, eps 1e-5, OS 16.
    assert c.units_per_block == (3, 4, 23, 3) and c.depth == 101 and c.scope == "resnet_v1_101"
    assert (c.pool1_padding, c.stride_in, c.bn_epsilon, c.output_stride) == (
        "VALID", "3x3", 1e-5, 16,
    )
    # Anchors: base 256, ratios h/w (0.5, 1, 2), scales 0.125..2, 15 per cell, no +1.
    assert c.anchor_base_size == 256 and c.anchor_ratios == (0.5, 1.0, 2.0)
    assert c.anchor_scales == (0.125, 0.25, 0.5, 1.0, 2.0) and c.num_anchors == 15
    assert c.anchor_ratio_mode == "h/w" and not c.anchor_plus_one and c.anchor_offset == 0.0
    # RPN: ReLU6, softmax, no clipping, 12,000 -> NMS 0.7 -> 2,000, raw deltas.
    assert (c.rpn_activation, c.rpn_objectness, c.rpn_clip_before_nms) == (
        "relu6", "softmax", False,
    )
    assert (c.rpn_pre_nms_top_n, c.rpn_post_nms_top_n, c.rpn_nms_threshold) == (12000, 2000, 0.7)
    assert c.rpn_variances is None and c.delta_clamp is None and not c.box_plus_one
    # RoI: crop 14 (boxes / (W, H)) then 2x2 max-pool -> 7.
    assert (c.roi_op, c.roi_crop_size, c.roi_pool_size, c.roi_normalizer) == (
        "crop_and_resize", 14, 7, "size",
    )
    # Head and final detections.
    assert c.tail_stride == 1 and c.background_first
    assert c.rcnn_variances == (0.1, 0.1, 0.2, 0.2) and c.clip_inclusive
    assert (c.class_nms_threshold, c.class_max_detections, c.total_max_detections, c.min_prob) == (
        0.5, 100, 300, 0.0,
    )


@pytest.mark.parametrize("depth,units", [(50, (3, 4, 6, 3)), (101, (3, 4, 23, 3)),
                                         (152, (3, 8, 36, 3))])
def test_standard_depths(depth, units):
    c = workshop(depth=depth)
    assert c.units_per_block == units and c.depth == depth and c.scope == f"resnet_v1_{depth}"


def test_small_test_depth():
    c = workshop(units_per_block=(1, 1, 1, 1))
    assert c.depth == 14 and c.scope == "resnet_v1_14"


def test_json_round_trip_and_frozen():
    c = workshop(units_per_block=(1, 2, 1, 1), num_classes=3, base_depths=(4, 8, 8, 16))
    back = ModelConfig.from_json(c.to_json())
    assert back == c and hash(back) == hash(c)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.num_classes = 5  # type: ignore[misc]
    assert c.replace(num_classes=5).num_classes == 5


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"pool1_padding": "valid"}, "pool1_padding"),
        ({"rpn_nms_threshold": 1.5}, "rpn_nms_threshold"),
        ({"num_classes": 0}, "num_classes"),
        ({"units_per_block": (1, 1, 1)}, "units_per_block"),
        ({"roi_crop_size": 13}, "roi_crop_size"),
        ({"output_stride": 12}, "output_stride"),
    ],
)
def test_invalid_values_rejected(changes, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**changes)


def test_all_problems_in_one_error():
    with pytest.raises(ValueError) as e:
        ModelConfig(pool1_padding="x", min_prob=-1.0)
    assert "pool1_padding" in str(e.value) and "min_prob" in str(e.value)


def test_bad_json_and_unknown_fields():
    with pytest.raises(ValueError, match="not valid JSON"):
        ModelConfig.from_json("{")
    with pytest.raises(ValueError, match="unknown ModelConfig field"):
        ModelConfig.from_json('{"bogus": 1}')
    with pytest.raises(ValueError, match="depth must be one of"):
        workshop(depth=34)
    with pytest.raises(ValueError, match="unknown profile"):
        get_profile("nope")


@pytest.mark.parametrize(
    "text, key",
    [
        ('{"anchor_base_size": NaN}', "anchor_base_size = nan"),
        ('{"min_prob": Infinity}', "min_prob = inf"),
        ('{"anchor_scales": [0.5, -Infinity, 2.0]}', "anchor_scales[1] = -inf"),
    ],
)
def test_non_finite_values_are_refused_at_load_naming_the_key(text, key):
    from npfrcnn.config import config_from_json
    from npfrcnn.config._base import ConfigError

    for load in (ModelConfig.from_json, config_from_json):
        with pytest.raises(ConfigError) as e:
            load(text)
        assert key in str(e.value)


def test_weights_file_with_a_nan_config_is_refused(tmp_path):
    h5py = pytest.importorskip("h5py")
    import json

    from npfrcnn.weights.hdf5 import read
    from npfrcnn.weights.random import make_random_model

    cfg = workshop(units_per_block=(1, 1, 1, 1), num_classes=2, root_depth=2,
                   base_depths=(2, 2, 2, 2), rpn_depth=4)
    path = tmp_path / "m.h5"
    make_random_model(path, cfg, seed=0)
    d = json.loads(cfg.to_json())
    d["rpn_nms_threshold"] = float("nan")
    with h5py.File(path, "r+") as f:
        f.attrs["config"] = json.dumps(d)  # json writes NaN as the bare token NaN
    with pytest.raises(ValueError, match="rpn_nms_threshold = nan"):
        read(path)
