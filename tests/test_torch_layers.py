"""torch's norm layers and torchvision's box-head pieces, bit for bit, against torch itself.

``FrozenBatchNorm2d`` (two roundings) and ``nn.BatchNorm2d`` in eval (FMAs) are elementwise, so
npfrcnn's versions must give torch's bits exactly (torchvision-spec 3.2, 3.3); npfrcnn rounds
the per-element FMA through float64, which differs from a fused FMA only on float32 midpoints
(about one element in 2**29, none expected in these ~10**6 values).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from torchvision.ops.misc import FrozenBatchNorm2d  # noqa: E402

from npfrcnn import ops  # noqa: E402


def _layer(cls, c, seed, eps):
    g = torch.Generator().manual_seed(seed)
    m = cls(c, eps=eps)
    with torch.no_grad():
        m.weight.copy_(torch.randn(c, generator=g))
        m.bias.copy_(torch.randn(c, generator=g))
        m.running_mean.copy_(torch.randn(c, generator=g))
        m.running_var.copy_(torch.rand(c, generator=g) * 3 + 1e-3)
    return m.eval()


def _args(m):
    return [t.detach().numpy() for t in (m.weight, m.bias, m.running_mean, m.running_var)]


@pytest.mark.parametrize("eps", [0.0, 1e-5, 1e-3])
@pytest.mark.parametrize("threads", [1, 2])
def test_frozen_batch_norm_bitwise(eps, threads):
    torch.set_num_threads(threads)
    m = _layer(FrozenBatchNorm2d, 67, 1, eps)
    x = torch.randn(2, 67, 37, 41, generator=torch.Generator().manual_seed(2)) * 10
    with torch.no_grad():
        ref = m(x).permute(0, 2, 3, 1).numpy()
    got = ops.frozen_batch_norm(x.permute(0, 2, 3, 1).numpy(), *_args(m), eps=eps)
    np.testing.assert_array_equal(got, ref)
    torch.set_num_threads(2)


@pytest.mark.parametrize("eps", [1e-5, 1e-3])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_batch_norm_eval_bitwise(eps, channels_last, threads):
    torch.set_num_threads(threads)
    m = _layer(torch.nn.BatchNorm2d, 256, 3, eps)
    x = torch.randn(2, 256, 25, 33, generator=torch.Generator().manual_seed(4)) * 10
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = m(x).permute(0, 2, 3, 1).contiguous().numpy()
    got = ops.torch_batch_norm(x.permute(0, 2, 3, 1).contiguous().numpy(), *_args(m), eps=eps)
    np.testing.assert_array_equal(got, ref)
    torch.set_num_threads(2)


def test_bad_channel_count_is_an_error():
    m = _layer(FrozenBatchNorm2d, 8, 1, 1e-5)
    with pytest.raises(ValueError, match="weight must be"):
        ops.frozen_batch_norm(np.zeros((1, 2, 2, 5), np.float32), *_args(m))
