#!/usr/bin/env bash
# Every check the CUDA kernels need on a real GPU, in one command (GPU time is scarce):
#
#     NPFRCNN_REVISION=<commit> bash benchmarks/gpu_session.sh [OUTDIR]
#
# (NPFRCNN_REVISION names the commit in RESULTS.md where the tree was copied without .git.)
# 1. installs npfrcnn without dependencies (numba-cuda, torch and torchvision must be there);
# 2. runs the CUDA tests on the GPU: full-size parity with the reference, parity with
#    torchvision, the no-FMA check on the loaded PTX, and every op's backend="cuda" tests;
# 3. runs compute-sanitizer (racecheck, then memcheck) over every kernel on small inputs;
# 4. runs benchmarks/gpu_ops.py --write, which replaces the GPU section of RESULTS.md.
# Logs and RESULTS.md are copied to OUTDIR (default: gpu-session/). A failing step is reported
# and the next one still runs; the exit status is that of the first failure.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-session}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 NPFRCNN_TEST_GPU=1 NUMBA_ENABLE_CUDASIM=0
status=0
step() {  # step NAME COMMAND...: run, log to OUTDIR/NAME.log, remember the first failure
    local name=$1
    shift
    echo "== $name: $*"
    "$@" 2>&1 | tee "$out/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc"
    if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then status=$rc; fi
}

step setup bash -c 'nvidia-smi; python3 -m pip install -q --no-deps --no-build-isolation -e . \
    && python3 -c "import numba, numba_cuda, torch, torchvision; print(numba.__version__, \
numba_cuda.__version__, torch.__version__, torchvision.__version__)"'
step tests python3 -m pytest -q -p no:cacheprovider --run-slow -rs \
    tests/test_cuda_kernels.py tests/test_nms.py tests/test_crop_and_resize.py \
    tests/test_roi_align.py tests/test_roi_pool.py tests/test_backend.py tests/test_device_arrays.py
san="${TMPDIR:-/tmp}/npfrcnn_sanitize.py"  # outside OUTDIR: only logs and results go there
cat > "$san" <<'EOF'
# Every kernel once, production block size, several blocks per launch.
import numpy as np

from npfrcnn.kernels.cuda import crop_and_resize, nms, roi_align, roi_pool

rng = np.random.default_rng(0)
yx = rng.uniform(0, 500, (3000, 2))
boxes = np.concatenate([yx, yx + rng.uniform(8, 120, (3000, 2))], 1).astype(np.float32)
scores = rng.integers(0, 100, 3000).astype(np.float32)
print("nms", len(nms.nms(boxes, scores, 0.5)), "kept")
print("batched", len(nms.batched_nms(boxes, scores, rng.integers(0, 5, 3000), 0.5, 50)), "kept")
feats = rng.standard_normal((1, 38, 63, 64)).astype(np.float32)
norm = rng.uniform(-0.1, 1.1, (200, 4)).astype(np.float32)
idx = np.zeros(200, np.int32)
print("crop", crop_and_resize.crop_and_resize(feats, norm, idx, 14, 14, False, 0.0).shape)
print("crop_and_pool", crop_and_resize.crop_and_pool(feats, norm, idx, 14, 14, 0.0).shape)
pix = np.concatenate([np.zeros((200, 1)), rng.uniform(-20, 1000, (200, 4))], 1).astype(np.float32)
print("roi_align", roi_align.roi_align(feats, pix, 7, 1 / 16, 0, True).shape)
print("roi_pool", roi_pool.roi_pool(feats, pix, 7, 1 / 16).shape)
EOF
step racecheck compute-sanitizer --tool racecheck --error-exitcode 3 python3 "$san"
step memcheck compute-sanitizer --tool memcheck --error-exitcode 3 python3 "$san"
step bench python3 benchmarks/gpu_ops.py --write --out "$out/gpu_ops.md"
cp benchmarks/RESULTS.md "$out/RESULTS.md"
echo "first failing status: $status"
exit "$status"
