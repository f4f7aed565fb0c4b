"""npfrcnn runs from an install it cannot write, for a user without a home, past damaged caches.

Each test runs fresh Python processes on a copy of the package laid out as a wheel installs it
(``npfrcnn/``, ``npfrcnn/kernels/``, ``npfrcnn/weights/``, from ``[tool.setuptools.package-dir]``)
made read-only, with ``HOME`` pointing into a read-only folder, as an unprivileged user: as
ourselves when not root (``chmod`` is then enough); as root, as ``nobody`` if ``nobody`` can run
this interpreter, else as root with every capability dropped (so that file permissions bind
it). Where none of these is possible the tests skip, saying why. Before the fix every process
died on import with Numba's "cannot cache function ...: no locator available".

The op is ``ops.nms`` on three boxes worked by hand: boxes 0 and 1 overlap with IoU
81 / 119 = 0.68 > 0.5, box 2 is disjoint, so the kept indices are ``[0, 2]``.
"""

from __future__ import annotations

import ctypes
import io
import json
import os
import pickle
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
KEEP = [0, 2]

_CHILD = textwrap.dedent(
    """
    import json, os, sys, warnings

    mode = sys.argv[1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if len(sys.argv) > 2:  # NUMBA_CACHE_DIR set after numba was imported
            import numba  # noqa: F401
            os.environ["NUMBA_CACHE_DIR"] = sys.argv[2]
        import numpy as np
        import npfrcnn
        from npfrcnn import ops
        from npfrcnn.kernels.cpu import nms

        out = {"npfrcnn": npfrcnn.__file__, "kernels": nms.__file__,
               "cache_path": nms.nms_unflushed.stats.cache_path}
        if mode == "run":
            boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], np.float32)
            scores = np.array([0.9, 0.8, 0.7], np.float32)
            out["keep"] = ops.nms(boxes, scores, 0.5, backend="cpu").tolist()
            stats = nms.nms_unflushed.stats
            out["hits"] = sum(stats.cache_hits.values())
            out["misses"] = sum(stats.cache_misses.values())
    out["warnings"] = [str(w.message) for w in caught
                       if w.category.__name__ == "KernelCacheWarning"]
    print(json.dumps(out))
    """
)


def install_copy(site: Path) -> None:
    """Lay the package out under ``site`` as an install does (no caches)."""
    with open(REPO / "pyproject.toml", "rb") as f:
        package_dir = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    for package, source in sorted(package_dir.items()):  # npfrcnn before its subpackages
        shutil.copytree(
            REPO / source,
            site.joinpath(*package.split(".")),
            ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"),
            dirs_exist_ok=True,
        )


def _set_writable(root: Path, writable: bool) -> None:
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        bits = stat.S_IWUSR if writable else (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
        path.chmod(mode | bits if writable else mode & ~bits)


def _capability_dropper() -> Callable[[], None] | None:
    """A ``preexec_fn`` that empties the bounding and ambient capability sets (Linux)."""
    if sys.platform != "linux":
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    pr_capbset_drop, pr_cap_ambient, pr_cap_ambient_clear_all = 24, 47, 4

    def drop() -> None:
        prctl(pr_cap_ambient, pr_cap_ambient_clear_all, 0, 0, 0)
        for cap in range(64):  # past the last capability prctl fails with EINVAL: harmless
            prctl(pr_capbset_drop, cap, 0, 0, 0)

    return drop


def _runner_candidates() -> list[tuple[str, int, dict[str, Any]]]:
    """(description, uid, subprocess keywords) of each way to run unprivileged, best first."""
    if not hasattr(os, "geteuid"):
        return []
    if os.geteuid() != 0:
        return [("as this non-root user", os.geteuid(), {})]
    found: list[tuple[str, int, dict[str, Any]]] = []
    try:
        import pwd

        nobody = pwd.getpwnam("nobody")
        found.append(
            (
                "as nobody",
                nobody.pw_uid,
                {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []},
            )
        )
    except (ImportError, KeyError):
        pass
    drop = _capability_dropper()
    if drop is not None:
        found.append(("as root without capabilities", 0, {"preexec_fn": drop}))
    return found


@dataclass
class Sandbox:
    base: Path
    site: Path
    home: Path
    how: str
    uid: int
    kwargs: dict[str, Any]
    made: list[Path] = field(default_factory=list)

    def folder(self, name: str, mode: int = 0o755) -> Path:
        """A fresh folder the unprivileged user owns and can write."""
        path = self.base / name
        path.mkdir(mode=mode)
        path.chmod(mode)
        if self.uid != os.geteuid():
            os.chown(path, self.uid, -1)
        return path

    def give(self, path: Path) -> None:
        """Hand ``path`` and everything below it to the unprivileged user."""
        if self.uid != os.geteuid():
            for p in [path, *path.rglob("*")]:
                os.chown(p, self.uid, -1, follow_symlinks=False)

    def run(self, *args: str, env: dict[str, str] | None = None, script: str = _CHILD,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        clean = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("NUMBA_")
            and k not in {"PYTHONPATH", "HOME", "XDG_CACHE_HOME", "TMPDIR", "TEMP", "TMP"}
        }
        clean.update(PYTHONPATH=str(self.site), HOME=str(self.home))
        clean.update(env or {})
        return subprocess.run(
            [sys.executable, "-c", script, *args],
            env=clean,
            cwd=self.base,  # not the checkout: '' on sys.path must not find its npfrcnn
            capture_output=True,
            text=True,
            timeout=timeout,
            **self.kwargs,
        )

    def child(self, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
        proc = self.run(*args, env=env)
        assert proc.returncode == 0, f"{self.how}: {proc.stderr[-3000:]}"
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        # the copy was imported, not the checkout
        assert out["npfrcnn"].startswith(str(self.site)), out
        assert out["kernels"].startswith(str(self.site / "npfrcnn" / "kernels")), out
        return out


_PROBE = textwrap.dedent(
    """
    import os, sys
    import numba, npfrcnn
    try:
        open(os.path.join(os.path.dirname(npfrcnn.__file__), "kernels", "probe"), "w")
    except OSError:
        print("read-only")
    else:
        print("writable")
    """
)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    base = Path(tempfile.mkdtemp(prefix="npfrcnn-readonly-"))
    base.chmod(0o755)  # an unprivileged user must reach the copy
    site, ro = base / "site", base / "ro"
    try:
        install_copy(site)
        _set_writable(site, False)
        ro.mkdir()
        ro.chmod(0o555)
        reasons = []
        for how, uid, kwargs in _runner_candidates():
            box = Sandbox(base, site, ro / "home", how, uid, kwargs)
            try:
                proc = box.run(script=_PROBE, timeout=120)
            except OSError as err:  # e.g. nobody may not execute this interpreter
                reasons.append(f"{how}: {err}")
                continue
            if proc.returncode == 0 and proc.stdout.strip() == "read-only":
                yield box
                break
            reasons.append(f"{how}: {proc.stdout.strip() or proc.stderr.strip()[-300:]}")
        else:
            pytest.skip(
                "cannot run unprivileged here (" + ("; ".join(reasons) or "not POSIX") + ")"
            )
    finally:
        if ro.exists():
            ro.chmod(0o755)
        if site.exists():
            _set_writable(site, True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def fresh(sandbox: Sandbox, request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    """The sandbox, with this test's folders removed afterwards."""
    yield sandbox
    prefix = request.node.name.replace("[", "-").replace("]", "").replace(" ", "-")
    for path in sandbox.base.glob(f"{prefix}*"):
        shutil.rmtree(path, ignore_errors=True)


def _name(request: pytest.FixtureRequest, suffix: str) -> str:
    return request.node.name.replace("[", "-").replace("]", "").replace(" ", "-") + suffix


def test_readonly_install_without_home_caches_in_a_private_temp_folder(fresh, request):
    tmp = fresh.folder(_name(request, "-tmp"))
    first = fresh.child("run", env={"TMPDIR": str(tmp)})
    assert first["keep"] == KEEP
    assert first["warnings"] == []
    private = tmp / f"npfrcnn-numba-{fresh.uid}"
    assert first["cache_path"].startswith(str(private) + os.sep), first
    st = os.lstat(private)
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == fresh.uid
    assert stat.S_IMODE(st.st_mode) & 0o077 == 0, oct(st.st_mode)  # created 0700
    assert first["misses"] >= 1 and first["hits"] == 0, first

    second = fresh.child("run", env={"TMPDIR": str(tmp)})  # a new process loads it
    assert second["keep"] == KEEP
    assert second["hits"] >= 1 and second["misses"] == 0, second
    assert second["warnings"] == []


def test_xdg_cache_home_is_preferred_to_the_temp_folder(fresh, request):
    tmp, xdg = fresh.folder(_name(request, "-tmp")), fresh.folder(_name(request, "-xdg"))
    out = fresh.child("path", env={"TMPDIR": str(tmp), "XDG_CACHE_HOME": str(xdg)})
    assert out["cache_path"].startswith(str(xdg / "npfrcnn" / "numba") + os.sep), out
    assert not any(tmp.iterdir())


def test_numba_cache_dir_set_after_importing_numba_still_wins(fresh, request):
    tmp, mine = fresh.folder(_name(request, "-tmp")), fresh.folder(_name(request, "-mine"))
    out = fresh.child("path", str(mine), env={"TMPDIR": str(tmp)})
    assert out["cache_path"].startswith(str(mine) + os.sep), out
    assert not any(tmp.iterdir())


@pytest.mark.parametrize("squat", ["group- and world-writable", "a symlink", "a file"])
def test_an_unsafe_temp_folder_is_refused_and_the_kernels_compile_in_memory(
    fresh, request, squat
):
    tmp = fresh.folder(_name(request, "-tmp"), mode=0o1777)
    private = tmp / f"npfrcnn-numba-{fresh.uid}"
    if squat == "a symlink":  # pointing at a folder someone else controls
        target = fresh.folder(_name(request, "-elsewhere"), mode=0o777)
        private.symlink_to(target)
    elif squat == "a file":
        private.write_text("")
    else:
        private.mkdir()
        private.chmod(0o777)
    fresh.give(private)
    # the choice is made when the kernels are decorated; one case also runs the op (in memory)
    out = fresh.child("run" if squat == "a file" else "path", env={"TMPDIR": str(tmp)})
    assert out.get("keep", KEEP) == KEEP
    assert out["cache_path"] is None, out
    assert len(out["warnings"]) == 1 and "NUMBA_CACHE_DIR" in out["warnings"][0], out
    assert str(private) in out["warnings"][0]
    assert not any(p.suffix in {".nbi", ".nbc"} for p in tmp.rglob("*"))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _wrong_type(path: Path) -> None:
    path.write_bytes(pickle.dumps("not a compiled kernel"))


def _other_version(path: Path) -> None:
    # an index starts with the pickled Numba version that wrote it
    stream = io.BytesIO(path.read_bytes())
    pickle.load(stream)
    path.write_bytes(pickle.dumps("0.1.0", protocol=-1) + stream.read())


DAMAGE = {
    "index truncated": (".nbi", _truncate),
    "data truncated": (".nbc", _truncate),
    "data of the wrong type": (".nbc", _wrong_type),
    # Numba itself already ignores these: a regression guard, not a fix
    "index from another numba version": (".nbi", _other_version),
}


@pytest.fixture(scope="module")
def pristine(sandbox: Sandbox) -> Path:
    """A cache folder holding ``nms_unflushed`` (the kernel ``ops.nms`` calls on cpu), written
    by an unprivileged process."""
    cache = sandbox.folder("pristine-cache")
    out = sandbox.child("run", env={"NUMBA_CACHE_DIR": str(cache)})
    assert out["misses"] >= 1, out
    return cache


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_cache_entry_is_recompiled_and_rewritten(fresh, pristine, request, damage):
    cache = fresh.base / _name(request, "-cache")
    shutil.copytree(pristine, cache)
    fresh.give(cache)
    suffix, spoil = DAMAGE[damage]
    spoiled = [p for p in cache.rglob(f"nms.nms_unflushed-*{suffix}")]
    assert spoiled, sorted(cache.rglob("*"))
    for path in spoiled:
        spoil(path)
    env = {"NUMBA_CACHE_DIR": str(cache)}

    out = fresh.child("run", env=env)
    assert out["keep"] == KEEP
    assert out["misses"] == 1 and out["hits"] == 0, out
    assert len(out["warnings"]) <= 1, out

    healed = fresh.child("run", env=env)  # the fresh entry replaced the damaged one
    assert healed["keep"] == KEEP
    assert healed["hits"] == 1 and healed["misses"] == 0, healed
    assert healed["warnings"] == []


def test_a_writable_install_keeps_numbas_in_tree_cache(tmp_path):
    site = tmp_path / "site"
    install_copy(site)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")}
    env.update(PYTHONPATH=str(site))
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, "path"], env=env, cwd=tmp_path, capture_output=True,
        text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["cache_path"] == str(site / "npfrcnn" / "kernels" / "cpu" / "__pycache__"), out


@pytest.mark.slow
def test_the_demo_runs_from_a_readonly_install_without_home(fresh, request):
    tmp, out = fresh.folder(_name(request, "-tmp")), fresh.folder(_name(request, "-out"))
    demo = textwrap.dedent(
        """
        import sys
        from npfrcnn.cli import main
        sys.exit(main(["demo", "--out", sys.argv[1]]))
        """
    )
    for run in ("cold", "warm"):
        proc = fresh.run(str(out / run), env={"TMPDIR": str(tmp)}, script=demo, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr and "cannot cache" not in proc.stderr
        assert list((out / run).glob("*.png")), sorted((out / run).rglob("*"))  # drawings
    assert any(p.suffix == ".nbc" for p in (tmp / f"npfrcnn-numba-{fresh.uid}").rglob("*"))
