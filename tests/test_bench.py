"""``npfrcnn bench``: the gate, the workloads, the timing and the command line.

The gate is tested the way a user meets it: with plain NumPy kernels written in TF's and in
torchvision's conventions (``tests/bench_kernels.py``), correct ones and ones with a planted
bug; the built-in TF and torchvision implementations must pass it too (which checks the cases
and references against the real systems). Timings here are on tiny sizes and never asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from npfrcnn import ops
from npfrcnn.bench import gate, impls, report, specs, timing, workloads
from npfrcnn.cli import main

ROOT = Path(__file__).resolve().parents[1]
KERNELS = str(Path(__file__).resolve().with_name("bench_kernels.py"))
HAVE_TF = __import__("importlib").util.find_spec("tensorflow") is not None
HAVE_TV = __import__("importlib").util.find_spec("torchvision") is not None


def _user(name: str, op: str, semantics: str) -> impls.Impl:
    return impls.user_impl(f"{KERNELS}:{name}", op, semantics, "cpu", "numpy", 1)


# --------------------------------------------------------------------------------------------
# The gate
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", list(specs.OPS))
def test_npfrcnn_kernels_pass_the_gate(op):
    found, _ = impls.builtins(op, "cpu", 1, ["npfrcnn-cpu", "npfrcnn-tv-cpu"])
    assert found
    for impl in found:
        result = gate.run(impl)
        assert result.exact, (impl.name, result.first_mismatch)
        assert result.cases >= 8


@pytest.mark.skipif(not (HAVE_TF and HAVE_TV), reason="needs TensorFlow and torchvision")
@pytest.mark.parametrize("op", list(specs.OPS))
def test_tensorflow_and_torchvision_pass_the_gate(op):
    """The cases and references agree with the real systems (bit for bit, every case)."""
    found, notes = impls.builtins(op, "cpu", 1, ["tensorflow", "torchvision"])
    assert found, notes
    for impl in found:
        result = gate.run(impl)
        assert result.exact, (impl.name, result.first_mismatch)


@pytest.mark.parametrize(
    "name, op, semantics",
    [("tf_nms", "nms", "tf"), ("tv_nms", "nms", "torchvision"),
     ("tv_roi_align", "roi-align", "torchvision")],
)
def test_correct_user_kernels_are_exact(name, op, semantics):
    result = gate.run(_user(name, op, semantics))
    assert result.exact, result.first_mismatch


@pytest.mark.parametrize(
    "name, op, semantics, caught_by",
    [
        ("tf_nms_ge", "nms", "tf", "iou-at-threshold-0.5"),
        ("tf_nms_ties_high", "nms", "tf", "equal-scores"),
        ("tv_nms_ge", "nms", "torchvision", "iou-at-threshold-0.5"),
        ("tv_roi_align_off_by_one", "roi-align", "torchvision", "on-border"),
        ("tv_roi_align_xy_swapped", "roi-align", "torchvision", "inside"),
    ],
)
def test_planted_bugs_are_caught(name, op, semantics, caught_by):
    result = gate.run(_user(name, op, semantics))
    assert not result.exact
    assert caught_by in result.failed
    assert "expected" in result.first_mismatch and "got" in result.first_mismatch


def test_the_semantics_differ_where_the_suite_probes_them():
    """float32(0.3) > 0.3: TF (float32 compare) keeps what torchvision (float64) suppresses;
    flipped boxes are boxes to TF and negative areas to torchvision."""
    by_name = {c.name: c for c in gate.cases("nms")}
    for name in ("iou-at-threshold-0.3", "flipped-boxes"):
        inputs = by_name[name].inputs
        tf_keep = specs.reference("nms", "tf", inputs)
        tv_keep = specs.reference("nms", "torchvision", inputs)
        assert not np.array_equal(tf_keep, tv_keep), name
    keep = specs.reference("nms", "tf", by_name["iou-at-threshold-0.3"].inputs)
    assert 1 in keep.tolist()  # IoU == float32(0.3): kept by TF


def test_a_kernel_that_raises_fails_the_case_and_says_so():
    def broken(boxes, scores, max_output_size, iou_threshold, score_threshold):
        if boxes.shape[0] == 0:
            raise IndexError("empty")
        return ops.nms(boxes, scores, iou_threshold, max_output_size, score_threshold)

    impl = impls.Impl("broken", "nms", "tf", "tf", "cpu", "numpy", broken, builtin=False)
    result = gate.run(impl)
    assert result.failed == ["empty"]
    assert "raised IndexError: empty" in result.first_mismatch


def test_compare_names_the_first_difference():
    assert specs.compare(np.array([1, 2, 3]), np.array([1, 2, 3])) is None
    msg = specs.compare(np.array([1, 2, 3]), np.array([1, 3, 2]))
    assert "position 1: expected 2, got 3" in msg
    assert "3 expected, 2 returned" in specs.compare(np.array([1, 2, 3]), np.array([1, 2]))
    a = np.zeros((2, 3), np.float32)
    b = a.copy()
    b[1, 2] = np.float32(1e-7)
    msg = specs.compare(a, b)
    assert "1 of 6 values differ; first at [1, 2]" in msg
    assert "dtype" in specs.compare(a, a.astype(np.float64))
    assert "shape" in specs.compare(a, a[:1])
    nan = np.array([np.nan], np.float32)
    assert specs.compare(nan, nan.copy()) is None


# --------------------------------------------------------------------------------------------
# Workloads
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", list(specs.OPS))
def test_synthetic_workloads_are_seeded_and_sized(op):
    layouts = workloads.LAYOUTS["nms" if "nms" in op else "roi"]
    for layout in layouts:
        a = workloads.synthetic(op, 257, layout, seed=3)
        b = workloads.synthetic(op, 257, layout, seed=3)
        assert a.size == 257
        for key, value in a.inputs.items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(value, b.inputs[key])
        specs.reference(op, specs.OPS[op].semantics[0], a.inputs, backend="cpu")
    with pytest.raises(ValueError, match="does not apply"):
        workloads.synthetic(op, 10, "nope")


def test_ties_layout_ties_almost_every_score():
    w = workloads.synthetic("nms", 5000, "ties")
    assert np.unique(w.inputs["scores"]).size <= 16


def _demo_model(changes=None):
    from npfrcnn import FasterRCNN
    from npfrcnn.cli_train import default_weights
    from npfrcnn.weights.hdf5 import read

    path = default_weights()
    assert path is not None, "weights/demo.h5 is shipped: missing is a packaging bug"
    wf = read(path)
    return FasterRCNN(workloads.config_with(wf.config, changes or {}), wf.classes, wf.tensors)


def test_recorded_c4_workload_reproduces_the_model():
    from npfrcnn.data import synthetic_sample

    model = _demo_model({"rpn_pre_nms_top_n": 600, "rpn_post_nms_top_n": 50})
    image, _, _ = synthetic_sample(5, 0, size=128)
    stages = model.run_stages(image)
    a = workloads.record(model, image)
    # the recorded NMS input gives the model's proposals
    keep = ops.nms(a["nms_boxes"][:, [1, 0, 3, 2]], a["nms_scores"],
                   float(a["nms_iou_threshold"]), 50)
    np.testing.assert_array_equal(a["nms_boxes"][keep], stages["proposals"].boxes)
    np.testing.assert_array_equal(a["roi_rois"][:, 1:], stages["proposals"].boxes)
    # the recorded crops give the model's pooled RoIs
    pooled = ops.crop_and_pool(a["roi_features"], a["crop_boxes"],
                               np.zeros(len(a["crop_boxes"]), np.int32), tuple(a["crop_size"]))
    np.testing.assert_array_equal(pooled, stages["pooled"])
    assert a["batched_boxes"].shape[0] == a["batched_classes"].shape[0] > 0


@pytest.mark.skipif(not HAVE_TV, reason="needs torchvision")
def test_recorded_fpn_workload_reproduces_the_model(tmp_path):
    import torch
    import tv_models

    from npfrcnn import FasterRCNN
    from npfrcnn.weights.convert_torchvision import torchvision_to_hdf5

    tv = tv_models.build("r50-frozen0", small=True, seed=3)
    torch.save(tv.state_dict(), tmp_path / "m.pth")
    changes = {"min_size": tv.transform.min_size[-1], "max_size": tv.transform.max_size}
    torchvision_to_hdf5(tmp_path / "m.pth", tmp_path / "m.h5", "torchvision-r50-fpn",
                        changes=changes)
    model = FasterRCNN.from_hdf5(tmp_path / "m.h5")
    image = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    stages = model.run_stages(image)
    a = workloads.record(model, image)
    props = stages["proposals"]
    keep = ops.torchvision_batched_nms(a["nms_boxes"], a["nms_scores"], a["nms_classes"],
                                       float(a["nms_iou_threshold"]))
    np.testing.assert_array_equal(keep, props.nms)
    pooled = stages["pooled"]
    best = np.bincount(pooled.levels).argmax()
    got = ops.roi_align(a["roi_features"], a["roi_rois"], tuple(a["roi_output_size"]),
                        float(a["roi_spatial_scale"]), int(a["roi_sampling_ratio"]))
    np.testing.assert_array_equal(got, pooled.features[pooled.levels == best])


def test_shipped_workloads_are_what_the_model_saw():
    files = workloads.shipped()
    assert {f.name for f in files} >= {"demo-c4.npz", "demo-c4-12k.npz"}
    assert sum(f.stat().st_size for f in files) < 4 * 2**20  # "small files"
    for f in files:
        a = workloads.load(f)
        k = a["roi_rois"].shape[0]
        keep = ops.nms(a["nms_boxes"][:, [1, 0, 3, 2]], a["nms_scores"],
                       float(a["nms_iou_threshold"]), k)
        np.testing.assert_array_equal(a["nms_boxes"][keep], a["roi_rois"][:, 1:])
        for op in specs.OPS:
            w = workloads.from_file(op, f)
            assert w is not None and w.recorded and w.size > 0, op


def test_a_bad_workload_file_is_refused(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, nms_boxes=np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="not an npfrcnn bench workload"):
        workloads.load(bad)
    with pytest.raises(ValueError, match="no such workload file"):
        workloads.load(tmp_path / "missing.npz")


# --------------------------------------------------------------------------------------------
# Timing and the report
# --------------------------------------------------------------------------------------------


def test_measure_counts_and_spreads():
    calls = []
    t, first = timing.measure(lambda: calls.append(1) or len(calls), repeats=5, warmup=2)
    assert first == 1 and len(calls) == 1 + 2 + 5
    assert len(t.runs_ms) == 5 and t.p10_ms <= t.median_ms <= t.p90_ms
    slow, _ = timing.measure(lambda: __import__("time").sleep(0.02), repeats=9, slow_ms=5)
    assert slow.slow and len(slow.runs_ms) == timing.SLOW_REPEATS


def test_peak_rss_sees_a_large_allocation():
    _, mib = timing.peak_rss(lambda: np.ones(64 * 2**20 // 8).sum())
    if mib is None:
        pytest.skip("/proc/self/clear_refs is not writable here")
    assert mib > 40


def test_measure_refuses_the_cuda_simulator(monkeypatch):
    monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "1")
    with pytest.raises(RuntimeError, match="simulator"):
        timing.measure(lambda: None, device="cuda")


def test_validate_rejects_broken_reports():
    good = {
        "format": report.FORMAT, "op": "nms", "device": "cpu", "command": "", "revision": "x",
        "machine": {}, "versions": {}, "settings": {}, "gate": {}, "notes": [], "records": [],
    }
    assert report.validate(good) == []
    rec = {
        "impl": "a", "op": "nms", "semantics": "tf", "workload": "w", "params": "", "size": 3,
        "exact": True, "first_mismatch": None, "median_ms": 2.0, "p10_ms": 1.0, "p90_ms": 3.0,
        "first_call_ms": 5.0, "repeats": 3, "threads": 1, "device": "cpu", "timer": "t",
        "peak_mem_mb": None, "skipped": None, "machine": "m", "versions": {},
    }
    assert report.validate({**good, "records": [rec]}) == []
    for broken in (
        {**rec, "first_mismatch": "x"},  # exact with a mismatch
        {**rec, "exact": False},  # inexact without one
        {**rec, "p10_ms": 9.0},  # p10 > median
        {**rec, "median_ms": None},  # timed without a time
        {**rec, "size": "3"},
        {k: v for k, v in rec.items() if k != "impl"},
    ):
        assert report.validate({**good, "records": [broken]}), broken
    assert report.validate({**good, "format": "other"})


# --------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------


def _bench(tmp_path, *args):
    out = tmp_path / "r.json"
    rc = main(["bench", *args, "--repeats", "2", "--json", str(out), "-q"])
    data = json.loads(out.read_text()) if out.exists() else None
    if data is not None:
        assert report.validate(data) == []
    return rc, data


def test_cli_end_to_end(tmp_path, capsys):
    rc, data = _bench(tmp_path, "nms", "--sizes", "300,600", "--workload", "none",
                      "--builtins", "npfrcnn-cpu,npfrcnn-tv-cpu", "--impl", f"{KERNELS}:tf_nms")
    assert rc == 0
    assert "| npfrcnn-cpu | tf | synthetic-clustered |" in capsys.readouterr().out
    recs = data["records"]
    assert {(r["impl"], r["size"]) for r in recs} == {
        (i, n) for i in ("npfrcnn-cpu", "npfrcnn-tv-cpu", f"{KERNELS}:tf_nms") for n in (300, 600)
    }
    assert all(r["exact"] and r["median_ms"] is not None and r["repeats"] == 2 for r in recs)
    assert {r["semantics"] for r in recs if r["impl"] == "npfrcnn-tv-cpu"} == {"torchvision"}
    assert data["gate"]["npfrcnn-cpu (tf)"]["exact"]
    assert "numpy" in data["versions"] and data["machine"]["logical_cores"]
    again = report.Report.from_json(data)
    assert report.pivot(again).count("\n") == 3  # header, rule, two sizes
    assert again.to_json() == data


def test_cli_times_and_flags_an_inexact_kernel(tmp_path, capsys):
    rc, data = _bench(tmp_path, "nms", "--sizes", "200", "--workload", "none",
                      "--builtins", "none", "--impl", f"ge={KERNELS}:tf_nms_ge")
    assert rc == 1
    (rec,) = data["records"]
    assert rec["impl"] == "ge" and rec["exact"] is False and rec["median_ms"] is not None
    assert rec["first_mismatch"].startswith("iou-at-threshold-0.5: indices")
    assert "Not exact (still timed)" in capsys.readouterr().out


def test_cli_torchvision_convention_roi_align(tmp_path):
    rc, data = _bench(tmp_path, "roi-align", "--semantics", "torchvision", "--sizes", "4",
                      "--roi-map", "6,8,3", "--output-size", "2,3", "--workload", "none",
                      "--builtins", "npfrcnn", "--impl", f"{KERNELS}:tv_roi_align")
    assert rc == 0
    assert {r["impl"] for r in data["records"]} == {
        "npfrcnn-numpy", "npfrcnn-cpu", f"{KERNELS}:tv_roi_align"
    }
    assert all(r["exact"] and r["params"].startswith("2x3, sr 2") for r in data["records"])


def test_cli_saves_a_workload_and_benches_it(tmp_path):
    from PIL import Image

    from npfrcnn.data import synthetic_sample

    if _demo_model() is None:  # pragma: no cover - skips inside
        return
    image, _, _ = synthetic_sample(5, 0, size=128)
    Image.fromarray(image).save(tmp_path / "img.png")
    wl = tmp_path / "w.npz"
    assert main(["bench", "--save-workload", str(wl), "--set", "rpn_post_nms_top_n=30",
                 str(tmp_path / "img.png")]) == 0
    assert workloads.load(wl)["roi_rois"].shape[0] <= 30
    plot = tmp_path / "p.png"
    args = ["roi-pool", "--workload", str(wl), "--synthetic", "none", "--builtins",
            "npfrcnn-cpu"]
    if __import__("importlib").util.find_spec("matplotlib") is not None:
        args += ["--plot", str(plot)]
    rc, data = _bench(tmp_path, *args)
    assert rc == 0
    (rec,) = data["records"]
    assert rec["workload"] == "w" and rec["exact"]
    if "--plot" in args:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["nmx"],
        ["soft-nms", "--semantics", "torchvision"],
        ["nms", "--impl", "no_such_module_xyz:fn"],
        ["nms", "--impl", f"{KERNELS}:no_such_function"],
        ["nms", "--impl", "missing_colon"],
        ["nms", "--device", "cuda"],  # the tests run under the CUDA simulator
        ["nms", "--device", "cuda", "--inputs", "numpy", "--check-only"],
        ["nms", "--inputs", "numba"],
        ["roi-align", "--synthetic", "ties"],
        ["nms", "--json", "/no/such/folder/r.json"],
        ["nms", "--workload", "/no/such/w.npz"],
        ["nms", "--builtins", "pytorch"],
        ["nms", "--synthetic", "none", "--workload", "none"],
        ["--save-workload", "x.npz"],
    ],
)
def test_cli_usage_errors_before_any_work(args, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "1")
    assert main(["bench", *args]) == 2
    assert "error:" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_bad_sizes_is_an_argparse_error():
    with pytest.raises(SystemExit) as e:
        main(["bench", "nms", "--sizes", "0,10"])
    assert e.value.code == 2


def test_cli_list(capsys):
    assert main(["bench", "nms", "--list", "--builtins", "npfrcnn"]) == 0
    out = capsys.readouterr().out
    assert "npfrcnn-cpu" in out and "iou-at-threshold-0.3" in out


def test_cli_check_only_under_the_cuda_simulator(tmp_path):
    pytest.importorskip("numba.cuda")
    from npfrcnn.kernels.cuda._cuda import SIMULATED

    if not SIMULATED:
        pytest.skip("runs under the simulator only (a real GPU is timed by gpu_ops.py)")
    rc, data = _bench(tmp_path, "crop-and-pool", "--device", "cuda", "--check-only",
                      "--sizes", "3", "--roi-map", "6,8,4", "--workload", "none",
                      "--builtins", "npfrcnn-cuda")
    assert rc == 0
    (rec,) = data["records"]
    assert rec["impl"] == "npfrcnn-cuda" and rec["exact"] and rec["skipped"] == "check-only"
    assert rec["median_ms"] is None


def test_gpu_ops_refuses_the_simulator():
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_ops.py")],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode != 0 and "simulator" in proc.stderr


def test_benchmark_harness_is_the_package_timer():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import _harness
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    t, first = _harness.time_call(lambda: 7, repeats=3)
    assert first == 7 and len(t.runs_s) == 3 and t.compile_s >= 0
    assert "logical cores" in _harness.machine_description()
