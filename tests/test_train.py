"""npfrcnn.train: a short training smoke test on tiny generated data (losses go down, the export
loads in npfrcnn and detects, provenance), exact resume, and the gradient plumbing (npfrcnn's
loss gradients fed through TF) checked by finite differences."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from npfrcnn import FasterRCNN  # noqa: E402
from npfrcnn.data import DataError, load_image, make_synthetic, read_coco  # noqa: E402
from npfrcnn.train import (  # noqa: E402
    TrainConfig,
    Trainer,
    TrainError,
    small_config,
    train,
    units_for_depth,
)
from npfrcnn.weights.hdf5 import read  # noqa: E402

# A tiny network: ResNet-14, width 8, on 96-pixel images; one image per step.
TC = TrainConfig(steps=40, learning_rate=3e-3, warmup=5, checkpoint_every=10,
                 calibration_images=4, rcnn_minibatch=32, seed=3)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    root = make_synthetic(tmp_path_factory.mktemp("tiny") / "d", 6, seed=7, size=96,
                          max_objects=3, layouts=("coco",))
    return read_coco(root)


def _total_loss(trainer: Trainer, ds) -> float:
    total = 0.0
    for i, s in enumerate(ds.samples):
        losses, _ = trainer.losses_and_gradients(
            load_image(s.path), s.boxes, s.classes, np.random.default_rng(100 + i)
        )
        total += losses["total"]
    return total / len(ds)


def test_units_for_depth() -> None:
    assert units_for_depth(101) == (3, 4, 23, 3)
    assert units_for_depth(14) == (1, 1, 1, 1)
    assert units_for_depth(26) == (2, 2, 2, 2)
    with pytest.raises(ValueError, match="12 \\* u \\+ 2"):
        units_for_depth(20)


def test_training_smoke(tiny, tmp_path: Path) -> None:
    cfg = small_config(len(tiny.classes), depth=14, width=8)
    out = tmp_path / "m.h5"
    start = Trainer(cfg, tiny.classes, TC)
    start.calibrate(tiny)  # exactly the initial state train() starts from
    before = _total_loss(start, tiny)
    result = train(tiny, out, config=cfg, train_config=TC, command="npfrcnn train test",
                   progress=False)
    assert result["steps"] == 40 and len(result["losses"]) == 40
    assert all(np.isfinite(v) for d in result["losses"] for v in d.values())

    wf = read(out)
    after = _total_loss(Trainer(cfg, tiny.classes, TC, tensors=wf.tensors), tiny)
    # Losses on the training images with the same target sampling: 40 steps on 6 images must
    # cut the total by a clear margin (observed: roughly halved); 0.8 leaves room for noise.
    assert after < 0.8 * before, (before, after)

    prov = wf.provenance
    assert prov["command"] == "npfrcnn train test"
    assert prov["data_seed"] == 7 and prov["steps"] == 40
    assert len(prov["dataset_sha256"]) == 64
    assert wf.classes == list(tiny.classes)

    model = FasterRCNN.from_hdf5(out)
    image = load_image(tiny.samples[0].path)
    dets = model.detect(image)
    assert dets.boxes.shape[1:] == (4,) and len(dets) > 0
    assert (dets.boxes[:, 2] <= 95).all() and (dets.boxes >= 0).all()  # clipped to [0, W-1]
    assert set(dets.class_names) <= set(tiny.classes)


def test_resume_continues_exactly(tiny, tmp_path: Path) -> None:
    cfg = small_config(len(tiny.classes), depth=14, width=8)
    tc = TrainConfig(steps=8, warmup=2, checkpoint_every=4, calibration_images=2,
                     rcnn_minibatch=16, seed=1)
    straight = tmp_path / "a.h5"
    train(tiny, straight, config=cfg, train_config=tc, progress=False)

    class Crash(Exception):
        pass

    def crash(step: int, losses: dict[str, float]) -> None:
        if step == 6:  # a crash after the checkpoint at 4: steps 5 and 6 are lost
            raise Crash

    resumed = tmp_path / "b.h5"
    with pytest.raises(Crash):
        train(tiny, resumed, config=cfg, train_config=tc, progress=False, on_step=crash)
    assert not resumed.exists() and Path(str(resumed) + ".ckpt.npz").is_file()

    def ctrl_c(step: int, losses: dict[str, float]) -> None:
        if step == 7:  # Ctrl-C between steps: step 7 is saved on the way out
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny, resumed, config=cfg, train_config=tc, progress=False, resume=True,
              on_step=ctrl_c)
    result = train(tiny, resumed, config=cfg, train_config=tc, progress=False, resume=True)
    assert len(result["losses"]) == 1  # only step 8 was left
    a, b = read(straight).tensors, read(resumed).tensors
    # Same data order, sampling and optimiser state, and TF op determinism (on by default):
    # the resumed run reproduces the uninterrupted one bit for bit.
    for name in a:
        np.testing.assert_array_equal(b[name], a[name], err_msg=name)
    assert read(resumed).provenance["steps"] == 8


def test_dilated_training_convs_match_the_reference(tiny) -> None:
    """Output stride 8: the trainer's atrous_conv2d features equal TFReference's dilated conv2d
    (the network that is exported and compared with npfrcnn)."""
    from npfrcnn.weights.tf_reference import TFReference

    cfg = small_config(len(tiny.classes), depth=14, width=8, output_stride=8)
    tr = Trainer(cfg, tiny.classes, TC)
    tr.calibrate(tiny)
    image = load_image(tiny.samples[0].path)
    ours = tr.net.features(tr.net.preprocess(image)).numpy()
    ref = TFReference(cfg, tr.tensors())
    theirs = ref.features(ref.preprocess(image)).numpy()
    assert ours.shape == theirs.shape == (1, 12, 12, cfg.block3_channels)
    # Two float32 implementations of one convolution (space-to-batch vs dilated kernel): they
    # may sum in another order, so allow float32 rounding relative to the feature scale.
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5 * float(np.abs(theirs).max()))


def test_resume_without_checkpoint_or_other_data(tiny, tmp_path: Path) -> None:
    cfg = small_config(len(tiny.classes), depth=14, width=8)
    with pytest.raises(TrainError, match="no checkpoint"):
        train(tiny, tmp_path / "x.h5", config=cfg, train_config=TC, resume=True,
              progress=False)


def test_gradients_match_finite_differences(tiny) -> None:
    """The gradient train() applies is npfrcnn's loss gradient pushed through TF: compare it with
    central differences of npfrcnn's loss for the head biases (they do not change the proposals
    or targets, so the loss is smooth in them)."""
    cfg = small_config(len(tiny.classes), depth=14, width=8)
    tr = Trainer(cfg, tiny.classes, TC)
    tr.calibrate(tiny)
    s = tiny.samples[0]
    image = load_image(s.path)

    def loss() -> float:
        return tr.losses_and_gradients(image, s.boxes, s.classes, np.random.default_rng(5))[0][
            "total"]

    _, grads = tr.losses_and_gradients(image, s.boxes, s.classes, np.random.default_rng(5))
    g = dict(zip(tr.trainable, grads, strict=True))
    for name in ("rcnn/fc_classifier/bias", "rcnn/fc_bbox/bias"):
        var = tr.net.variables[name]
        analytic = np.asarray(g[name])
        for j in range(min(4, var.shape[0])):
            h = 1e-2
            base = var.numpy()
            plus, minus = base.copy(), base.copy()
            plus[j] += h
            minus[j] -= h
            var.assign(plus)
            lp = loss()
            var.assign(minus)
            lm = loss()
            var.assign(base)
            numeric = (lp - lm) / (2 * h)
            # Central differences: O(h^2) truncation plus float32 rounding of losses of order 1
            # divided by 2h (~1e-5); smooth L1 kinks can add O(h) where a residual crosses one.
            assert abs(numeric - analytic[j]) < 2e-3 + 1e-2 * abs(analytic[j]), (name, j)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"steps": 0}, "steps must be a positive integer"),
        ({"checkpoint_every": 0}, "checkpoint_every must be a positive integer"),
        ({"learning_rate": float("nan")}, "learning_rate must be finite"),
        ({"learning_rate": -1e-3}, "learning_rate must be positive"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"anchor_border": float("inf")}, "anchor_border must be finite"),
        ({"final_lr_fraction": 2.0}, "final_lr_fraction must be in [0, 1]"),
    ],
)
def test_train_config_rejects_bad_values(changes, message: str) -> None:
    with pytest.raises(TrainError) as e:
        TrainConfig(**changes)
    assert message in str(e.value)


def test_train_refuses_inputs_checkpoints_and_damaged_files(tiny, tmp_path: Path) -> None:
    cfg = small_config(len(tiny.classes), depth=14, width=4)
    tc = TrainConfig(steps=1, warmup=1, checkpoint_every=1, calibration_images=1,
                     rcnn_minibatch=8)
    ann = tiny.files[0]
    with pytest.raises(TrainError, match="would destroy an input"):
        train(tiny, ann, config=cfg, train_config=tc, progress=False)
    out = tmp_path / "m.h5"
    ckpt = Path(str(out) + ".ckpt.npz")
    ckpt.write_bytes(b"not a zip")
    with pytest.raises(TrainError, match="of an earlier run exists"):
        train(tiny, out, config=cfg, train_config=tc, progress=False)
    with pytest.raises(TrainError, match="cannot be read"):
        train(tiny, out, config=cfg, train_config=tc, progress=False, resume=True)
    assert ckpt.read_bytes() == b"not a zip" and not out.exists()
    from npfrcnn.data import Dataset

    with pytest.raises(DataError, match="has no image"):
        train(Dataset([], list(tiny.classes), tmp_path, "coco"), out, config=cfg,
              train_config=tc, progress=False)
