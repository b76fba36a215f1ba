"""The Dockerfiles parse, pin what they install, and name only what exists (extras, copied paths).

No Docker daemon is needed: the files are read as Docker reads them (line continuations joined,
ARG defaults substituted), and every package a `pip install` names must carry an exact version,
so that two builds of one image measure the same kernels.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted((ROOT / "docker").glob("Dockerfile*"))
INSTRUCTIONS = {"FROM", "ARG", "ENV", "RUN", "WORKDIR", "COPY", "ENTRYPOINT", "CMD", "LABEL", "USER", "EXPOSE"}


def parse(path: Path) -> list[tuple[str, str]]:
    """(instruction, argument) pairs, continuations joined, comments dropped."""
    logical, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    assert not buf, f"{path.name}: a continuation runs past the end of the file"
    out = []
    for line in logical:
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def substitute(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), text)


def pip_requirements(run: str) -> list[str]:
    """The requirement specs of every `pip install` in a RUN line (options and local paths left out)."""
    reqs = []
    for command in re.split(r"&&|;", run):
        words = shlex.split(command)
        if words[:2] != ["pip", "install"]:
            continue
        skip_next = False
        for w in words[2:]:
            if skip_next:
                skip_next = False
                continue
            if w in ("--index-url", "--extra-index-url", "-r", "-c", "--constraint"):
                skip_next = True
                continue
            if w.startswith("-") or w.startswith(".") or w.startswith("/"):
                continue
            reqs.append(w)
    return reqs


@pytest.fixture(params=DOCKERFILES, ids=lambda p: p.name)
def dockerfile(request):
    return request.param


def test_there_are_a_gpu_and_a_cpu_image():
    assert {p.name for p in DOCKERFILES} >= {"Dockerfile", "Dockerfile.cpu"}


def test_parses_and_pins_everything(dockerfile):
    steps = parse(dockerfile)
    assert steps and all(word in INSTRUCTIONS for word, _ in steps), [w for w, _ in steps if w not in INSTRUCTIONS]
    args: dict[str, str] = {}
    froms, pinned = [], []
    for word, rest in steps:
        if word == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            args[k] = v.strip('"')
        elif word == "FROM":
            froms.append(substitute(rest, args))
        elif word == "RUN":
            pinned += pip_requirements(substitute(rest, args))
    assert froms, f"{dockerfile.name}: no FROM"
    for image in froms:
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", image) and not image.endswith(":latest"), f"unpinned base image {image}"
    assert pinned, f"{dockerfile.name}: installs nothing with pip"
    unpinned = [r for r in pinned if not re.fullmatch(r"[A-Za-z0-9_.\-\[\],]+==[\w.+-]+", r)]
    assert not unpinned, f"{dockerfile.name}: unpinned pip requirements {unpinned}"


def test_names_only_what_exists(dockerfile):
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    for word, rest in parse(dockerfile):
        if word == "COPY":
            *sources, _dest = shlex.split(rest)
            for src in sources:
                assert (ROOT / src).exists(), f"{dockerfile.name}: COPY {src}: no such path in the repository"
        if word == "RUN":
            for named in re.findall(r"\.\[([\w,]+)\]", rest):
                missing = set(named.split(",")) - extras
                assert not missing, f"{dockerfile.name}: extras {sorted(missing)} are not in pyproject.toml"
    entry = dict(parse(dockerfile)).get("ENTRYPOINT")
    assert entry == '["archbench"]'


def test_the_parser_catches_an_unpinned_requirement(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nRUN pip install torch==2.13.0 \\\n && pip install numpy\n")
    reqs = [r for w, rest in parse(bad) if w == "RUN" for r in pip_requirements(rest)]
    assert reqs == ["torch==2.13.0", "numpy"]
