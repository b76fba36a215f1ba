"""Carry Triton's and inductor's compile caches from one GPU check run to the next.

On a fresh GPU machine most of a check run is compiling: Triton compiles every fla kernel and
inductor every FlexAttention graph before the first test can compare anything. A machine that
starts bare (a container, a cloud node) pays that on every run. ``benchmarks/gpu/checks.sh``
therefore points both caches at one fixed folder (``ROOT``), unpacks the archive of a previous
run (in ``.gpucache/``) before its stages, and packs the folder into ``$OUT`` at the end:

    python3 benchmarks/gpu/compile_cache.py unpack .gpucache/compile-cache.tar.xz   # GPU node, first
    python3 benchmarks/gpu/compile_cache.py pack "$OUT/compile-cache.tar.xz"         # GPU node, last
    python3 benchmarks/gpu/compile_cache.py keep DIR                                   # after the run

``keep`` copies the returned archive into ``.gpucache/`` (which it adds to .git/info/exclude),
and the next run, with ``.gpucache/`` in its checkout, restores it.

Why these details:
- The folder is a fixed absolute path, the same on every machine: a Triton cache entry lists its
  files by absolute path (``__grp__*.json``), and a listed file that is not there is not found.
- Only what loading a compiled kernel reads is kept: the binary (``.cubin`` / ``.hsaco``), the
  metadata ``.json`` and the group file. The intermediate forms (``.ttir``, ``.ttgir``, ``.llir``,
  ``.ptx``, ``.source``) are written for debugging and make up most of the bytes; Triton loads a
  kernel from whichever of its listed files exist.
- A returned file may hold at most 16 MiB (``LIMIT``). When the archive comes out larger, the
  newest entries are left out: the stages run in order of need, so the first compiled are the
  ones the next call needs most.
- Entries are content-addressed (a hash of the source, options, GPU target and Triton version),
  so a stale archive costs nothing: what no longer matches is simply not found.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path("/tmp/archbench-compile-cache")
ARCHIVE = "compile-cache.tar.xz"
LIMIT = 15 * 2**20  # under the device tool's 16 MiB per returned file
DEBUG_SUFFIXES = (".ttir", ".ttgir", ".llir", ".ptx", ".source", ".amdgcn")


def env(root: Path = ROOT) -> dict[str, str]:
    """The environment that points Triton and inductor at ``root`` (inductor's Triton kernels
    follow TRITON_CACHE_DIR when it is set)."""
    return {"TRITON_CACHE_DIR": str(root / "triton"), "TORCHINDUCTOR_CACHE_DIR": str(root / "inductor")}


def _kept(rel: Path) -> bool:
    """Whether a cache file (relative to the cache folder) is needed to load a compiled kernel."""
    return not (rel.suffix in DEBUG_SUFFIXES and "triton" in rel.parts)


def _entries(root: Path) -> list[tuple[float, list[Path]]]:
    """The cache's entries, oldest first: each Triton kernel folder as one entry (its files go
    together or not at all), every other file alone. Paths are relative to ``root``."""
    entries: list[tuple[float, list[Path]]] = []
    triton = root / "triton"
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or not _kept(rel):
            continue
        if path.parent.parent == triton:  # triton/<hash>/<file>: grouped below
            continue
        entries.append((path.stat().st_mtime, [rel]))
    if triton.is_dir():
        for folder in sorted(p for p in triton.iterdir() if p.is_dir()):
            files = sorted(f for f in (p.relative_to(root) for p in folder.iterdir() if p.is_file()) if _kept(f))
            if files:
                entries.append((max((root / f).stat().st_mtime for f in files), files))
    entries.sort(key=lambda e: e[0])
    return entries


def _write(root: Path, files: list[Path], preset: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz", preset=preset) as tar:
        for rel in files:
            tar.add(root / rel, arcname=str(rel), recursive=False)
    return buf.getvalue()


def pack(archive: Path, root: Path = ROOT, limit: int = LIMIT, preset: int = 2) -> tuple[int, int, int]:
    """Write the cache under ``root`` to ``archive`` (at most ``limit`` bytes, oldest entries
    first). Returns (entries kept, entries in the cache, archive bytes); writes nothing when
    the cache is empty or not even its oldest entry fits."""
    entries = _entries(root) if root.is_dir() else []
    if not entries:
        return 0, 0, 0
    keep = len(entries)
    for _ in range(6):  # the compressed size is known only once written: shrink by its ratio
        data = _write(root, [f for _, files in entries[:keep] for f in files], preset)
        if len(data) <= limit:
            archive.parent.mkdir(parents=True, exist_ok=True)
            archive.write_bytes(data)
            return keep, len(entries), len(data)
        if keep == 1:
            break
        keep = max(1, min(keep - 1, int(keep * 0.9 * limit / len(data))))
    return 0, len(entries), 0


def unpack(archive: Path, root: Path = ROOT) -> int:
    """Extract ``archive`` under ``root`` (members that would land outside it are refused).
    Returns the number of files extracted; 0 when there is no archive."""
    if not archive.is_file():
        return 0
    root.mkdir(parents=True, exist_ok=True)
    base = root.resolve()
    n = 0
    with tarfile.open(archive, mode="r:xz") as tar:
        for member in tar.getmembers():
            target = (root / member.name).resolve()
            if not member.isfile() or base not in target.parents:
                raise ValueError(f"{archive}: refusing member {member.name!r} (not a file under {root})")
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.utime(target, (member.mtime, member.mtime))
            n += 1
    return n


def keep(files_at: Path, repo: Path) -> Path | None:
    """Copy the archive a device call sent back (under ``files_at``) to ``repo/.gpucache/`` and
    make git ignore that folder. Returns the new path, or None when the call sent none."""
    found = sorted(files_at.rglob(ARCHIVE))
    if not found:
        return None
    dest = repo / ".gpucache" / ARCHIVE
    dest.parent.mkdir(exist_ok=True)
    shutil.copyfile(found[0], dest)
    exclude = Path(
        subprocess.run(["git", "rev-parse", "--git-path", "info/exclude"], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
    )
    exclude = exclude if exclude.is_absolute() else repo / exclude
    lines = exclude.read_text().splitlines() if exclude.exists() else []
    if "/.gpucache/" not in lines:
        exclude.parent.mkdir(parents=True, exist_ok=True)
        exclude.write_text("\n".join([*lines, "/.gpucache/"]) + "\n")
    return dest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("env", help="print the exports that point Triton and inductor at the cache folder")
    pk = sub.add_parser("pack", help="archive the cache folder (debug files left out, at most 15 MiB)")
    pk.add_argument("archive", type=Path)
    up = sub.add_parser("unpack", help="restore an archive into the cache folder (nothing to do when absent)")
    up.add_argument("archive", type=Path)
    kp = sub.add_parser("keep", help="here, after a device call: copy the returned archive into .gpucache/")
    kp.add_argument("files_at", type=Path)
    args = p.parse_args(argv)
    if args.cmd == "env":
        print(" ".join(f"{k}={v}" for k, v in env().items()))
    elif args.cmd == "pack":
        kept, total, size = pack(args.archive)
        print(f"compile cache: {kept} of {total} entries packed, {size / 2**20:.1f} MiB -> {args.archive}")
    elif args.cmd == "unpack":
        print(f"compile cache: {unpack(args.archive)} files restored from {args.archive} into {ROOT}")
    else:
        repo = Path(__file__).resolve().parents[2]
        dest = keep(args.files_at, repo)
        print(f"compile cache kept at {dest}; the next checks.sh run restores it" if dest else f"no {ARCHIVE} under {args.files_at}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
