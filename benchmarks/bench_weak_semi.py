"""Cost of the weak-label losses, the stage-2 pseudo labels and the PLAR refinement, measured in one run.

    python benchmarks/bench_weak_semi.py                 # N=4, C=11, 180x240 labels, D=64 features at stride 8
    python benchmarks/bench_weak_semi.py --repeat 3

Prints, as ratios measured back to back in the same process (single-threaded, so stable on shared machines):
- `weak_loss` forward + backward / `F.cross_entropy` forward + backward on the same logits (the price of the
  weak losses over dominant-label training, per step);
- `prototype_pseudo_labels` (every superpixel labeled) and `refine` (20% of pixels labeled), each / one
  `weak_loss` forward + backward;
- `refine` and `prototype_pseudo_labels` with `block_size` 2^10 ... 2^16, each / the default 2^14 (the cost of
  another memory bound).
Each time is the median of `--repeat` runs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from oreal import semi, weak


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    n, c, h, w, d, s = 4, 11, 180, 240, 64, 400
    g = torch.Generator().manual_seed(0)
    logits = 3 * F.interpolate(torch.randn(n, c, h // 30, w // 30, generator=g), (h, w), mode="bilinear",
                               align_corners=False)
    probs = logits.softmax(1)
    features = torch.randn(n, d, h // 8, w // 8, generator=g)
    sp_map = (torch.arange(h)[:, None] // 9 * 20 + torch.arange(w)[None, :] // 12).expand(n, h, w).contiguous()
    target = probs.argmax(1)
    weak_set = weak.weak_labels(target, sp_map, s, c)
    partial = torch.where(torch.rand(n, h, w, generator=g) < 0.2, target, 255)

    def weak_step():
        x = logits.clone().requires_grad_(True)
        weak.weak_loss(x, sp_map, weak_set, s, validate_args=False).total.backward()

    def ce_step():
        x = logits.clone().requires_grad_(True)
        F.cross_entropy(x / 0.1, target).backward()

    t_weak = timed(weak_step, args.repeat)
    t_ce = timed(ce_step, args.repeat)
    t_pseudo = timed(lambda: weak.prototype_pseudo_labels(features, probs, sp_map, weak_set, s), args.repeat)
    t_refine = timed(lambda: semi.refine(features, probs, partial), args.repeat)
    print(f"pool: N={n} C={c} {h}x{w} labels, features D={d} at {h // 8}x{w // 8}, S={s}, "
          f"{float(weak_set.sum(-1).float().mean()):.2f} classes per superpixel")
    print(f"weak_loss fwd+bwd / cross_entropy fwd+bwd: {t_weak / t_ce:.2f} ({t_weak * 1e3:.0f} ms / "
          f"{t_ce * 1e3:.0f} ms)")
    print(f"prototype_pseudo_labels / weak_loss step:  {t_pseudo / t_weak:.2f} ({t_pseudo * 1e3:.0f} ms)")
    print(f"refine / weak_loss step:                   {t_refine / t_weak:.2f} ({t_refine * 1e3:.0f} ms)")
    for bits in (10, 12, 16):
        b = 1 << bits
        t_r = timed(lambda: semi.refine(features, probs, partial, block_size=b), args.repeat)
        t_p = timed(lambda: weak.prototype_pseudo_labels(features, probs, sp_map, weak_set, s, block_size=b),
                    args.repeat)
        print(f"block 2^{bits} / 2^14: refine {t_r / t_refine:.2f}, prototype_pseudo_labels {t_p / t_pseudo:.2f}")


if __name__ == "__main__":
    main()
