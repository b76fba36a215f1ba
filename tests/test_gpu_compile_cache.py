"""The compile-cache carrier of the GPU checks (benchmarks/gpu/compile_cache.py), on CPU:
what is kept, the size limit, the round trip to the same absolute paths, and refusing archives
that would write outside the cache folder."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"))

import compile_cache as cc  # noqa: E402


def _kernel(root: Path, key: str, name: str, size: int = 2000, mtime: float = 1e9) -> Path:
    """A Triton cache entry as Triton writes it: every form of the kernel, its metadata, and a
    group file listing them all by absolute path."""
    folder = root / "triton" / key
    folder.mkdir(parents=True)
    files = {}
    for suffix in (".ttir", ".ttgir", ".llir", ".ptx", ".cubin", ".json"):
        path = folder / f"{name}{suffix}"
        path.write_bytes(os.urandom(size) if suffix == ".cubin" else b"x" * size)
        files[path.name] = str(path)
    group = folder / f"__grp__{name}.json"
    group.write_text(json.dumps({"child_paths": files}))
    for path in folder.iterdir():
        os.utime(path, (mtime, mtime))
    return folder


def test_pack_keeps_what_loading_reads_and_restores_it_at_the_same_paths(tmp_path):
    root = tmp_path / "cache"
    _kernel(root, "abc", "chunk_fwd")
    (root / "inductor" / "fxgraph").mkdir(parents=True)
    (root / "inductor" / "fxgraph" / "entry").write_bytes(b"graph")
    archive = tmp_path / "out" / cc.ARCHIVE
    kept, total, size = cc.pack(archive, root=root)
    assert (kept, total) == (2, 2) and size == archive.stat().st_size > 0
    with tarfile.open(archive) as tar:
        names = sorted(tar.getnames())
    assert names == [
        "inductor/fxgraph/entry",
        "triton/abc/__grp__chunk_fwd.json",
        "triton/abc/chunk_fwd.cubin",
        "triton/abc/chunk_fwd.json",
    ]
    binary = (root / "triton" / "abc" / "chunk_fwd.cubin").read_bytes()
    import shutil

    shutil.rmtree(root)  # a fresh machine: the same absolute folder, empty
    assert cc.unpack(archive, root=root) == 4
    group = json.loads((root / "triton" / "abc" / "__grp__chunk_fwd.json").read_text())
    present = {k for k, p in group["child_paths"].items() if Path(p).exists()}  # what Triton's get_group returns
    assert present == {"chunk_fwd.cubin", "chunk_fwd.json"}
    assert (root / "triton" / "abc" / "chunk_fwd.cubin").read_bytes() == binary


def test_pack_leaves_out_the_newest_entries_to_fit_the_limit(tmp_path):
    root = tmp_path / "cache"
    for i in range(8):  # incompressible binaries of 40 kB each, compiled one after another
        _kernel(root, f"k{i}", f"kern{i}", size=40_000, mtime=1e9 + i)
    archive = tmp_path / cc.ARCHIVE
    kept, total, size = cc.pack(archive, root=root, limit=130_000)
    assert total == 8 and 1 <= kept < 8 and size <= 130_000
    with tarfile.open(archive) as tar:
        folders = {Path(n).parts[1] for n in tar.getnames()}
    assert folders == {f"k{i}" for i in range(kept)}  # the oldest ones, whole


def test_pack_writes_nothing_for_an_empty_cache_or_when_nothing_fits(tmp_path):
    archive = tmp_path / cc.ARCHIVE
    assert cc.pack(archive, root=tmp_path / "absent") == (0, 0, 0)
    root = tmp_path / "cache"
    _kernel(root, "big", "kern", size=50_000)
    assert cc.pack(archive, root=root, limit=1_000) == (0, 1, 0)
    assert not archive.exists()


def test_unpack_refuses_members_outside_the_cache(tmp_path):
    archive = tmp_path / "evil.tar.xz"
    with tarfile.open(archive, mode="w:xz") as tar:
        data = b"boom"
        info = tarfile.TarInfo("../escaped")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ValueError, match="refusing member"):
        cc.unpack(archive, root=tmp_path / "cache")
    assert not (tmp_path / "escaped").exists()
    assert cc.unpack(tmp_path / "missing.tar.xz", root=tmp_path / "cache") == 0


def test_keep_copies_the_returned_archive_and_ignores_its_folder(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    files_at = tmp_path / "files"
    (files_at / "out").mkdir(parents=True)
    assert cc.keep(files_at, repo) is None
    (files_at / "out" / cc.ARCHIVE).write_bytes(b"archive")
    dest = cc.keep(files_at, repo)
    assert dest == repo / ".gpucache" / cc.ARCHIVE and dest.read_bytes() == b"archive"
    cc.keep(files_at, repo)  # twice: one exclude line
    exclude = (repo / ".git" / "info" / "exclude").read_text().splitlines()
    assert exclude.count("/.gpucache/") == 1
    status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True, check=True)
    assert ".gpucache" not in status.stdout


def test_env_points_both_compilers_at_the_fixed_folder():
    e = cc.env()
    assert e["TRITON_CACHE_DIR"].startswith(str(cc.ROOT)) and e["TORCHINDUCTOR_CACHE_DIR"].startswith(str(cc.ROOT))
    assert cc.ROOT.is_absolute()
