"""A CPU speed-regression check that means the same thing on any machine.

    python benchmarks/regression.py save  [--baseline benchmarks/baseline_cpu.json] [--threads 1] [--rounds 31]
    python benchmarks/regression.py check [--baseline benchmarks/baseline_cpu.json] [--factor 1.7] [--alpha 0.002]

Every reference op is timed twice: its forward, and as ``<op>.train`` a training call (forward,
then the gradients of every input), because the backward passes are written and tuned apart from
the forwards and can regress alone.

Absolute times do not travel: the CI runner is a different CPU from the machine the baseline was
measured on, and both are shared. What travels better is a *ratio*. Each reference op is timed
next to a fixed piece of work, a square fp32 matmul (512 x 512 @ 512 x 512, about 2 ms on one core),
in the same process, at the same thread count, and its time is expressed in units of that matmul.
A faster or slower machine moves both numbers together; a code change that makes one op slower
moves only that op's ratio.

Timing is interleaved: every round visits all ops and the matmul once (the starting op rotates
from round to round), so a slow phase of a shared machine - another job starting, a frequency
drop - lands on every op alike instead of on whichever op happened to run then. A sample is one
call, or several back to back for ops shorter than ``min_sample_s``, divided by their count; each
op's time is the median of its samples over the rounds, so an outlier round does not move it.

One thread by default (``save --threads N`` records another count, and ``check`` uses the recorded
one). On a 2-core machine that is doing anything else, two OpenMP threads stall at every
barrier whenever one of them is descheduled; the many small kernels of a chunked op hit far more
barriers than one large matmul, so their ratio swings with the load: on the dev VM under load,
repeated two-thread measurements of the same code differed by 3x to 17x per op, single-thread
ones by at most 1.34x.

``save`` writes each op's per-round ratios (its time in a round over the matmul's time in the
same round) and their medians, with the conditions they were measured under (shape, thread
count, rounds) and facts about the machine for the reader (CPU model, logical CPUs, torch and
Python versions, git revision, date), to a JSON baseline. ``check`` re-measures under the
baseline's recorded conditions and judges every op with ``archbench.gate``, the rule and the
verdict words ``archbench compare`` uses: the effect is current / baseline of the median
ratios, and an op is ``regressed`` when that exceeds ``factor`` **and** the two sets of
per-round ratios differ by the Mann-Whitney test at ``alpha`` (31 rounds a side reach it with
room to spare; fewer than 8 are ``underpowered``).
The factor (default 1.7) sits between the noise and the signal measured on the dev VM under
load: unchanged code gave current/baseline quotients of 0.86 to 1.17, and an op made to run
twice per call gave 1.84 to 1.87 (the second call finds warm caches), so a factor of 2 would
let a doubling through; 1.7 rather than 1.5 leaves room for a CI CPU whose small kernels and
big matmul do not speed up alike. An op that got much faster (``improved``) does not fail; it is
marked so that the baseline can be re-saved.

Exit codes (those of ``archbench compare``): 0 no op regressed; 1 some op regressed (the table
names it); 2 the baseline is missing or malformed (or has no per-round samples), or an argument
is bad; 3 no op regressed but some op's rounds are too few to show a regression
(``--allow-underpowered`` makes that 0).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from archbench import gate
from archbench.measure.env import cpu_model, git_revision
from inputs import Shape, op_cases, train_call
from interleave import round_robin_samples

FORMAT = "archbench-cpu-op-ratios/2"
REFERENCE = "matmul"
DEFAULT_BASELINE = Path(__file__).resolve().with_name("baseline_cpu.json")
DEFAULT_FACTOR = 1.7
DEFAULT_ALPHA = 0.002


class BaselineError(ValueError):
    """The baseline file is missing or cannot be used; the message says what to do."""


@dataclass(frozen=True)
class Config:
    """The conditions of one measurement; ``save`` records them and ``check`` reproduces them."""

    shape: Shape = field(default_factory=Shape)
    matmul: int = 512  # the reference is an n x n @ n x n fp32 matmul
    threads: int = 1  # see the module docstring: two threads on a busy 2-core machine stall
    rounds: int = 31
    min_sample_s: float = 0.002  # shorter ops are called repeatedly within one sample


@dataclass(frozen=True)
class Verdict:
    """One op's comparison: ``quotient`` = current / baseline median ratio (None for an op new
    since the baseline); ``status`` is a word of ``archbench.gate.VERDICTS`` or ``added``."""

    op: str
    baseline: float | None
    current: float
    quotient: float | None
    status: str
    p_value: float | None = None


def build_cases(shape: Shape) -> dict[str, Callable[[], object]]:
    """Each reference op as a zero-argument callable on fixed fp32 CPU inputs: its forward
    (``name``) and a training call (``name.train``: forward, then the gradients of the output's
    sum with respect to every input), since a change can slow one and not the other."""
    forward = {name: case.fn for name, case in op_cases(shape).items()}
    train = {f"{name}.train": train_call(case.fn, case.inputs) for name, case in op_cases(shape, requires_grad=True).items()}
    return forward | train


def build_reference(n: int) -> Callable[[], object]:
    """The unit of time: an n x n @ n x n fp32 matmul on fixed inputs."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    return lambda: torch.mm(a, b)


def measure(config: Config) -> dict[str, list[float]]:
    """Seconds per call of every op and of the reference in each round, timed round-robin in this process."""
    previous = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        fns = {**build_cases(config.shape), REFERENCE: build_reference(config.matmul)}
        names = list(fns)
        with torch.no_grad():
            calls = {name: _calls_per_sample(fns[name], config.min_sample_s) for name in names}
            return round_robin_samples(fns, config.rounds, calls)
    finally:
        torch.set_num_threads(previous)


def _calls_per_sample(fn: Callable[[], object], min_sample_s: float) -> int:
    """Warm ``fn`` up and return how many back-to-back calls fill ``min_sample_s`` (the fastest of 3 calls decides)."""
    fn()
    fastest = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        fastest = min(fastest, time.perf_counter() - t0)
    return max(1, min(1000, int(min_sample_s / max(fastest, 1e-9)) + 1))


def ratio_samples(times: dict[str, list[float]]) -> dict[str, list[float]]:
    """Each op's time in units of the reference matmul's time, round by round (both measured in
    the same round, seconds apart)."""
    unit = times[REFERENCE]
    return {name: [t / u for t, u in zip(ts, unit)] for name, ts in times.items() if name != REFERENCE}


def medians(samples: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(s) for name, s in samples.items()}


def judge(
    baseline: dict[str, list[float]], current: dict[str, list[float]], factor: float, alpha: float = DEFAULT_ALPHA
) -> list[Verdict]:
    """Compare per-round ratios with ``archbench.gate.judge_unpaired`` (threshold ``factor``)."""
    if factor <= 1:
        raise ValueError(f"factor must be > 1 (got {factor}); it is the slowdown that counts as a regression")
    verdicts = []
    for op, cur in current.items():
        base = baseline.get(op)
        if not base:
            verdicts.append(Verdict(op, None, statistics.median(cur), None, "added"))
            continue
        j = gate.judge_unpaired(base, cur, factor, alpha)
        verdicts.append(Verdict(op, statistics.median(base), statistics.median(cur), j.ratio, j.verdict, j.p_value))
    return verdicts


def format_table(verdicts: Sequence[Verdict], factor: float) -> str:
    """A fixed-width table: op, baseline and current median ratios, their quotient, p, verdict."""
    width = max([len("op")] + [len(v.op) for v in verdicts])
    lines = [f"{'op':<{width}}  {'baseline':>9}  {'current':>9}  {'cur/base':>8}  {'p':>7}  verdict (regressed above {factor:g}x)"]
    for v in verdicts:
        base = "-" if v.baseline is None else f"{v.baseline:9.3f}"
        quot = "-" if v.quotient is None else f"{v.quotient:7.2f}x"
        p = "-" if v.p_value is None else f"{v.p_value:7.2g}"
        lines.append(f"{v.op:<{width}}  {base:>9}  {v.current:9.3f}  {quot:>8}  {p:>7}  {v.status}")
    return "\n".join(lines)


def machine_facts(threads: int) -> dict[str, object]:
    """For the reader of a baseline only; nothing compares these."""
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "git": git_revision(Path(__file__).resolve().parent),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def save(path: Path, config: Config) -> dict:
    """Measure and write the baseline JSON to ``path``; returns what was written."""
    times = measure(config)
    samples = ratio_samples(times)
    data = {
        "format": FORMAT,
        "reference": f"{config.matmul}x{config.matmul} @ {config.matmul}x{config.matmul} fp32 matmul",
        "config": {**asdict(config), "shape": asdict(config.shape)},
        "ratios": medians(samples),
        "times_s": medians(times),
        "ratio_samples": samples,
        "machine": machine_facts(config.threads),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return data


def load_baseline(path: Path) -> tuple[Config, dict[str, list[float]], dict]:
    """Read a baseline: (the config to reproduce, the per-round ratios, the whole document). Raises BaselineError."""
    hint = f"run `python benchmarks/regression.py save --baseline {path}` to write one"
    if not path.is_file():
        raise BaselineError(f"no baseline at {path}; {hint}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BaselineError(f"baseline {path} is not readable JSON ({e}); {hint}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BaselineError(f"baseline {path} is not in the {FORMAT} format; {hint}")
    try:
        cfg = dict(data["config"])
        config = Config(**{**cfg, "shape": Shape(**cfg["shape"])})
        base = {str(k): [float(x) for x in v] for k, v in data["ratio_samples"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise BaselineError(f"baseline {path} is malformed ({type(e).__name__}: {e}); {hint}") from None
    if not base or not all(v and all(x > 0 for x in v) for v in base.values()):
        raise BaselineError(f"baseline {path} needs positive per-round ratio samples for at least one op; {hint}")
    if config.threads < 1 or config.rounds < 1 or config.matmul < 1:
        raise BaselineError(f"baseline {path} has a non-positive threads, rounds or matmul size; {hint}")
    return config, base, data


def check(path: Path, factor: float, alpha: float = DEFAULT_ALPHA, allow_underpowered: bool = False) -> int:
    """Re-measure under the baseline's conditions, print the table, return the exit code (``archbench.gate``)."""
    try:
        config, base, data = load_baseline(path)
    except BaselineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    times = measure(config)
    verdicts = judge(base, ratio_samples(times), factor, alpha)
    m = data.get("machine", {})
    print(
        f"reference: {data.get('reference', REFERENCE)}, threads={config.threads}; "
        f"median {statistics.median(times[REFERENCE]) * 1e3:.2f} ms here ({cpu_model()}), "
        f"{data.get('times_s', {}).get(REFERENCE, float('nan')) * 1e3:.2f} ms on the baseline machine "
        f"({m.get('cpu', '?')}, saved {m.get('date', '?')})"
    )
    print(format_table(verdicts, factor))
    gone = sorted(set(base) - {v.op for v in verdicts})
    if gone:
        print(f"in the baseline but no longer measured: {', '.join(gone)}")
    code = gate.gate_exit_code([v.status for v in verdicts], allow_underpowered)
    if code == gate.EXIT_REGRESSED:
        bad = [v.op for v in verdicts if v.status == gate.REGRESSED]
        print(f"FAIL: {', '.join(bad)} slower than {factor:g}x the baseline ratio (p < {alpha:g})")
        return code
    weak = [v.op for v in verdicts if v.status == gate.UNDERPOWERED]
    if code == gate.EXIT_UNDERPOWERED:
        print(f"UNDERPOWERED: {', '.join(weak)}: too few rounds to reach p < {alpha:g}; save the baseline with "
              f"--rounds {gate.min_n_mann_whitney(alpha)} or more")  # fmt: skip
        return code
    if any(v.status in ("added", gate.IMPROVED) for v in verdicts):
        print("note: new or much faster ops; re-save the baseline on a quiet machine to track them")
    print("OK: no op regressed")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("save", help="measure and write the baseline")
    c = sub.add_parser("check", help="measure and compare with the baseline (exit 1 on a regression)")
    for q in (s, c):
        q.add_argument("--baseline", type=Path, default=DEFAULT_BASELINE, help="baseline JSON (default: %(default)s)")
    d = Config()
    s.add_argument("--threads", type=int, default=d.threads, help="torch threads (default: %(default)s)")
    s.add_argument("--rounds", type=int, default=d.rounds, help="round-robin rounds (default: %(default)s)")
    s.add_argument("--matmul", type=int, default=d.matmul, help="reference matmul size n (default: %(default)s)")
    s.add_argument("--seq-len", type=int, default=d.shape.seq_len, help="T (default: %(default)s)")
    s.add_argument("--heads", type=int, default=d.shape.heads, help="H (default: %(default)s)")
    s.add_argument("--head-dim", type=int, default=d.shape.head_dim, help="D (default: %(default)s)")
    c.add_argument(
        "--factor", type=float, default=DEFAULT_FACTOR, help="allowed slowdown of a ratio (default: %(default)s)"
    )
    c.add_argument("--alpha", type=float, default=DEFAULT_ALPHA, help="significance level (default: %(default)s)")
    c.add_argument("--allow-underpowered", action="store_true", help="exit 0 instead of 3 when rounds are too few")
    args = p.parse_args(argv)
    if args.command == "check":
        if args.factor <= 1:
            p.error(f"--factor must be > 1 (got {args.factor})")
        if not 0 < args.alpha < 1:
            p.error(f"--alpha must be between 0 and 1 (got {args.alpha})")
        return check(args.baseline, args.factor, args.alpha, args.allow_underpowered)
    for name in ("threads", "rounds", "matmul", "seq_len", "heads", "head_dim"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(args, name)})")
    shape = Shape(seq_len=args.seq_len, heads=args.heads, head_dim=args.head_dim)
    config = Config(shape=shape, matmul=args.matmul, threads=args.threads, rounds=args.rounds)
    data = save(args.baseline, config)
    print(f"wrote {args.baseline} ({data['machine']['cpu']}, threads={config.threads}, {config.rounds} rounds)")
    print(f"reference: {data['reference']}, median {data['times_s'][REFERENCE] * 1e3:.2f} ms")
    for op, r in data["ratios"].items():
        print(f"{op:<18} {r:9.3f}  ({data['times_s'][op] * 1e3:.2f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
