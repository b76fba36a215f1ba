"""Huge-page allocation of large CPU tensors (archbench.allocator): set before torch starts,
respected when the user chose otherwise, checked in the process that measures, recorded in the env."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from archbench import allocator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code: str, **env_changes) -> str:
    env = {k: v for k, v in os.environ.items() if k != allocator.ENV}
    env.update(env_changes)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()


def test_active_tells_the_setting_apart_in_a_fresh_process():
    code = "from archbench import allocator; print(allocator.active())"
    assert _python(code, THP_MEM_ALLOC_ENABLE="1") == "True"
    assert _python(code, THP_MEM_ALLOC_ENABLE="0") == "False"
    assert _python(code) == "False"  # PyTorch's default


def test_enable_turns_it_on_and_keeps_the_users_choice():
    code = "from archbench import allocator; allocator.enable(); import torch; print(allocator.active())"
    assert _python(code) == "True"
    assert _python(code, THP_MEM_ALLOC_ENABLE="0") == "False"  # the user's 0 stands


def test_the_cli_turns_it_on_and_the_env_records_it():
    out = _python("from archbench.cli import main; main(['env', '--json'])")
    info = json.loads(out)
    assert info["cpu_thp_alloc"] is True and "thp_mode" in info
    off = json.loads(_python("from archbench.cli import main; main(['env', '--json'])", THP_MEM_ALLOC_ENABLE="0"))
    assert off["cpu_thp_alloc"] is False


def test_kernel_mode_reads_the_bracketed_word(tmp_path):
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    assert allocator.kernel_mode(f) == "madvise"
    f.write_text("[always] madvise never\n")
    assert allocator.kernel_mode(f) == "always"
    f.write_text("garbled\n")
    assert allocator.kernel_mode(f) is None
    assert allocator.kernel_mode(tmp_path / "missing") is None
