"""The recipes' default teacher: a byte-level Llama pre-trained on the stdlib corpus, cached."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from archbench.recipes.teacher import TeacherSpec, bits_per_byte, build_teacher, corpus_task, default_teacher  # noqa: E402

TINY = TeacherSpec(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, seq_len=32, steps=30, batch_size=16, lr=3e-3,
                   max_bytes=200_000)  # fmt: skip


def test_pretrained_teacher_learns_is_cached_and_reloads(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHBENCH_CACHE", str(tmp_path))
    task = corpus_task(TINY.seq_len, TINY.max_bytes)
    untrained = build_teacher(TINY).eval()
    before = bits_per_byte(lambda ids: untrained(input_ids=ids).logits, task, n_windows=32)
    model, meta = default_teacher(TINY)
    after = bits_per_byte(lambda ids: model(input_ids=ids).logits, task, n_windows=32)
    assert after < before - 1.0 and meta["val_bits_per_byte"] == pytest.approx(meta["val_bits_per_byte"])
    assert meta["corpus"]["source"] == "stdlib" and meta["steps"] == 30
    saved = [p for p in (tmp_path / "teachers").iterdir() if p.is_dir()]
    assert len(saved) == 1 and (saved[0] / "model.safetensors").is_file()
    again, meta2 = default_teacher(TINY)  # from the cache: same weights, no training
    ids = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, again(input_ids=ids).logits)
    assert meta2 == meta


def test_a_cuda_device_without_cuda_is_a_one_line_error(monkeypatch):
    import torch

    from archbench.recipes.teacher import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="sees no CUDA device; use device=cpu") as e:
        check_device("radlads", "cuda:1")
    assert "\n" not in str(e.value)
    check_device("radlads", "cpu")  # fine anywhere
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    check_device("radlads", "cuda")  # the name is checked; the device itself is torch's business
