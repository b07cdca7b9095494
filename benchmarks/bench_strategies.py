"""Cost of every strategy of `oreal.strategies.query`, in one table of "x one read pass" of its input.

    python benchmarks/bench_strategies.py            # N=2, C=19, 256x512, K=4 MC samples, 144 superpixels per image
    python benchmarks/bench_strategies.py --small    # a quick run at 1/4 of the size
    python benchmarks/bench_strategies.py --cityscapes --device cuda --dtype float16   # N=8, 19x1024x2048, GPU

For each strategy (default aggregation and options) the time of one `query` call is divided by the time of one
read pass over the input it scores (`probs.amax(dim=1)`, `logits.amax(dim=1)` for pixelbal, `mc_probs.amax(dim=2)`
for the MC strategies, the probs pass for random), as the median of ratios of back-to-back runs (robust to load
from other processes). `revisiting_sp` and `pixelbal` need pool statistics before they can score (two passes when
streamed); their cost is also given relative to `bvsb`, the one-pass score they build on, as a median of ratios of
back-to-back runs of the two. On CUDA every time is taken between ``torch.cuda.synchronize()`` calls.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_select import (DTYPES, add_pool_options, paired_ratio, pool_device, synchronizer,  # noqa: E402
                          synthetic_probs, voronoi_superpixels)

from oreal import strategies  # noqa: E402

TWO_PASS = ("revisiting_sp", "pixelbal")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pool_options(parser)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget", type=int, default=50)
    parser.add_argument("--only", default=None, help="comma-separated strategy names (default: all)")
    args = parser.parse_args()
    device, dtype = pool_device(args), DTYPES[args.dtype]
    sync = synchronizer(device)
    # superpixels of about 30x30 pixels at every size
    n, c, k, h, w, grid = ((2, 19, 4, 128, 256, (6, 12)) if args.small else (8, 19, 4, 1024, 2048, (48, 48))
                           if args.cityscapes else (2, 19, 4, 256, 512, (12, 12)))
    s = grid[0] * grid[1]
    gen = torch.Generator().manual_seed(0)
    probs = synthetic_probs(n, c, h, w, gen, device, dtype)
    logits = probs.float().clamp_min(1e-30).log().to(dtype)
    mc_probs = torch.stack([synthetic_probs(n, c, h, w, gen, device, dtype) for _ in range(k)], 1)
    images = torch.rand(n, 3, h, w, generator=gen).to(device, dtype)
    sp_map = voronoi_superpixels(n, h, w, grid, gen, device)
    counts = torch.randint(0, 50, (c,), generator=gen).to(device)
    where = f"{torch.get_num_threads()} threads" if device.type == "cpu" else str(device)
    print(f"pool: N={n} C={c} {h}x{w}, K={k}, {s} superpixels per image, {args.dtype}, budget {args.budget}, "
          f"{where}")
    inputs = dict(probs=probs, logits=logits, mc_probs=mc_probs, images=images, sp_map=sp_map,
                  num_superpixels=s, budget=args.budget, labeled_counts=counts)
    reads = {"probs": lambda: probs.amax(dim=1), "logits": lambda: logits.amax(dim=1),
             "mc_probs": lambda: mc_probs.amax(dim=2)}
    names = args.only.split(",") if args.only else list(strategies.available())
    rows = {}
    for name in names:
        needs = strategies.requirements(name)["inputs"]
        source = next((x for x in ("mc_probs", "logits", "probs") if x in needs), "probs")

        def call(name=name):
            return strategies.query(name, generator=torch.Generator().manual_seed(1), **inputs)

        ratio, seconds, _ = paired_ratio(call, reads[source], args.repeats, sync)
        # the two-pass strategies against bvsb, their one-pass base, paired like the read pass
        base = paired_ratio(call, lambda: strategies.query("bvsb", **inputs), args.repeats, sync)[0] \
            if name in TWO_PASS else None
        rows[name] = (ratio, seconds, source, base)
    print(f"{'strategy':20s} {'x read pass':>12s} {'ms':>9s}  input")
    for name, (ratio, seconds, source, base) in rows.items():
        extra = f"  ({base:.2f}x bvsb)" if base is not None else ""
        print(f"{name:20s} {ratio:11.2f}x {1e3 * seconds:9.1f}  {source}{extra}")


if __name__ == "__main__":
    main()
