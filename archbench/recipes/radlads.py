"""RADLADS: convert a softmax-attention transformer into a linear-attention decoder by distillation
(Goldstein et al., 2025, "RADLADS: Rapid Attention Distillation to Linear Attention Decoders at
Scale", arXiv 2505.03005).

The student is the teacher with every self-attention module replaced by a recurrent mixer that
starts from the attention's own q/k/v/o weights (``archbench.recipes.students``: RAD-RWKV7,
RAD-RWKV6, a gated-delta variant, or the teacher's attention itself for the exactness check;
``archbench.recipes.radlads_student``: the conversion, recurrent decode and checkpoint).
Embeddings, MLPs, norms and the LM head are the teacher's. Training runs in three steps, each
AdamW (betas 0.9, 0.99, no weight decay) with gradient-norm clipping (``archbench.distill``):

1. Attention hidden-state alignment. The teacher runs frozen; forward hooks capture, for every
   decoder layer, the (normed) input of its attention module and that module's output. Each
   student mixer sees the same input and is trained to reproduce the output:
   loss = mean over layers and tokens of ||o_teacher - o_student||_2 / sqrt(d).
   Only the mixers train (each layer independently: no error accumulates across layers), with a
   cosine schedule from 1e-3 to 1e-5 (the paper's).
2. Knowledge distillation. The whole student trains on KL(teacher || student) of the next-token
   distributions, at a constant learning rate. The paper uses 1e-5 for 7B-72B models and 500M
   tokens; this recipe's default is 1e-3, because the CPU-scale student is tiny (d = 128) and sees
   a few hundred thousand tokens, where 1e-5 barely moves it (measured on the default teacher,
   steps 1+2 at 250k + 500k tokens: student/teacher bits per byte 1.115 at 1e-5, 0.996 at 1e-3).
3. Fine-tuning (optional, off by default): 0.5 KL + 0.5 cross-entropy on the data, optionally at
   a longer context.

Every budget is in tokens (converted to whole steps of batch_size x seq_len). The evaluation
puts the teacher and the student side by side: bits per byte on the corpus' validation split,
teacher-student top-1 agreement and mean KL on held-out windows, and the decode state: the
teacher's KV cache grows with the context, the student's recurrent state does not. State sizes
are computed analytically and measured: the teacher by a cached prefill, the student by running
its recurrent decode (prefill, then token-by-token steps) at two context lengths.

Outputs (``run``): ``rows.jsonl`` (teacher and student rows), ``losses.jsonl`` (per step: stage,
loss, lr, tokens, wall time), ``run.json`` (config and summary), ``student.safetensors`` +
``student.json`` (``load_student`` rebuilds the student to identical outputs).

Teachers: the byte-level default (``archbench.recipes.teacher``) or any local directory / hub
name of a Llama/Qwen2-style causal LM. A byte-level teacher (vocabulary 256) reads the corpus'
bytes; any other reads it through the tokenizer saved with it (``recipes.tokenized``), and bits
per byte are converted from bits per token. The recall probes are byte-level and are skipped
(``probe_skipped``) for a tokenised teacher.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from archbench.distill import StepLog, constant, cosine, hidden_alignment, kd_loss, train_loop, train_only
from archbench.recipes.radlads_student import (  # noqa: F401 - the student's names, importable from the recipe
    RadladsError,
    RadladsStudent,
    convert,
    decoder_layers,
    load_student,
    save_student,
)
from archbench.recipes.probes import task_probes
from archbench.recipes.speed import lm_speed
from archbench.recipes.students import KINDS
from archbench.recipes.teacher import (  # noqa: F401
    TeacherSpec,
    agreement,
    bits_per_byte,
    cache_nbytes,
    cache_of,
    check_device,
    corpus_task,
    lm_batches,
    recipe_teacher,
    teacher_kv_bytes,
)

RECIPE = "radlads"
BETAS = (0.9, 0.99)  # AdamW's, in every step


@dataclass(frozen=True)
class RadladsConfig:
    """One conversion. ``teacher`` is ``"default"`` (the cached byte-level Llama of ``teacher_spec``)
    or a local directory / hub name of a byte-level Llama/Qwen2-style causal LM.

    CPU defaults (default teacher d=128, 4 layers, context 128): step 1 125k tokens, step 2 250k
    tokens at lr 1e-3, no step 3; about 3 minutes on one thread, and the rad_gdn student lands at
    ~0.99x the teacher's bits per byte (top-1 agreement ~0.80, KL ~0.22 nats). The paper's budgets
    (context 512): 100M + 500M + 250M tokens, step-2 lr 1e-5: pass those for a GPU-scale teacher.
    """

    kind: str = "rad_gdn"
    teacher: str = "default"
    teacher_spec: TeacherSpec = field(default_factory=TeacherSpec)
    seq_len: int = 128
    batch_size: int = 16
    # step 1: attention hidden-state alignment (mixers only, cosine lr1 -> lr1_min)
    step1_tokens: int = 125_000
    lr1: float = 1e-3
    lr1_min: float = 1e-5
    # step 2: KL(teacher || student), all parameters, constant lr2
    step2_tokens: int = 250_000
    lr2: float = 1e-3
    # step 3: 0.5 KL + 0.5 CE, constant lr3, at step3_seq_len (0: seq_len)
    step3_tokens: int = 0
    lr3: float = 1e-4
    step3_seq_len: int = 0
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "cpu"  # where teacher and student run ("cuda" on a GPU node); data is moved there
    max_bytes: int = 2_000_000  # of the stdlib corpus (the default teacher uses teacher_spec.max_bytes)
    # evaluation
    eval_windows: int = 64
    eval_batch: int = 16
    state_contexts: tuple[int, ...] = (128, 1024, 8192)  # analytic decode-state sizes at these contexts
    decode_contexts: tuple[int, int] = (16, 48)  # measured by running the decode at these two contexts
    speed_contexts: tuple[int, ...] = (128, 512)  # prefill / decode latency and memory of teacher and student ([] = skip)
    probe_examples: int = 64  # zero-shot recall probes (recipes.probes), examples per probe (0 = skip)

    def __post_init__(self) -> None:
        if isinstance(self.teacher_spec, dict):  # rebuilt from run.json / student.json
            object.__setattr__(self, "teacher_spec", TeacherSpec(**self.teacher_spec))
        object.__setattr__(self, "state_contexts", tuple(int(c) for c in self.state_contexts))
        object.__setattr__(self, "decode_contexts", tuple(int(c) for c in self.decode_contexts))
        object.__setattr__(self, "speed_contexts", tuple(int(c) for c in self.speed_contexts))
        if any(c < 1 for c in self.speed_contexts):
            raise RadladsError(f"speed_contexts must be positive lengths (got {self.speed_contexts})")
        if self.kind not in KINDS:
            raise RadladsError(f"radlads: kind must be one of {', '.join(KINDS)} (got {self.kind!r})")
        try:
            check_device("radlads", self.device)
        except ValueError as e:
            raise RadladsError(str(e)) from None
        if not isinstance(self.teacher, str) or not self.teacher:
            raise RadladsError(
                f"radlads: teacher must be 'default' or a model directory / hub name (got {self.teacher!r})"
            )
        for name in ("seq_len", "batch_size", "eval_windows", "eval_batch", "max_bytes"):
            if int(getattr(self, name)) < 1:
                raise RadladsError(f"radlads: {name} must be >= 1 (got {getattr(self, name)})")
        for name in ("step1_tokens", "step2_tokens", "step3_tokens", "step3_seq_len"):
            if int(getattr(self, name)) < 0:
                raise RadladsError(f"radlads: {name} must be >= 0 (got {getattr(self, name)})")
        for name in ("lr1", "lr1_min", "lr2", "lr3", "grad_clip"):
            if not float(getattr(self, name)) > 0:
                raise RadladsError(f"radlads: {name} must be > 0 (got {getattr(self, name)})")
        if self.lr1_min > self.lr1:
            raise RadladsError(f"radlads: lr1_min must be <= lr1 (got {self.lr1_min} > {self.lr1})")
        if not self.state_contexts or min(self.state_contexts) < 1:
            raise RadladsError(f"radlads: state_contexts must be positive lengths (got {list(self.state_contexts)})")
        if len(self.decode_contexts) != 2 or not 2 <= self.decode_contexts[0] < self.decode_contexts[1]:
            raise RadladsError(f"radlads: decode_contexts must be two increasing lengths >= 2 "
                               f"(got {list(self.decode_contexts)})")  # fmt: skip

    def steps(self, tokens: int, seq_len: int | None = None) -> int:
        """Whole optimiser steps that cover ``tokens`` (0 tokens: no steps)."""
        per_step = self.batch_size * (seq_len or self.seq_len)
        return -(-int(tokens) // per_step)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- step 1: attention hidden-state alignment ------------------------------------------------


@torch.no_grad()
def capture_attention(teacher: nn.Module, ids: torch.Tensor) -> list[tuple[torch.Tensor, Any, torch.Tensor]]:
    """Run the teacher once; per layer (attention input hidden_states, position_embeddings, attention output)."""
    captured: list = []

    def hook(module, args, kwargs, output):
        h = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        pe = kwargs.get("position_embeddings", args[1] if len(args) > 1 else None)
        out = output[0] if isinstance(output, (tuple, list)) else output
        captured.append((h.detach(), pe, out.detach()))

    handles = [layer.self_attn.register_forward_hook(hook, with_kwargs=True) for layer in decoder_layers(teacher)]
    try:
        teacher(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return captured


def alignment_loss(student: RadladsStudent, captured: list) -> torch.Tensor:
    """Mean over layers and tokens of ||teacher_out - student_out||_2 * d^-0.5."""
    losses = []
    for attn, (h, pe, target) in zip(student.attentions, captured):
        y, _ = attn(hidden_states=h, position_embeddings=pe)
        losses.append(hidden_alignment(target, y))
    return torch.stack(losses).mean()


def _fit(stage: str, params: list[nn.Parameter], steps: int, lr_fn: Callable[[int], float], loss_fn,
         batches: Iterator, grad_clip: float, progress=None) -> list[dict]:  # fmt: skip
    """AdamW without weight decay; the per-step history (stage, step, loss, lr, tokens, wall_s)."""
    log = StepLog(steps, progress, tags={"stage": stage}, wall=True)
    train_loop(params, batches, steps, lr_fn, loss_fn, betas=BETAS, grad_clip=grad_clip, on_step=log)
    return log.rows


def step1_align(student: RadladsStudent, teacher: nn.Module, batches: Iterator, steps: int, lr: float = 1e-3,
                lr_min: float = 1e-5, grad_clip: float = 1.0, progress=None) -> list[dict]:  # fmt: skip
    """Attention hidden-state alignment: only the mixers train, teacher attention frozen beside them."""
    teacher.eval().requires_grad_(False)
    student.train()
    params = train_only(student, student.attentions)
    loss_fn = lambda ids, _: alignment_loss(student, capture_attention(teacher, ids))  # noqa: E731
    return _fit("align", params, steps, cosine(lr, lr_min, steps), loss_fn, batches, grad_clip, progress)


# ---- steps 2 and 3: distillation and fine-tuning ---------------------------------------------


def step_distill(student: RadladsStudent, teacher: nn.Module, batches: Iterator, steps: int, lr: float,
                 kl_weight: float = 1.0, ce_weight: float = 0.0, stage: str = "distill", grad_clip: float = 1.0,
                 progress=None) -> list[dict]:  # fmt: skip
    """Steps 2 and 3: all student parameters, kl_weight * KL(teacher || student) + ce_weight * CE, constant lr."""
    teacher.eval().requires_grad_(False)
    student.train()
    params = train_only(student)

    def loss_fn(ids, labels):
        with torch.no_grad():
            t = teacher(input_ids=ids, use_cache=False).logits
        return kd_loss(student(ids), t, labels, kl_weight, ce_weight)

    return _fit(stage, params, steps, constant(lr), loss_fn, batches, grad_clip, progress)


def step2_distill(student, teacher, batches, steps, lr=1e-3, grad_clip=1.0, progress=None) -> list[dict]:
    """Knowledge distillation: KL(teacher || student) on logits, all parameters."""
    return step_distill(student, teacher, batches, steps, lr, 1.0, 0.0, "distill", grad_clip, progress)


def step3_finetune(student, teacher, batches, steps, lr=1e-4, grad_clip=1.0, progress=None) -> list[dict]:
    """Fine-tuning: 0.5 KL + 0.5 CE (feed batches at the longer context for the long-context variant)."""
    return step_distill(student, teacher, batches, steps, lr, 0.5, 0.5, "finetune", grad_clip, progress)


def train_steps(student: RadladsStudent, teacher: nn.Module, config: RadladsConfig, task, max_bytes: int,
                progress=None, tokenizer=None) -> list[dict]:  # fmt: skip
    """Steps 1-3 at the configured budgets (a step with 0 tokens is skipped); the per-step history."""
    history: list[dict] = []
    seq3 = config.step3_seq_len or config.seq_len
    n1, n2, n3 = (
        config.steps(config.step1_tokens),
        config.steps(config.step2_tokens),
        config.steps(config.step3_tokens, seq3),
    )
    if n1:
        batches = lm_batches(task, config.batch_size, config.seed, device=config.device)
        history += step1_align(student, teacher, batches, n1, config.lr1, config.lr1_min, config.grad_clip, progress)
    if n2:
        batches = lm_batches(task, config.batch_size, config.seed + 1, device=config.device)
        history += step2_distill(student, teacher, batches, n2, config.lr2, config.grad_clip, progress)
    if n3:
        task3 = corpus_task(seq3, max_bytes, tokenizer) if seq3 != config.seq_len else task
        batches = lm_batches(task3, config.batch_size, config.seed + 2, device=config.device)
        history += step3_finetune(student, teacher, batches, n3, config.lr3, config.grad_clip, progress)
    student.eval().requires_grad_(False)
    return history


def stage_summary(history: list[dict]) -> dict[str, dict]:
    """Per stage: steps, tokens, wall time, first and last loss."""
    stages = {}
    for name in ("align", "distill", "finetune"):
        rows = [r for r in history if r["stage"] == name]
        if rows:
            stages[name] = {"steps": len(rows), "tokens": rows[-1]["tokens"], "wall_s": rows[-1]["wall_s"],
                            "first_loss": rows[0]["loss"], "last_loss": rows[-1]["loss"]}  # fmt: skip
    return stages


# ---- evaluation ------------------------------------------------------------------------------


@torch.no_grad()
def decode_state_check(student: RadladsStudent, teacher: nn.Module, contexts: tuple[int, int], seed: int = 0) -> dict:
    """Measured decode-state bytes at two context lengths (batch 1): the student by prefill + recurrent
    steps, the teacher by its KV cache after a cached forward. Also checks that the student's stepwise
    logits match its parallel forward."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, int(teacher.config.vocab_size), (1, contexts[1]), generator=g)
    ids = ids.to(next(teacher.parameters()).device)
    out: dict[str, Any] = {}
    split = contexts[0] // 2
    logits, state = student.prefill(ids[:, :split])
    steps = [logits[:, -1]]
    for t in range(split, contexts[1]):
        if t == contexts[0]:
            out[f"student_state_bytes_measured_{contexts[0]}"] = student.state_nbytes(state)
        lt, state = student.step(ids[:, t], state)
        steps.append(lt)
    out[f"student_state_bytes_measured_{contexts[1]}"] = student.state_nbytes(state)
    full = student(ids)
    stepped = torch.stack(steps[1:], dim=1)
    out["decode_max_abs_err"] = float((full[:, split:] - stepped).abs().max())
    for T in contexts:
        o = teacher(input_ids=ids[:, :T], use_cache=True)
        out[f"teacher_state_bytes_measured_{T}"] = cache_nbytes(cache_of(o))
    return out


@torch.no_grad()
def evaluate(student: RadladsStudent, teacher: nn.Module, task, config: RadladsConfig) -> tuple[dict, dict]:
    """(teacher metrics, student metrics): bits per byte, agreement and KL, decode-state bytes (analytic and
    measured at ``decode_contexts``; the student's stepwise-vs-parallel logit error)."""
    n, bs = config.eval_windows, config.eval_batch
    dev = config.device
    teacher_fn = lambda ids: teacher(input_ids=ids, use_cache=False).logits  # noqa: E731
    t_bpb = bits_per_byte(teacher_fn, task, n, bs, device=dev)
    s_bpb = bits_per_byte(student, task, n_windows=n, batch_size=bs, device=dev)
    t_m = {
        "bits_per_byte": t_bpb,
        **{f"state_bytes_{T}": teacher_kv_bytes(teacher, 1, T) for T in config.state_contexts},
    }
    s_m = {"bits_per_byte": s_bpb, "bpb_ratio": s_bpb / t_bpb}
    s_m.update(agreement(student, teacher_fn, task.eval_sets(n, 0)["val"].inputs, bs, dev))
    t_m.update(task_probes(teacher_fn, task, config.probe_examples, config.seed, device=dev))
    s_m.update(task_probes(student, task, config.probe_examples, config.seed, device=dev))
    if student.attentions[0].recurrent:
        s_m.update({f"state_bytes_{T}": student.state_bytes(1, T) for T in config.state_contexts})
        decode = decode_state_check(student, teacher, config.decode_contexts, config.seed)
        t_m.update({k.removeprefix("teacher_"): v for k, v in decode.items() if k.startswith("teacher_")})
        s_m.update({k.removeprefix("student_"): v for k, v in decode.items() if not k.startswith("teacher_")})
        from archbench.hf import HFCausalLM

        wrapped = HFCausalLM(teacher, lambda *a: 0)
        for T in config.speed_contexts:  # the same timer and memory probe as every other cell
            t_m.update(lm_speed(wrapped, T, vocab=int(teacher.config.vocab_size), device=dev, seed=config.seed))
            s_m.update(lm_speed(student, T, vocab=int(teacher.config.vocab_size), device=dev, seed=config.seed))
        for T in config.speed_contexts:
            s_m[f"decode_speedup_{T}"] = t_m[f"decode_s_per_token_{T}"] / s_m[f"decode_s_per_token_{T}"]
    else:  # the teacher's own attention: its KV cache
        s_m.update({k: v for k, v in t_m.items() if k.startswith("state_bytes_")})
    return t_m, s_m


# ---- the recipe ------------------------------------------------------------------------------


def load_recipe_teacher(config: RadladsConfig, progress=None) -> tuple[nn.Module, dict, object]:
    """(teacher, facts, tokenizer or None for a byte-level teacher); refuses a teacher that is not Llama/Qwen2-style."""
    teacher, facts, tokenizer = recipe_teacher(config.teacher, config.teacher_spec, config.device, progress)
    decoder_layers(teacher)
    return teacher, facts, tokenizer


def run(config: RadladsConfig, out_dir: Path, progress=None) -> dict:
    """Convert, train steps 1-3 at the configured budgets, evaluate teacher and student, write ``out_dir``."""
    from archbench.store import RunDir, now_iso

    rd = RunDir(out_dir).create()
    started = now_iso()
    teacher, facts, tokenizer = load_recipe_teacher(config, progress)  # pre-training the default teacher reports too
    max_bytes = config.teacher_spec.max_bytes if config.teacher == "default" else config.max_bytes
    task = corpus_task(config.seq_len, max_bytes, tokenizer)
    student = convert(teacher, config.kind, config.seed)

    t0 = time.perf_counter()
    history = train_steps(student, teacher, config, task, max_bytes, progress, tokenizer)
    train_wall = time.perf_counter() - t0
    with open(rd.path / "losses.jsonl", "w", encoding="utf-8") as f:
        for row in history:
            f.write(json.dumps(row) + "\n")
    stages = stage_summary(history)
    tokens = sum(s["tokens"] for s in stages.values())

    t1 = time.perf_counter()
    t_m, s_m = evaluate(student, teacher, task, config)
    eval_wall = time.perf_counter() - t1
    common = {"recipe": RECIPE, "status": "ok", "kind": config.kind, "seq_len": config.seq_len,
              "vocab_size": int(teacher.config.vocab_size), "tokenizer": type(tokenizer).__name__ if tokenizer else "bytes"}
    rd.append({**common, "model": "teacher", **t_m, "tokens": int(facts.get("tokens_seen", 0)),
               "wall_s": float(facts.get("wall_s", 0.0))})  # fmt: skip
    rd.append({**common, "model": f"student:{config.kind}", **s_m, "tokens": tokens, "wall_s": train_wall,
               "eval_wall_s": eval_wall, "stages": stages})  # fmt: skip
    save_student(student, rd.path, config)
    summary = {"kind": config.kind, "teacher_bpb": t_m["bits_per_byte"], "student_bpb": s_m["bits_per_byte"],
               "bpb_ratio": s_m["bpb_ratio"], "top1_agreement": s_m["top1_agreement"], "kl": s_m["kl"],
               "tokens": tokens, "train_wall_s": train_wall, "stages": stages}  # fmt: skip
    rd.write_meta({"recipe": RECIPE, "config": config.to_dict(), "teacher": facts, "started": started,
                   "finished": now_iso(), "summary": summary})  # fmt: skip
    return summary
