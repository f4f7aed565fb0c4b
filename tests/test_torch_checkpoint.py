"""Reading torch checkpoints and safetensors without torch (``npfrcnn.weights.torch_checkpoint``).

torch is the oracle: files are written by ``torch.save`` (and safetensors), and every tensor read
must equal, bit for bit, the one saved. Malformed and malicious files are built from those files
or from hand-written pickle opcodes.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_same

from npfrcnn.weights.torch_checkpoint import CheckpointError, read_checkpoint

torch = pytest.importorskip("torch")
nn = torch.nn


def expected(t):
    """The array a torch tensor must read as: its own dtype, bfloat16 as float32."""
    t = t.detach().resolve_neg().resolve_conj()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.numpy()


def assert_bitwise(actual: np.ndarray, t) -> None:
    e = expected(t)
    assert_same(actual, e)
    assert actual.flags.c_contiguous and actual.dtype.isnative
    assert actual.tobytes() == np.ascontiguousarray(e).tobytes()  # bitwise, NaN payloads too


def assert_state_dict(ckpt, sd) -> None:
    assert list(ckpt.tensors) == list(sd)  # every key, in the file's order
    for k, t in sd.items():
        assert_bitwise(ckpt.tensors[k], t)


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5)
    )


def trained(model):
    """One Adam step in training mode: BN statistics move, the optimizer holds tensor state."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[3, 5])  # a Counter inside
    model.train()
    model(torch.randn(2, 3, 6, 6)).sum().backward()
    opt.step()
    sched.step()
    return opt, sched


def save(obj, path: Path, **kw) -> Path:
    torch.save(obj, path, **kw)
    return path


# Hand-written pickles and archives ----------------------------------------------------------


def ops(x) -> bytes:
    """The opcodes that push plain value ``x`` (protocol 2, without PROTO and STOP)."""
    return pickle.dumps(x, protocol=2)[2:-1]


def glob(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def tensor_ops(key="0", stype="FloatStorage", numel=4, offset=0, size=(4,), stride=(1,)) -> bytes:
    """Opcodes that push ``_rebuild_tensor_v2(storage key, offset, size, stride, False, {})``."""
    storage = b"(" + ops("storage") + glob("torch", stype) + ops(key) + ops("cpu") + ops(numel)
    return (
        glob("torch._utils", "_rebuild_tensor_v2") + b"(" + storage + b"tQ" + ops(offset)
        + ops(tuple(size)) + ops(tuple(stride)) + b"\x89" + glob("collections", "OrderedDict")
        + b")Rt" + b"R"
    )


def dict_pickle(*entries: tuple[str, bytes]) -> bytes:
    """A pickle of ``{name: <object pushed by the opcodes>}``."""
    body = b"".join(ops(name) + value + b"s" for name, value in entries)
    return b"\x80\x02}" + body + b"."


def write_torch_zip(
    path: Path, pkl: bytes, records: dict[str, bytes] | None = None, *, top="archive",
    byteorder: str | None = "little",
) -> Path:
    """A zip laid out as torch.save lays it out, holding the given pickle and storages."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{top}/data.pkl", pkl)
        if byteorder is not None:
            z.writestr(f"{top}/byteorder", byteorder)
        for key, data in (records or {}).items():
            z.writestr(f"{top}/data/{key}", data)
        z.writestr(f"{top}/version", "3\n")
    return path


def rewrite_zip(
    src: Path, dst: Path, change: Callable[[str, bytes], bytes | None],
    compression: int = zipfile.ZIP_STORED,
) -> Path:
    """Copy a zip member by member; ``change(name, data)`` returns the new data, or None to drop."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression) as zout:
        for info in zin.infolist():
            data = change(info.filename, zin.read(info.filename))
            if data is not None:
                zout.writestr(info.filename, data)
    return dst


def f32(*values: float) -> bytes:
    return np.asarray(values, "<f4").tobytes()


# Files torch.save writes ----------------------------------------------------------------------


def test_resnet_state_dict_bitwise(tmp_path):
    models = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    model = models.resnet.ResNet(models.resnet.Bottleneck, [1, 1, 1, 1], width_per_group=8)
    model(torch.randn(2, 3, 32, 32))  # training mode: BN statistics and num_batches_tracked move
    sd = model.state_dict()
    path = save(sd, tmp_path / "resnet.pth")
    ckpt = read_checkpoint(path)
    assert_state_dict(ckpt, sd)
    assert ckpt.source_format == "torch-zip" and ckpt.container is None
    assert ckpt.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    nbt = ckpt.tensors["bn1.num_batches_tracked"]
    assert nbt.shape == () and nbt.dtype == np.int64 and nbt == 1
    # _metadata: every module's _version (BatchNorm is at 2, Conv2d at 1, the root at 1).
    assert ckpt.metadata_versions == {k: v["version"] for k, v in sd._metadata.items()}
    assert ckpt.metadata_versions["bn1"] == 2 and ckpt.metadata_versions["conv1"] == 1
    assert ckpt.metadata_versions[""] == 1
    assert "tensors" not in repr(ckpt)  # the repr stays one line


def test_faster_rcnn_state_dict(tmp_path):
    """The real target: torchvision's fasterrcnn_resnet50_fpn (spec 1.3: 348 entries)."""
    detection = pytest.importorskip("torchvision.models.detection")
    model = detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    sd = model.state_dict()
    ckpt = read_checkpoint(save(sd, tmp_path / "frcnn.pth"))
    assert len(ckpt.tensors) == 348
    assert sum(ckpt.tensors[k].size for k, _ in model.named_parameters()) == 41_808_406
    assert_state_dict(ckpt, sd)
    assert ckpt.tensors["roi_heads.box_head.fc6.weight"].shape == (1024, 12544)
    # The versions that decide torchvision's legacy key renames (spec 1.3).
    assert ckpt.metadata_versions["rpn.head"] == 2
    assert ckpt.metadata_versions["backbone.fpn"] == 2


@pytest.mark.parametrize("container", ["model", "state_dict", "model_state_dict"])
def test_training_checkpoint(tmp_path, container):
    model = small_net()
    opt, sched = trained(model)
    sd = model.state_dict()
    ckpt_obj = {
        container: sd, "optimizer": opt.state_dict(), "lr_scheduler": sched.state_dict(),
        "epoch": 3, "args": argparse.Namespace(lr=0.02, data_path="/x", aspect_ratio_group=[3]),
    }
    assert any(isinstance(v, torch.Tensor) for s in opt.state_dict()["state"].values()
               for v in s.values())  # the optimizer's own tensors are in the file, and ignored
    ckpt = read_checkpoint(save(ckpt_obj, tmp_path / "ckpt.pth"))
    assert ckpt.container == container
    assert_state_dict(ckpt, sd)
    assert ckpt.metadata_versions["1"] == 2  # the BatchNorm2d


def test_tensor_layouts_and_dtypes(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    big = torch.arange(100, dtype=torch.float64)
    sd = {
        "transposed": base.t(),  # non-contiguous
        "strided": base[::2, 1::3],  # offset and steps
        "row": base[2],  # shares base's storage, offset 12
        "col": base[:, 5],  # shares it too, strided
        "tail": big[90:],  # storage offset
        "scalar_i64": torch.tensor(7, dtype=torch.int64),
        "scalar_f32": torch.tensor(-0.5),
        "empty": torch.zeros(0, 3),
        "empty_view": base[:, :0],
        "f16": torch.tensor([1.5, -2.25, 65504.0], dtype=torch.float16),
        "bf16": torch.tensor([1.0, -3.140625, 1e-20, float("inf")], dtype=torch.bfloat16),
        "bf16_view": torch.arange(12, dtype=torch.bfloat16).reshape(3, 4).t(),
        "i64": torch.tensor([-(2**62), 2**62, 3]),
        "i32": torch.tensor([1, -2], dtype=torch.int32),
        "i16": torch.tensor([1, -2], dtype=torch.int16),
        "i8": torch.tensor([-128, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 255], dtype=torch.uint8),
        "u16": torch.tensor([0, 65535], dtype=torch.uint16),  # torch >= 2.3: _rebuild_tensor_v3
        "bool": torch.tensor([True, False, True]),
        "c64": torch.tensor([1 + 2j, -3j], dtype=torch.complex64),
        "nan": torch.tensor([float("nan"), -0.0]),
        "param": nn.Parameter(torch.ones(2, 2)),
        "neg_view": torch._neg_view(torch.tensor([1.0, -2.0])),  # the neg bit is applied
        "conj_view": torch.tensor([1 + 1j], dtype=torch.complex64).conj(),
    }
    ckpt = read_checkpoint(save(sd, tmp_path / "views.pth"))
    assert_state_dict(ckpt, sd)
    assert ckpt.tensors["bf16"].dtype == np.float32
    assert ckpt.metadata_versions == {}  # a plain dict carries no _metadata
    assert all(a.flags.writeable for a in ckpt.tensors.values())  # copies, not views of the file


def test_tensors_read_as_separate_copies(tmp_path):
    base = torch.arange(6.0)
    ckpt = read_checkpoint(save({"a": base, "b": base[1:3]}, tmp_path / "shared.pth"))
    a, b = ckpt.tensors["a"], ckpt.tensors["b"]
    a[1] = 100.0  # writable, and b does not change with it
    assert b[0] == 1.0 and not np.shares_memory(a, b)


def test_legacy_format(tmp_path):
    model = small_net()
    trained(model)
    sd = model.state_dict()
    base = torch.arange(12.0).reshape(3, 4)
    extra = {"t": base.t(), "row": base[1], "half": torch.ones(3, dtype=torch.float16),
             "bf16": torch.tensor([2.5], dtype=torch.bfloat16), "n": torch.tensor(5)}
    path = save({"model": sd, "extra": extra, "epoch": 1}, tmp_path / "old.pth",
                _use_new_zipfile_serialization=False)
    ckpt = read_checkpoint(path)
    assert ckpt.source_format == "torch-legacy" and ckpt.container == "model"
    assert_state_dict(ckpt, sd)
    assert ckpt.metadata_versions["1"] == 2
    assert_state_dict(read_checkpoint(save(extra, tmp_path / "old2.pth",
                                           _use_new_zipfile_serialization=False)), extra)


def test_legacy_truncated_and_tar(tmp_path):
    path = save({"w": torch.arange(50.0)}, tmp_path / "old.pth",
                _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    for cut in (20, 100, len(data) // 2, len(data) - 1):
        (tmp_path / "cut.pth").write_bytes(data[:cut])
        with pytest.raises(CheckpointError):
            read_checkpoint(tmp_path / "cut.pth")
    with tarfile.open(tmp_path / "ancient.pth", "w") as tar:  # torch < 0.4 wrote a tar
        for name in ("storages", "tensors", "pickle"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"\x00"))
    with pytest.raises(CheckpointError, match="tar format of torch < 0.4"):
        read_checkpoint(tmp_path / "ancient.pth")


def test_gpu_saved_location_is_irrelevant(tmp_path):
    sd = {"w": torch.arange(6.0).reshape(2, 3), "n": torch.tensor(2)}
    path = save(sd, tmp_path / "cpu.pth")
    cpu, cuda = b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0"  # BINUNICODE strings
    gpu = rewrite_zip(path, tmp_path / "gpu.pth",
                      lambda n, d: d.replace(cpu, cuda) if n.endswith("data.pkl") else d)
    with zipfile.ZipFile(gpu) as z:
        assert cuda in z.read("cpu/data.pkl")
    assert_state_dict(read_checkpoint(gpu), torch.load(gpu, map_location="cpu", weights_only=True))
    assert_state_dict(read_checkpoint(gpu), sd)
    # Legacy files saved from a GPU name the storage types torch.cuda.*Storage.
    old = save(sd, tmp_path / "old.pth", _use_new_zipfile_serialization=False).read_bytes()
    old_gpu = tmp_path / "old_gpu.pth"
    old_gpu.write_bytes(old.replace(b"ctorch\nFloatStorage\n", b"ctorch.cuda\nFloatStorage\n")
                        .replace(b"ctorch\nLongStorage\n", b"ctorch.cuda\nLongStorage\n")
                        .replace(cpu, cuda))
    assert old_gpu.read_bytes().count(b"torch.cuda") == 2
    assert_state_dict(read_checkpoint(old_gpu), sd)


_ITEMSIZE = {"FloatStorage": 4, "LongStorage": 8, "HalfStorage": 2, "BFloat16Storage": 2,
             "DoubleStorage": 8, "ByteStorage": 1}


def storage_types(pkl: bytes) -> dict[str, str]:
    """Storage key -> storage class name, read from a data.pkl we wrote (test-only unpickler)."""
    found: dict[str, str] = {}

    class Anything:
        def __init__(self, name=""):
            self.name = name

        def __call__(self, *args):
            return Anything()

        def __setstate__(self, state):
            pass

    class Lister(pickle.Unpickler):
        def find_class(self, module, name):
            return Anything(name)

        def persistent_load(self, pid):
            found[pid[2]] = pid[1].name

    Lister(io.BytesIO(pkl)).load()
    return found


def test_big_endian_byteorder(tmp_path):
    sd = {"f": torch.tensor([1.0, -2.5, 3e30]), "i": torch.tensor([1, -2, 2**40]),
          "h": torch.tensor([0.5, -1.0], dtype=torch.float16),
          "b": torch.tensor([1.5, -7.0], dtype=torch.bfloat16),
          "u": torch.tensor([1, 2], dtype=torch.uint8)}
    path = save(sd, tmp_path / "le.pth")
    with zipfile.ZipFile(path) as z:
        types = storage_types(z.read("le/data.pkl"))
    assert len(types) == len(sd)  # one storage per tensor

    def swap(name: str, data: bytes) -> bytes:
        if name.endswith("/byteorder"):
            return b"big"
        if "/data/" in name:
            size = _ITEMSIZE[types[name.rsplit("/", 1)[1]]]
            return np.frombuffer(data, f"<u{size}").astype(f">u{size}").tobytes()
        return data

    be = rewrite_zip(path, tmp_path / "be.pth", swap)
    assert_state_dict(read_checkpoint(be), torch.load(be, weights_only=True))  # torch agrees
    assert_state_dict(read_checkpoint(be), sd)


def test_compressed_members_and_content_not_extension(tmp_path):
    sd = {"w": torch.arange(10.0)}
    path = save(sd, tmp_path / "a.pth")
    deflated = rewrite_zip(path, tmp_path / "deflated.safetensors", lambda n, d: d,
                           zipfile.ZIP_DEFLATED)
    ckpt = read_checkpoint(deflated)
    assert ckpt.source_format == "torch-zip"
    assert_state_dict(ckpt, sd)


def test_hand_written_archive_matches_torch(tmp_path):
    """The test helpers write archives torch itself reads the same way."""
    pkl = dict_pickle(("w", tensor_ops(numel=4, offset=1, size=(2,), stride=(2,))))
    path = write_torch_zip(tmp_path / "hand.pth", pkl, {"0": f32(1, 2, 3, 4)}, byteorder=None)
    assert_state_dict(read_checkpoint(path), torch.load(path, weights_only=True))
    assert read_checkpoint(path).tensors["w"].tolist() == [2.0, 4.0]


# safetensors ----------------------------------------------------------------------------------


def test_safetensors_torch(tmp_path):
    st_torch = pytest.importorskip("safetensors.torch")
    sd = {
        "w": torch.randn(3, 4), "h": torch.randn(5).half(), "b": torch.randn(2, 2).bfloat16(),
        "i": torch.tensor([1, -2]), "flag": torch.tensor([True, False]),
        "u8": torch.tensor([7], dtype=torch.uint8), "s": torch.tensor(3.5),
        "e": torch.zeros(0, 2),
    }
    st_torch.save_file(sd, tmp_path / "m.safetensors", metadata={"format": "pt"})
    ckpt = read_checkpoint(tmp_path / "m.safetensors")
    assert ckpt.source_format == "safetensors" and ckpt.container is None
    assert ckpt.metadata_versions == {}
    assert set(ckpt.tensors) == set(sd)
    for k, t in sd.items():
        assert_bitwise(ckpt.tensors[k], t)
    os.rename(tmp_path / "m.safetensors", tmp_path / "m.pth")  # the content decides
    assert read_checkpoint(tmp_path / "m.pth").source_format == "safetensors"


def test_safetensors_numpy(tmp_path):
    st_numpy = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(0)
    arrays = {"a": rng.standard_normal((2, 3)).astype(np.float32), "d": np.arange(4.0),
              "u": np.arange(3, dtype=np.uint16), "c": np.array([1 + 2j], np.complex64)}
    st_numpy.save_file(arrays, tmp_path / "n.safetensors")
    ckpt = read_checkpoint(tmp_path / "n.safetensors")
    for k, a in arrays.items():
        assert_same(ckpt.tensors[k], a)


def safetensors_bytes(header: dict | bytes, data: bytes = b"", length: int | None = None) -> bytes:
    import json

    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(h) if length is None else length) + h + data


@pytest.mark.parametrize(
    "content, message",
    [
        (safetensors_bytes({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, f32(1)),
         "spans bytes"),  # data cut short
        (safetensors_bytes({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}},
                           f32(1, 2)), "needs 12 bytes"),
        (safetensors_bytes({"w": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 4]}}, f32(1)),
         "unknown dtype"),
        (safetensors_bytes({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, f32(1)),
         "spans bytes"),
        (safetensors_bytes({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, f32(1)),
         "header entry"),
        (safetensors_bytes({"w": [1, 2]}, f32(1)), "header entry"),
        (safetensors_bytes(b'{"w": {"dtype": "F32",', f32(1)), "JSON header"),
        (safetensors_bytes(b'{"w": 1, "w": 2}'), "appears twice"),
        (safetensors_bytes(b"{}", length=10**6), "header claims"),
        (safetensors_bytes({"__metadata__": {"a": "b"}}), "holds no tensors"),
        (safetensors_bytes({"w": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}},
                           b"\x00"), "NumPy cannot hold"),
    ],
)
def test_safetensors_damaged(tmp_path, content, message):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as e:
        read_checkpoint(path)
    assert str(path) in str(e.value)


# Refused pickles --------------------------------------------------------------------------------


class Reducer:
    """Pickles as ``fn(*args)``: what a malicious checkpoint holds."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def test_malicious_reduce_is_refused_and_nothing_runs(tmp_path):
    target = tmp_path / "pwned"
    pkl = dict_pickle(("w", tensor_ops()), ("x", glob("builtins", "open")
                                             + ops((str(target), "w")) + b"R"))
    pickle.loads(pkl.replace(tensor_ops(), ops(0)))  # the payload is live: plain pickle runs it
    assert target.exists()
    target.unlink()
    path = write_torch_zip(tmp_path / "evil.pth", pkl, {"0": f32(1, 2, 3, 4)})
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(path)
    msg = str(e.value)
    assert "'builtins.open'" in msg and "only tensor state dicts" in msg
    assert "torch.save(model.state_dict(), path)" in msg and str(path) in msg
    assert not target.exists()


def test_malicious_object_saved_by_torch(tmp_path):
    made = tmp_path / "made_by_pickle"
    path = save({"model": {"w": torch.ones(2)}, "extra": Reducer(os.makedirs, str(made))},
                tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"'(os|posix)\.makedirs'"):
        read_checkpoint(path)
    assert not made.exists()
    with pytest.raises(pickle.UnpicklingError):  # torch's weights_only refuses it too
        torch.load(path, weights_only=True)
    assert not made.exists()


def test_refused_module_is_never_imported(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "npfrcnn_evil_mod.py").write_text(f"open({str(marker)!r}, 'w').close()\nf = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    pkl = dict_pickle(("w", glob("npfrcnn_evil_mod", "f")))
    with pytest.raises(CheckpointError, match="'npfrcnn_evil_mod.f'"):
        read_checkpoint(write_torch_zip(tmp_path / "evil.pth", pkl))
    assert not marker.exists() and "npfrcnn_evil_mod" not in sys.modules


@pytest.mark.parametrize(
    "module, name",
    [
        ("os", "system"), ("posix", "system"), ("builtins", "eval"), ("builtins", "getattr"),
        ("__builtin__", "eval"), ("subprocess", "Popen"), ("__main__", "Foo"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("copyreg", "_reconstructor"), ("torch", "load"), ("torch.nn.modules.linear", "Linear"),
        ("collections", "defaultdict"), ("pickle", "loads"),
    ],
)
def test_forbidden_globals(tmp_path, module, name):
    pkl = dict_pickle(("w", tensor_ops()), ("x", glob(module, name) + ops(("echo hi",)) + b"R"))
    path = write_torch_zip(tmp_path / "evil.pth", pkl, {"0": f32(1, 2, 3, 4)})
    shown = "builtins" if module == "__builtin__" else module
    with pytest.raises(CheckpointError, match=f"'{shown}.{name}'.*only tensor state dicts"):
        read_checkpoint(path)


def test_protocol_4_globals_are_checked_too(tmp_path):
    pkl = (b"\x80\x04" + b"\x8c\x02os\x94\x8c\x06system\x94\x93" + ops(("echo hi",)) + b"R.")
    with pytest.raises(CheckpointError, match="'os.system'"):
        read_checkpoint(write_torch_zip(tmp_path / "p4.pth", pkl))


@pytest.mark.parametrize(
    "value, message",
    [
        # BUILD (set state) on a rebuild function, a storage type, a dtype: refused.
        (glob("torch._utils", "_rebuild_tensor_v2") + b"}" + ops("x") + ops(1) + b"sb",
         "sets the state of torch._utils._rebuild_tensor_v2"),
        (glob("torch", "FloatStorage") + b"}" + ops("dtype") + ops(1) + b"sb",
         "sets the state of torch.FloatStorage"),
        (glob("torch", "float32") + b"}" + ops("name") + ops("x") + b"sb",
         "sets the state of torch.float32"),
        (b"]}" + ops("a") + ops(1) + b"sb", "pickle cannot be read"),  # BUILD on a list
        (glob("torch", "Tensor") + b")R", "calls torch.Tensor"),
        (glob("collections", "OrderedDict") + b")\x81", "pickle cannot be read"),  # NEWOBJ
        (glob("torch._utils", "_rebuild_tensor_v2") + ops((1, 2)) + b"R", "arguments"),
        (glob("torch._utils", "_rebuild_qtensor") + b")R", "quantized tensors"),
        (glob("builtins", "bytearray") + ops((10**12,)) + b"R", "bytearray is called"),
        (glob("_codecs", "encode") + ops(("x", "rot13")) + b"R", "_codecs.encode"),
        (b"(" + ops("module") + ops("m") + b"tQ", "whole pickled nn.Module"),
    ],
)
def test_build_and_reduce_of_stand_ins_refused(tmp_path, value, message):
    path = write_torch_zip(tmp_path / "bad.pth", dict_pickle(("x", value)))
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(path)
    # Nothing was poisoned: a good file still reads the same afterwards.
    good = write_torch_zip(tmp_path / "good.pth", dict_pickle(("w", tensor_ops())),
                           {"0": f32(1, 2, 3, 4)})
    assert read_checkpoint(good).tensors["w"].tolist() == [1, 2, 3, 4]


def test_other_opcodes_reaching_globals_are_checked(tmp_path):
    import copyreg

    copyreg.add_extension("os", "system", 0xF0)  # EXT1 0xF0 would mean os.system
    try:
        ext = b"\x80\x02\x82\xf0" + ops(("echo hi",)) + b"R."
        with pytest.raises(CheckpointError, match="'os.system'"):
            read_checkpoint(write_torch_zip(tmp_path / "ext.pth", ext))
    finally:
        copyreg.remove_extension("os", "system", 0xF0)
    inst = b"(S'echo hi'\nios\nsystem\n."  # protocol 0 INST
    with pytest.raises(CheckpointError, match="'os.system'"):
        read_checkpoint(write_torch_zip(tmp_path / "inst.pth", inst))


def test_messages_never_repr_what_the_pickle_built(tmp_path):
    """A list of 6 references to one list, nested 40 deep, has a repr of 6**40 characters."""
    nest = b"]"
    for _ in range(40):
        nest = b"(" + nest + b"q\x00" + b"h\x00" * 5 + b"l"
    bad_meta = tensor_ops()[:-2] + b"}" + ops("zzz") + nest + b"s" + b"tR"  # 7th argument
    path = write_torch_zip(tmp_path / "bomb.pth", dict_pickle(("w", bad_meta)),
                           {"0": f32(1, 2, 3, 4)})
    with pytest.raises(CheckpointError, match="metadata a dict of 1 items"):
        read_checkpoint(path)


@pytest.mark.parametrize(
    "tensor, message",
    [
        (tensor_ops(numel=10**400), "an int of 1329 bits, not an int64"),
        (tensor_ops(numel="4"), "a storage's size is '4'"),
        (tensor_ops(size=(True,)), "size is True"),
        (tensor_ops(stride=(-1,)), r"stride \[-1\]"),
        (tensor_ops(numel=1, size=(1,) * 40, stride=(1,) * 40), "40 dimensions"),
        (tensor_ops(numel=1, size=(0, 2**62), stride=(1, 1)), r"size \[0, 4611686018427387904\]"),
        (tensor_ops(stype="UntypedStorage"), "untyped storage has no dtype"),
    ],
)
def test_bad_tensor_records(tmp_path, tensor, message):
    path = write_torch_zip(tmp_path / "bad.pth", dict_pickle(("w", tensor)), {"0": f32(1, 2, 3, 4)})
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(path)


def test_plain_data_beside_the_state_dict_is_accepted(tmp_path):
    model = b"}" + ops("w") + tensor_ops() + b"s"
    pkl = dict_pickle(
        ("model", model),
        ("bytes", glob("_codecs", "encode") + ops(("abc", "latin1")) + b"R"),
        ("set", glob("builtins", "set") + ops(([1, 2],)) + b"R"),
        ("counter", glob("collections", "Counter") + ops(({3: 1},)) + b"R"),
        ("device", glob("torch", "device") + ops(("cuda", 0)) + b"R"),
        ("size", glob("torch", "Size") + ops(((1, 2),)) + b"R"),
        ("dtype", glob("torch", "float16")),
    )
    ckpt = read_checkpoint(write_torch_zip(tmp_path / "ok.pth", pkl, {"0": f32(1, 2, 3, 4)}))
    assert ckpt.container == "model" and ckpt.tensors["w"].tolist() == [1, 2, 3, 4]


def test_whole_model_and_namespace_in_state_dict_refused(tmp_path):
    with pytest.raises(CheckpointError, match=r"'torch\.nn\.modules\.linear\.Linear'") as e:
        read_checkpoint(save(nn.Linear(2, 2), tmp_path / "model.pth"))
    assert "torch.save(model.state_dict(), path)" in str(e.value)
    bad = {"w": torch.ones(1), "args": argparse.Namespace(lr=1)}
    with pytest.raises(CheckpointError, match="'args' -> argparse.Namespace"):
        read_checkpoint(save(bad, tmp_path / "ns.pth"))


# Not a state dict -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "obj, message",
    [
        ({"w": torch.ones(1), "epoch": 3}, r"1 entries that are not name -> tensor: 'epoch' -> an"),
        ({0: torch.ones(1)}, r"0 -> tensor"),
        ({"optimizer": {"state": {}}, "epoch": 3}, r"holds no state dict.*'optimizer', 'epoch'"),
        ({"model": {"w": torch.ones(1), "n": None}}, r"under 'model'.*'n' -> None"),
        ({"model": {}}, "under 'model' holds no tensors"),
        ({}, "holds no state dict"),
        ([torch.ones(1)], "holds a list, not a state dict"),
        (torch.ones(3), "holds tensor"),
        ({"f8": torch.zeros(2, dtype=torch.float8_e4m3fn)}, "'f8' has dtype torch.float8_e4m3fn"),
    ],
)
def test_not_a_state_dict(tmp_path, obj, message):
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(save(obj, tmp_path / "x.pth"))


# Damaged files --------------------------------------------------------------------------------


@pytest.fixture()
def good_zip(tmp_path):
    sd = {"w": torch.arange(64.0).reshape(8, 8), "b": torch.arange(8.0)}
    return save(sd, tmp_path / "good.pth")


def test_truncated_zip(tmp_path, good_zip):
    data = good_zip.read_bytes()
    for cut in (3, 10, 100, len(data) // 3, len(data) // 2, len(data) - 22, len(data) - 1):
        (tmp_path / "cut.pth").write_bytes(data[:cut])
        with pytest.raises(CheckpointError) as e:
            read_checkpoint(tmp_path / "cut.pth")
        assert "cut.pth" in str(e.value)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda n, d: None if n.endswith("data.pkl") else d, "without <folder>/data.pkl"),
        (lambda n, d: None if n.endswith("data/0") else d, "no record 'good/data/0'"),
        (lambda n, d: d[:100] if n.endswith("data/0") else d, "holds 100 bytes"),
        (lambda n, d: d[:-3] if n.endswith("data.pkl") else d, "pickle cannot be read"),
        (lambda n, d: b"middle" if n.endswith("byteorder") else d, "byteorder record"),
    ],
)
def test_damaged_members(tmp_path, good_zip, change, message):
    bad = rewrite_zip(good_zip, tmp_path / "bad.pth", change)
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(bad)


def test_storage_shorter_than_tensor(tmp_path):
    pkl = dict_pickle(("w", tensor_ops(numel=4, offset=2, size=(3,), stride=(1,))))
    path = write_torch_zip(tmp_path / "short.pth", pkl, {"0": f32(1, 2, 3, 4)})
    with pytest.raises(CheckpointError, match="tensor 'w'.*needs 5 elements.*holds 4"):
        read_checkpoint(path)
    pkl = dict_pickle(("w", tensor_ops(numel=1, size=(10**6, 10**6), stride=(0, 0))))
    path = write_torch_zip(tmp_path / "bomb.pth", pkl, {"0": f32(1)})
    with pytest.raises(CheckpointError, match="broadcast view"):
        read_checkpoint(path)


def test_flipped_byte_fails_the_crc(tmp_path, good_zip):
    with zipfile.ZipFile(good_zip) as z:
        info = z.getinfo("good/data/0")
    data = bytearray(good_zip.read_bytes())
    name_len, extra_len = struct.unpack_from("<2H", data, info.header_offset + 26)
    data[info.header_offset + 30 + name_len + extra_len + 5] ^= 0xFF
    (tmp_path / "flipped.pth").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="'good/data/0' is damaged.*CRC"):
        read_checkpoint(tmp_path / "flipped.pth")


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_torchscript_archive_refused(tmp_path):
    scripted = torch.jit.script(nn.Linear(2, 2))
    scripted.save(str(tmp_path / "ts.pt"))
    with pytest.raises(CheckpointError, match=r"TorchScript.*state_dict\(\)"):
        read_checkpoint(tmp_path / "ts.pt")


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="is a folder"):
        read_checkpoint(tmp_path)
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        read_checkpoint(tmp_path / "empty.pth")
    (tmp_path / "garbage.pth").write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(CheckpointError, match="neither a torch.save file"):
        read_checkpoint(tmp_path / "garbage.pth")
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"w": [1.0]}, protocol=2))
    with pytest.raises(CheckpointError, match="not one torch.save wrote"):
        read_checkpoint(tmp_path / "plain.pkl")
    (tmp_path / "w.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    with pytest.raises(CheckpointError, match="npfrcnn.weights.read"):
        read_checkpoint(tmp_path / "w.h5")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("readme.txt", "hi")
    with pytest.raises(CheckpointError, match="without <folder>/data.pkl"):
        read_checkpoint(tmp_path / "other.zip")
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo")
        with pytest.raises(CheckpointError, match="not a regular file"):
            read_checkpoint(tmp_path / "fifo")


# No torch --------------------------------------------------------------------------------------


def test_reads_without_torch(tmp_path):
    """The module imports neither torch nor safetensors: a subprocess where both are blocked."""
    sd = small_net().state_dict()
    path = save({"model": sd, "epoch": 1}, tmp_path / "ckpt.pth")
    legacy = save(sd, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    np.savez(tmp_path / "want.npz", **{k: expected(v) for k, v in sd.items()})
    script = textwrap.dedent(f"""
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "safetensors", "torchvision"):
                    raise ImportError("blocked: " + name)

        sys.meta_path.insert(0, Block())
        for name in [m for m in sys.modules if m.split(".")[0] in ("torch", "safetensors")]:
            del sys.modules[name]
        import numpy as np
        from npfrcnn.weights.torch_checkpoint import read_checkpoint

        want = np.load({str(tmp_path / "want.npz")!r})
        for p in ({str(path)!r}, {str(legacy)!r}):
            c = read_checkpoint(p)
            assert set(c.tensors) == set(want.files)
            for k in want.files:
                assert c.tensors[k].tobytes() == want[k].tobytes(), k
        assert not any(m.split(".")[0] in ("torch", "safetensors") for m in sys.modules)
        print("ok", len(c.tensors))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["ok", str(len(sd))]
