"""Op-level speed of the chunked references vs causal SDPA and linear attention (the issue-3 bar).

    python benchmarks/op_speed.py [--threads 2] [--lengths 4096 16384] [--device cpu]
                                  [--backend torch|auto] [--dtype float32|bfloat16] [--backward]

Shapes: B=1, H=8, K=V=64, fp32 unless ``--dtype`` says otherwise. ``--backend auto`` times the
fused kernel each op picks on the device (fla on a GPU node) instead of the reference; the
``kernel`` column says which ran. The selective scan has no heads; it is timed twice, N=16:
``selective_scan`` at Dm = H*K = 512 channels (the channel count of every other op) and
``selective_scan_x2`` at Dm = 1024 (Mamba's expand-2 inner width at d_model 512, twice the work).
Prints the median of ``--rounds`` calls and each op's ratio to SDPA and to linear attention,
measured in the same process, in interleaved rounds (each round calls every op once), so a shared
machine's slow phases fall on all ops alike. Run it on an idle machine: the ratios are what matters. ``--backward``
times a training call instead: forward, then the gradients of the output's sum with respect to
every input (what a fwd_bwd cell pays in the op).
"""

from __future__ import annotations

import argparse
import contextlib

import torch
import torch.nn.functional as F
from inputs import Shape, device_sync, op_cases, train_call
from interleave import round_robin_medians

from archbench.ops.dispatch import recording


# the ops this comparison covers (the quadratic reference softmax_attention and nsa are left out)
OPS = ("linear_attention", "simple_gla", "gla", "delta_rule", "gated_delta_rule", "dplr", "ssd", "selective_scan")


def cases(T: int, device: str, backend: str = "torch", dtype: torch.dtype = torch.float32, backward: bool = False):
    shape = Shape(seq_len=T, heads=8, head_dim=64, scan_dim=512, scan_state=16, ssd_state=64)
    built = op_cases(shape, device=device, dtype=dtype, backend=backend, requires_grad=backward)
    qh, kh, vh = (x.transpose(1, 2) for x in built["softmax_attention"].inputs)
    wide = op_cases(
        Shape(seq_len=T, heads=8, head_dim=64, scan_dim=1024, scan_state=16),
        device=device, dtype=dtype, backend=backend, requires_grad=backward,
    )  # fmt: skip
    fns = {"sdpa_causal": (lambda: F.scaled_dot_product_attention(qh, kh, vh, is_causal=True), (qh, kh, vh))}
    fns |= {name: (built[name].fn, built[name].inputs) for name in OPS}
    fns["selective_scan_x2"] = (wide["selective_scan"].fn, wide["selective_scan"].inputs)
    return {name: (train_call(fn, inputs) if backward else fn) for name, (fn, inputs) in fns.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="torch", choices=["torch", "auto"], help="reference, or the fused kernel each op picks")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--backward", action="store_true", help="time forward + backward (a training call)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds; each calls every op once (default 5)")
    args = p.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sync = device_sync(args.device)
    print(
        f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads, {args.dtype}, "
        f"backend {args.backend}, B=1 H=8 K=V=64, {'forward + backward' if args.backward else 'forward'}"
    )
    print(f"{'T':>6} {'op':18} {'median ms':>10} {'x sdpa':>7} {'x linear_attention':>19}  kernel")
    with contextlib.nullcontext() if args.backward else torch.no_grad():
        for T in args.lengths:
            fns, kernels = cases(T, args.device, args.backend, dtype, args.backward), {}
            for name, fn in fns.items():  # which kernel each op runs (the call also warms it up)
                with recording() as seen:
                    fn()
                    sync()
                kernels[name] = ",".join(sorted(seen)) or "torch SDPA"
            times = round_robin_medians(fns, args.rounds, sync=sync)
            for name, t in times.items():
                print(
                    f"{T:>6} {name:18} {t * 1e3:10.3f} {t / times['sdpa_causal']:7.2f} "
                    f"{t / times['linear_attention']:19.2f}  {kernels[name]}"
                )


if __name__ == "__main__":
    main()
