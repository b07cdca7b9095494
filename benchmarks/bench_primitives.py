"""Cost of the torch operations acquisition is built from, as ratios to one read pass, measured in one run.

    python benchmarks/bench_primitives.py              # torch's threads
    python benchmarks/bench_primitives.py --threads 1

A selection reads ``probs`` once; what it does per value on top of that read bounds how close to one read pass it
can get. Every operation here runs on a slab of ``C x CPU_CHUNK`` float32 values (the slab `oreal` reduces at a time
on the CPU, in the last-level cache) taken from the same synthetic pool as `bench_select.py`, and its time is divided
by the time of the read pass over the whole pool (``probs.amax(dim=1)``) scaled to the slab's share of the values:
"x read pass" is what the operation would add to a selection if it ran once per value. Medians of back-to-back
pairs, robust to load from other processes.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_select import paired_ratio, synthetic_probs, voronoi_superpixels  # noqa: E402

from oreal.aggregate import CPU_CHUNK  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n, c, h, w, grid = 2, 19, 512, 1024, (24, 24)
    s = grid[0] * grid[1]
    gen = torch.Generator().manual_seed(0)
    probs = synthetic_probs(n, c, h, w, gen)
    sp_map = voronoi_superpixels(n, h, w, grid, gen)
    run = CPU_CHUNK
    slab = probs[0].reshape(c, h * w)[:, :run].contiguous()  # one image's run of pixels, every class
    index = sp_map[0].reshape(-1)[:run].long()
    share = slab.numel() / probs.numel()
    out, out2 = torch.empty_like(slab), torch.empty_like(slab)
    acc = torch.zeros(c, s + 1)
    rows = index.expand(c, run)
    ops = {
        "read pass of the slab, probs-like layout (amax over classes)": lambda: slab.amax(dim=0),
        "min(p, 1 - p) (two kernels)": lambda: torch.minimum(slab, torch.sub(1, slab, out=out), out=out),
        "scatter_reduce amax into superpixels": lambda: acc.scatter_reduce_(1, rows, slab, "amax"),
        "scatter_add into superpixels": lambda: acc.scatter_add_(1, rows, slab),
        "log (vectorised)": lambda: torch.log(slab, out=out),
        "log1p": lambda: torch.log1p(slab, out=out),
        "xlogy(p, p) (scalar)": lambda: torch.special.xlogy(slab, slab, out=out),
        "p ln max(p, tiny) (oreal's t ln t)": lambda: torch.clamp_min(slab, 1e-38, out=out2).log_().mul_(slab),
        "sum over classes (validation)": lambda: slab.sum(dim=0),
        "amax over blocks of 8 rows (a block prefilter)": lambda: slab.view(c, -1, 8, w).amax(dim=2),
    }
    blocks = sp_map.reshape(n, h // 8, 8, w)
    mixed = (blocks.amax(dim=2) != blocks.amin(dim=2)).double().mean().item()
    print(f"pool N={n} C={c} {h}x{w}; slab {c} x {run} = {share:.3f} of the pool; {torch.get_num_threads()} threads")
    print(f"blocks of 8 rows x 1 column that cross a superpixel boundary: {100 * mixed:.1f} %")
    print(f"{'operation on the slab':62s} {'x read pass':>11s} {'ns/value':>9s}")
    for name, fn in ops.items():
        ratio, seconds, _ = paired_ratio(fn, lambda: probs.amax(dim=1), args.repeats)
        print(f"{name:62s} {ratio / share:10.2f}x {1e9 * seconds / slab.numel():9.3f}")


if __name__ == "__main__":
    main()
