"""Op-level speed of the chunked references vs causal SDPA and linear attention (the issue-3 bar).

    python benchmarks/op_speed.py [--threads 2] [--lengths 4096 16384] [--device cpu]

Shapes: B=1, H=8, K=V=64, fp32 (selective scan: Dm=1024, N=16, i.e. Mamba at d_model 512).
Prints the median of a few calls and each op's ratio to SDPA and to linear attention, measured
in the same process. Run it on an idle machine: the ratios are what matters.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from archbench import ops


def median_time(fn, repeats: int = 5, sync=lambda: None) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return sorted(times)[repeats // 2]


def cases(T: int, device: str):
    B, H, K = 1, 8, 64
    r = lambda *s: torch.randn(*s, device=device)  # noqa: E731
    q, k, v = r(B, T, H, K), r(B, T, H, K), r(B, T, H, K)
    kn = F.normalize(k, dim=-1)
    g, gk, beta = F.logsigmoid(r(B, T, H)), F.logsigmoid(r(B, T, H, K)) / 16, torch.rand(B, T, H, device=device)
    w = -0.6 * torch.sigmoid(r(B, T, H, K))
    a = -F.normalize(r(B, T, H, K), dim=-1)
    b = -a * torch.rand(B, T, H, K, device=device)
    dt, A = F.softplus(r(B, T, H)), -torch.rand(H, device=device) - 0.5
    u, delta = r(B, T, 1024), F.softplus(r(B, T, 1024))
    As = -torch.rand(1024, 16, device=device) - 0.5
    qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))
    return {
        "sdpa_causal": lambda: F.scaled_dot_product_attention(qh, kh, vh, is_causal=True),
        "linear_attention": lambda: ops.linear_attention(q, k, v),
        "simple_gla": lambda: ops.simple_gla(q, k, v, g),
        "gla": lambda: ops.gla(q, k, v, gk),
        "delta_rule": lambda: ops.delta_rule(q, kn, v, beta),
        "gated_delta_rule": lambda: ops.gated_delta_rule(q, kn, v, g, beta),
        "dplr": lambda: ops.dplr(q, k, v, w, a, b),
        "ssd": lambda: ops.ssd(v, dt, A, r(B, T, 1, 64), r(B, T, 1, 64)),
        "selective_scan": lambda: ops.selective_scan(u, delta, As, r(B, T, 16), r(B, T, 16)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sync = (lambda: torch.cuda.synchronize()) if args.device.startswith("cuda") else (lambda: None)
    print(f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads, fp32, B=1 H=8 K=V=64")
    print(f"{'T':>6} {'op':18} {'median ms':>10} {'x sdpa':>7} {'x linear_attention':>19}")
    with torch.no_grad():
        for T in args.lengths:
            times = {name: median_time(fn, sync=sync) for name, fn in cases(T, args.device).items()}
            for name, t in times.items():
                print(f"{T:>6} {name:18} {t * 1e3:10.1f} {t / times['sdpa_causal']:7.2f} {t / times['linear_attention']:19.2f}")


if __name__ == "__main__":
    main()
