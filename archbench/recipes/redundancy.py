"""Redundancy-aware hybrid distillation (RAD, arXiv 2505.22135): find the attention layers a model
can most easily do without, replace those with Mamba2 mixers initialised from them, and distil.

**Scoring a mask.** A skip mask x in {0, 1}^L drops the attention sublayers it marks. Its score is
what self-speculative decoding with that draft achieves on held-out prompts
(``archbench.recipes.speculative``): the acceptance rate (the fraction of drafted tokens the full
model keeps; deterministic, the default objective on CPU) and the measured tokens/s (and speedup over
plain greedy decoding; what RAD optimises on real hardware, ``objective="tokens_per_s"``). Both are
recorded for every mask evaluated.

**Searching masks with exactly k ones.** (a) Bayesian optimisation over the relaxation [0, 1]^L
(``archbench.recipes.bayes_opt``): a point x is scored as the mask of its k largest coordinates
(top-k discretisation). A zero-mean Gaussian process with an RBF kernel models the score (targets
standardised, the length scale picked by marginal likelihood on a grid, a small noise term); the
next point maximises expected improvement EI(x) = (mu - y* - xi) Phi(z) + sigma phi(z),
z = (mu - y* - xi) / sigma, over random candidates plus perturbations of the best points seen,
leaving out candidates whose mask was already scored so every evaluation in the budget is a new
mask. A fixed seed makes the search deterministic (the objective is, for acceptance). (b) The
greedy baseline adds, one layer at a time, the layer whose skipping (together with those already
chosen) hurts least. The per-layer redundancy score is the score with that layer skipped alone;
``rank_layers`` sorts by it, most redundant first.

**Converting and distilling.** The k layers of the best mask get Mamba-in-Llama mixers
(``archbench.recipes.mamba_init``: x <- v, B <- k, C <- q, out <- o). Stage 1 trains only the
converted mixers (all their parameters, as MambaInLlama does; everything else frozen) on
KL(teacher || student) over next-byte distributions, plus ``ce_weight`` x cross-entropy; stage 2
(``e2e_steps`` > 0) trains every parameter. Both are AdamW without weight decay, a linear warm-up
then cosine decay, and gradient-norm clipping (``archbench.distill``). The control replaces the
same number of layers chosen uniformly (evenly spaced: every other layer when k = L / 2, as
MambaInLlama does) and gets the same steps, batches and learning rates, so the bits-per-byte gap
between the two students is what the layer choice is worth.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from archbench.distill import StepLog, kd_terms, train_loop, train_only, warmup_cosine
from archbench.recipes.bayes_opt import GaussianProcess, OptResult, expected_improvement, maximize  # noqa: F401
from archbench.recipes.hybrid_decode import HybridDecoder
from archbench.recipes.mamba_init import convert, load_saved_student, replaced_mixers, save_student
from archbench.recipes.probes import task_probes
from archbench.recipes.speculative import decoder_layers, greedy_tokens_per_s, score_mask
from archbench.recipes.speed import lm_speed
from archbench.recipes.teacher import (
    TeacherSpec,
    agreement,
    bits_per_byte,
    check_device,
    corpus_task,
    lm_batches,
    recipe_teacher,
)

OBJECTIVES = ("acceptance", "tokens_per_s")
SEARCHES = ("bo", "greedy")
STUDENTS = ("rad", "uniform")


@dataclass(frozen=True)
class RedundancyConfig:
    """One RAD run: teacher, search, conversion and distillation budget."""

    teacher: str = "default"  # "default" (cached byte-level Llama of teacher_spec) or a local path / hub name
    teacher_spec: TeacherSpec = TeacherSpec()
    k: int = 2  # attention layers to replace
    search: str = "bo"  # which search picks RAD's layers: "bo" or "greedy" (both always run)
    objective: str = "acceptance"  # or "tokens_per_s"
    n_prompts: int = 8  # held-out prompts per mask evaluation
    prompt_len: int = 64
    new_tokens: int = 32
    draft_len: int = 4
    bo_budget: int = 12  # distinct masks the BO may score
    bo_init: int = 4  # of which random
    seq_len: int = 128  # distillation / evaluation windows
    max_bytes: int = 2_000_000
    steps: int = 200  # stage 1: converted mixers only
    e2e_steps: int = 0  # stage 2: all parameters
    batch_size: int = 16
    lr: float = 1e-3
    e2e_lr: float = 1e-4
    ce_weight: float = 0.0
    warmup_frac: float = 0.1
    eval_windows: int = 64
    conv_kernel: int = 4
    chunk_size: int = 64
    compare_uniform: bool = True
    device: str = "cpu"  # where teacher and students run ("cuda" on a GPU node); data is moved there
    decode_contexts: tuple[int, ...] = (16, 48)  # decode state measured after prompts of these lengths
    speed_contexts: tuple[int, ...] = (128, 512)  # prefill / decode latency and memory ([] = skip)
    probe_examples: int = 64  # zero-shot recall probes (recipes.probes), examples per probe (0 = skip)
    seed: int = 0

    def __post_init__(self) -> None:
        check_device("redundancy", self.device)
        for name in ("decode_contexts", "speed_contexts"):
            object.__setattr__(self, name, tuple(int(c) for c in getattr(self, name)))
            if any(c < 1 for c in getattr(self, name)):
                raise ValueError(f"redundancy: {name} must be positive lengths (got {getattr(self, name)})")
        positive = ("k", "n_prompts", "prompt_len", "new_tokens", "draft_len", "bo_budget", "seq_len", "batch_size",
                    "eval_windows", "conv_kernel", "chunk_size", "max_bytes")  # fmt: skip
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"redundancy: {name} must be >= 1 (got {getattr(self, name)})")
        for name in ("steps", "e2e_steps", "bo_init", "ce_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"redundancy: {name} must be >= 0 (got {getattr(self, name)})")
        if self.search not in SEARCHES:
            raise ValueError(f"redundancy: search must be one of {', '.join(SEARCHES)} (got {self.search!r})")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"redundancy: objective must be one of {', '.join(OBJECTIVES)} (got {self.objective!r})")
        if self.lr <= 0 or self.e2e_lr <= 0:
            raise ValueError(f"redundancy: lr and e2e_lr must be > 0 (got {self.lr}, {self.e2e_lr})")
        if not 0.0 <= self.warmup_frac < 1.0:
            raise ValueError(f"redundancy: warmup_frac must be in [0, 1) (got {self.warmup_frac})")


# ---- the redundancy search -----------------------------------------------------------------------


def topk_mask(x: torch.Tensor, k: int) -> tuple[int, ...]:
    """The layers of the k largest coordinates of a relaxed mask."""
    return tuple(sorted(int(i) for i in torch.topk(x, k).indices))


class MaskScorer:
    """Scores skip masks by self-speculative decoding on fixed prompts; every mask is scored once."""

    def __init__(self, model: nn.Module, prompts: Sequence[torch.Tensor], new_tokens: int = 32, draft_len: int = 4,
                 objective: str = "acceptance"):  # fmt: skip
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)} (got {objective!r})")
        self.model, self.prompts, self.new_tokens, self.draft_len, self.objective = (
            model,
            [p.to(next(model.parameters()).device) for p in prompts],
            new_tokens,
            draft_len,
            objective,
        )
        self.n_layers = len(decoder_layers(model))
        self.records: dict[tuple[int, ...], dict] = {}
        self.greedy_tps = greedy_tokens_per_s(model, self.prompts, new_tokens)

    def record(self, skip: Sequence[int]) -> dict:
        key = tuple(sorted(int(i) for i in skip))
        if key not in self.records:
            s = score_mask(self.model, self.prompts, key, self.new_tokens, self.draft_len)
            self.records[key] = {"skip": list(key), "acceptance": s.acceptance, "tokens_per_s": s.tokens_per_s,
                                 "tokens_per_round": s.tokens_per_round,
                                 "speedup": s.tokens_per_s / self.greedy_tps if self.greedy_tps else 0.0}  # fmt: skip
        return self.records[key]

    def __call__(self, skip: Sequence[int]) -> float:
        return float(self.record(skip)[self.objective])


def per_layer_scores(scorer: MaskScorer) -> list[dict]:
    """Each layer skipped alone, most redundant (highest score) first; ties keep layer order."""
    rows = [
        {"layer": i, **{k: v for k, v in scorer.record((i,)).items() if k != "skip"}} for i in range(scorer.n_layers)
    ]
    ranked = sorted(rows, key=lambda r: -r[scorer.objective])
    return [{"rank": n, **r} for n, r in enumerate(ranked)]


def greedy_search(scorer: MaskScorer, k: int) -> dict:
    """Add, one at a time, the layer whose skipping (with those chosen) scores best."""
    chosen: list[int] = []
    for _ in range(k):
        rest = [i for i in range(scorer.n_layers) if i not in chosen]
        chosen.append(max(rest, key=lambda i: (scorer(chosen + [i]), -i)))
    return {"order": list(chosen), "mask": sorted(chosen), "score": scorer(chosen), **_metrics(scorer, chosen)}


def bo_search(scorer: MaskScorer, k: int, budget: int = 12, n_init: int = 4, seed: int = 0) -> dict:
    """Bayesian optimisation over [0, 1]^L with top-k discretisation; ``budget`` distinct masks at most."""
    seen: dict[tuple[int, ...], float] = {}
    order: list[tuple[int, ...]] = []

    def f(x: torch.Tensor) -> float:
        m = topk_mask(x, k)
        if m not in seen:
            seen[m] = scorer(m)
            order.append(m)
        return seen[m]

    def exclude(c: torch.Tensor) -> torch.Tensor:
        return torch.tensor([topk_mask(x, k) in seen for x in c], dtype=torch.bool)

    budget = min(budget, math.comb(scorer.n_layers, k))
    maximize(f, scorer.n_layers, budget, n_init=n_init, seed=seed, exclude=exclude)
    best = max(order, key=lambda m: seen[m])  # first of the best, in evaluation order
    history = [{"mask": list(m), "score": seen[m]} for m in order]
    return {
        "mask": list(best),
        "score": seen[best],
        "evaluations": len(order),
        "history": history,
        **_metrics(scorer, best),
    }


def _metrics(scorer: MaskScorer, mask: Sequence[int]) -> dict:
    r = scorer.record(mask)
    return {"acceptance": r["acceptance"], "tokens_per_s": r["tokens_per_s"], "speedup": r["speedup"]}


def held_out_prompts(
    seq_len: int, max_bytes: int, n: int, prompt_len: int, seed: int = 0, tokenizer=None
) -> list[torch.Tensor]:
    """``n`` prompts from the corpus' validation split: byte ids, or ``tokenizer`` ids of the same text."""
    task = corpus_task(max(seq_len, prompt_len), max_bytes)  # the byte split; a tokenizer encodes the same text
    val = task.corpus.val
    if val.numel() <= prompt_len:
        raise ValueError(f"prompt_len {prompt_len} is longer than the validation split ({val.numel()} bytes); lower it")
    starts = torch.randint(0, val.numel() - prompt_len, (n,), generator=torch.Generator().manual_seed(seed + 1))
    prompts = [val[s : s + prompt_len].long() for s in starts.tolist()]
    if tokenizer is None:
        return prompts
    texts = [bytes(p.tolist()).decode("utf-8", errors="replace") for p in prompts]
    return [torch.tensor(tokenizer(t)["input_ids"], dtype=torch.long) for t in texts]


def rank_layers(
    teacher: nn.Module, prompts: Sequence[torch.Tensor] | None = None, *, n_prompts: int = 8, prompt_len: int = 64,
    new_tokens: int = 32, draft_len: int = 4, objective: str = "acceptance", tokenizer=None, seed: int = 0,
    max_bytes: int = 2_000_000,
) -> list[dict]:  # fmt: skip
    """Attention layers ranked by redundancy, most redundant first: each dict holds ``rank``,
    ``layer``, and the self-speculative ``acceptance``, ``tokens_per_s``, ``speedup`` with that
    layer's attention skipped alone (prompts default to held-out corpus windows)."""
    if prompts is None:
        prompts = held_out_prompts(prompt_len, max_bytes, n_prompts, prompt_len, seed, tokenizer)
    teacher.eval()
    return per_layer_scores(MaskScorer(teacher, prompts, new_tokens, draft_len, objective))


def search_masks(scorer: MaskScorer, k: int, budget: int = 12, n_init: int = 4, seed: int = 0) -> dict:
    """Per-layer ranking, greedy and BO searches for k layers, and every mask scored."""
    if not 1 <= k < scorer.n_layers:
        raise ValueError(f"k must be in 1..{scorer.n_layers - 1} for a {scorer.n_layers}-layer teacher (got {k})")
    ranking = per_layer_scores(scorer)
    greedy = greedy_search(scorer, k)
    bo = bo_search(scorer, k, budget, n_init, seed)
    return {"objective": scorer.objective, "greedy_tokens_per_s": scorer.greedy_tps, "ranking": ranking,
            "greedy": greedy, "bo": bo, "masks_scored": list(scorer.records.values())}  # fmt: skip


def format_ranking(ranking: list[dict]) -> str:
    """One line per layer, most redundant first (what ``archbench redundancy`` prints)."""
    lines = ["rank  layer  acceptance  tokens/s  speedup"]
    for r in ranking:
        lines.append(
            f"{r['rank']:>4}  {r['layer']:>5}  {r['acceptance']:>10.3f}  {r['tokens_per_s']:>8.1f}  {r['speedup']:>7.2f}"
        )
    return "\n".join(lines)


def uniform_layers(n_layers: int, k: int) -> list[int]:
    """k evenly spaced layers: every other layer (1, 3, 5, ...) when k = n_layers / 2."""
    return sorted({int((i + 0.5) * n_layers / k) for i in range(k)})


# ---- distillation --------------------------------------------------------------------------------


def distil(student: nn.Module, teacher: nn.Module, batches, steps: int, lr: float, *, train: str = "mixers",
           ce_weight: float = 0.0, warmup_frac: float = 0.1, stage: str = "", progress=None, tokens_before: int = 0,
           grad_clip: float = 1.0) -> list[dict]:  # fmt: skip
    """Trains the converted mixers (``train="mixers"``) or every parameter (``"all"``) on KL to the
    teacher (+ ``ce_weight`` x CE) with AdamW (no weight decay), warm-up then cosine, clipping;
    returns the per-step history (stage, step, loss, kl, ce, lr, tokens)."""
    if train not in ("mixers", "all"):
        raise ValueError(f"train must be 'mixers' or 'all' (got {train!r})")
    params = train_only(student, replaced_mixers(student).values() if train == "mixers" else None)
    if steps == 0:
        return []
    teacher.eval()
    student.train()

    def loss_fn(inputs: torch.Tensor, labels: torch.Tensor):
        with torch.no_grad():
            t_logits = teacher(input_ids=inputs, use_cache=False).logits
        return kd_terms(student(input_ids=inputs, use_cache=False).logits, t_logits, labels, ce_weight)

    log = StepLog(steps, progress, tags={"stage": stage}, event={"event": "step"})
    train_loop(params, batches, steps, warmup_cosine(lr, steps, warmup_frac), loss_fn, grad_clip=grad_clip,
               on_step=log, tokens=tokens_before)  # fmt: skip
    student.eval()
    return log.rows


@torch.no_grad()
def evaluate(model: nn.Module, teacher: nn.Module, task, n_windows: int, batch_size: int = 32, probes: int = 0,
             seed: int = 0) -> dict:  # fmt: skip
    """Bits per byte on the validation split, top-1 agreement and KL(teacher || model), and with
    ``probes`` > 0 the zero-shot recall probes (``recipes.probes``) at the task's window length."""
    model.eval()
    device = next(model.parameters()).device
    model_fn = lambda ids: model(input_ids=ids, use_cache=False).logits  # noqa: E731
    teacher_fn = lambda ids: teacher(input_ids=ids, use_cache=False).logits  # noqa: E731
    bpb = bits_per_byte(model_fn, task, n_windows, batch_size, device)
    inputs = task.eval_sets(n_windows, 0)["val"].inputs
    a = agreement(model_fn, teacher_fn, inputs, batch_size, device, per_position=True)
    out = {"bits_per_byte": bpb, "top1_agreement": a["top1_agreement"], "kl_vs_teacher": a["kl"]}
    out.update(task_probes(model_fn, task, probes, seed, device))
    return out


@torch.no_grad()
def decode_metrics(model: nn.Module, config: RedundancyConfig) -> dict:
    """Decode state and speed of ``model`` (teacher or hybrid) through ``HybridDecoder``, the same
    cached driver for both: ``state_bytes_{T}`` (with its ``kv`` and ``ssm`` parts) after a T-byte
    prompt for T in ``decode_contexts``, and prefill / decode latency and peak memory at
    ``speed_contexts`` (``recipes.speed.lm_speed``)."""
    dec = HybridDecoder(model)
    g = torch.Generator().manual_seed(config.seed)
    out: dict = {}
    vocab = int(model.config.vocab_size)
    for T in config.decode_contexts:
        ids = torch.randint(0, vocab, (1, T), generator=g).to(config.device)
        sizes = dec.state_nbytes(dec.prefill(ids)[1])
        out.update({f"state_bytes_{T}": sizes["total"], f"kv_bytes_{T}": sizes["kv"], f"ssm_bytes_{T}": sizes["ssm"]})
    for T in config.speed_contexts:
        out.update(lm_speed(dec, T, vocab=vocab, device=config.device, seed=config.seed))
    return out


# ---- the recipe ----------------------------------------------------------------------------------


def _teacher(config: RedundancyConfig, progress=None) -> tuple[nn.Module, dict, object]:
    """(teacher, facts, tokenizer or None for a byte-level teacher)."""
    model, facts, tokenizer = recipe_teacher(config.teacher, config.teacher_spec, config.device, progress)
    return model, ({"name": "default", **facts} if config.teacher == "default" else {"name": config.teacher}), tokenizer


def _train_student(config: RedundancyConfig, teacher: nn.Module, task, layers: Sequence[int], name: str,
                   progress=None) -> tuple[nn.Module, list[dict]]:  # fmt: skip
    """Convert ``layers`` and distil: stage 1 (mixers only), then stage 2 (all parameters)."""
    student = convert(teacher, layers, config.conv_kernel, config.chunk_size, config.seed)
    batches = lm_batches(task, config.batch_size, config.seed, device=config.device)  # the same for every student
    h = distil(student, teacher, batches, config.steps, config.lr, train="mixers", ce_weight=config.ce_weight,
               warmup_frac=config.warmup_frac, stage=f"{name}/mixers", progress=progress)  # fmt: skip
    h += distil(student, teacher, batches, config.e2e_steps, config.e2e_lr, train="all", ce_weight=config.ce_weight,
                warmup_frac=config.warmup_frac, stage=f"{name}/e2e", progress=progress,
                tokens_before=h[-1]["tokens"] if h else 0)  # fmt: skip
    for p in student.parameters():
        p.requires_grad_(False)
    return student, h


def run(config: RedundancyConfig, out_dir: Path, progress=None) -> dict:
    """Search, convert, distil and evaluate; writes rows.jsonl, run.json, losses.jsonl, ranking.json
    and the students (``student_rad`` / ``student_uniform`` .safetensors + .json) into ``out_dir``."""
    from archbench.store import RunDir, now_iso

    start = time.perf_counter()
    out_dir = Path(out_dir)
    rd = RunDir(out_dir).create()
    meta = {"recipe": "redundancy", "config": asdict(config), "started": now_iso(), "status": "running"}
    rd.write_meta(meta)
    teacher, teacher_facts, tokenizer = _teacher(config, progress)
    for p in teacher.parameters():
        p.requires_grad_(False)
    n_layers = len(decoder_layers(teacher))
    if config.k >= n_layers:
        raise ValueError(f"redundancy: k = {config.k} must be below the teacher's {n_layers} layers; lower k")
    task = corpus_task(config.seq_len, config.max_bytes, tokenizer)

    t0 = time.perf_counter()
    prompts = held_out_prompts(config.seq_len, config.max_bytes, config.n_prompts, config.prompt_len, config.seed,
                               tokenizer)  # fmt: skip
    scorer = MaskScorer(teacher, prompts, config.new_tokens, config.draft_len, config.objective)
    search = search_masks(scorer, config.k, config.bo_budget, config.bo_init, config.seed)
    search["wall_s"] = time.perf_counter() - t0
    (out_dir / "ranking.json").write_text(json.dumps(search, indent=2))
    if progress:
        progress({"event": "ranking", "text": format_ranking(search["ranking"]), "greedy": search["greedy"]["mask"],
                  "bo": search["bo"]["mask"]})  # fmt: skip

    t0 = time.perf_counter()
    base = {**evaluate(teacher, teacher, task, config.eval_windows, probes=config.probe_examples, seed=config.seed),
            **decode_metrics(teacher, config)}
    rd.append({"recipe": "redundancy", "model": "teacher", "status": "ok", **base, "bpb_vs_teacher": 1.0,
               "layers_replaced": [], "tokens": 0, "wall_s": time.perf_counter() - t0})  # fmt: skip
    choices = {"rad": search[config.search]["mask"]}
    if config.compare_uniform:
        choices["uniform"] = uniform_layers(n_layers, config.k)
    history: list[dict] = []
    students: dict[str, dict] = {}
    trained: dict[tuple[int, ...], tuple[nn.Module, dict]] = {}
    for name, layers in choices.items():
        key = tuple(layers)
        if key in trained:  # the uniform choice can coincide with RAD's: same student, trained once
            student, first = trained[key]
            row = {**first, "model": f"student_{name}", "same_layers_as": first["model"], "wall_s": 0.0}
        else:
            t0 = time.perf_counter()
            student, h = _train_student(config, teacher, task, layers, name, progress)
            history += [{"student": name, **e} for e in h]
            metrics = {**evaluate(student, teacher, task, config.eval_windows, probes=config.probe_examples,
                                  seed=config.seed), **decode_metrics(student, config)}  # fmt: skip
            for T in config.speed_contexts:
                metrics[f"decode_speedup_{T}"] = base[f"decode_s_per_token_{T}"] / metrics[f"decode_s_per_token_{T}"]
            mask = scorer.record(layers)
            row = {"recipe": "redundancy", "model": f"student_{name}", "status": "ok", **metrics,
                   "bpb_vs_teacher": metrics["bits_per_byte"] / base["bits_per_byte"], "layers_replaced": list(layers),
                   "skip_acceptance": mask["acceptance"], "skip_tokens_per_s": mask["tokens_per_s"],
                   "tokens": h[-1]["tokens"] if h else 0, "final_loss": h[-1]["loss"] if h else None,
                   "wall_s": time.perf_counter() - t0}  # fmt: skip
            trained[key] = (student, row)
        save_student(student, out_dir, f"student_{name}", {"layers_choice": name, "teacher": teacher_facts.get("name")})
        rd.append(row)
        students[name] = row
    with open(out_dir / "losses.jsonl", "w", encoding="utf-8") as f:
        for e in history:
            f.write(json.dumps(e) + "\n")

    summary = {"teacher_bits_per_byte": base["bits_per_byte"], "k": config.k, "n_layers": n_layers,
               "ranking": [r["layer"] for r in search["ranking"]], "greedy_mask": search["greedy"]["mask"],
               "bo_mask": search["bo"]["mask"], "search_wall_s": search["wall_s"],
               **{f"{n}_layers": s["layers_replaced"] for n, s in students.items()},
               **{f"{n}_bits_per_byte": s["bits_per_byte"] for n, s in students.items()},
               **{f"{n}_tokens": s["tokens"] for n, s in students.items()},
               "wall_s": time.perf_counter() - start}  # fmt: skip
    meta.update(status="ok", finished=now_iso(), teacher=teacher_facts, summary=summary)
    rd.write_meta(meta)
    return summary


def load_student(out_dir: Path, which: str = "rad") -> nn.Module:
    """The ``which`` ("rad" or "uniform") student a ``run`` wrote into ``out_dir``, in eval mode."""
    if which not in STUDENTS:
        raise ValueError(f"which must be one of {', '.join(STUDENTS)} (got {which!r})")
    return load_saved_student(Path(out_dir), f"student_{which}")
