"""Time of one pool pass of `oreal.crf.crf_refine` on the CPU, measured in one run.

    python benchmarks/bench_crf.py                       # the default sizes below
    python benchmarks/bench_crf.py --pool 367 --size 180x240 --windows 5 7 --blurs 2 4

A pool pass refines every image of the pool once (as the CRF strategies do before scoring). Prints, per
(pool size, image size, window): seconds for the whole pool, milliseconds per image, and the time relative to one
read pass of the probabilities (`probs.amax(dim=1)`, measured in the same run). Random probabilities and images,
C = 11 classes (CamVid), 5 mean-field iterations (the default); threads as torch sets them. The machine's load
(`os.getloadavg()`) is printed with the numbers: timings on a shared machine are inflated by other jobs.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from oreal.crf import crf_refine


def _time(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", type=int, nargs="+", default=[80, 367], help="images in the pool")
    parser.add_argument("--size", nargs="+", default=["60x80", "180x240"], help="HxW, one per pool size")
    parser.add_argument("--windows", type=int, nargs="+", default=[5, 7])
    parser.add_argument("--blurs", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--classes", type=int, default=11)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if len(args.size) != len(args.pool):
        parser.error("give one --size per --pool")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"threads {torch.get_num_threads()}, load average {os.getloadavg()}")
    print(f"{'pool':>5} {'size':>8} {'window':>6} {'blur':>4} {'pass (s)':>9} {'ms/image':>9} {'x read pass':>12}")
    g = torch.Generator().manual_seed(0)
    for n, size in zip(args.pool, args.size):
        h, w = (int(v) for v in size.split("x"))
        probs = torch.randn(n, args.classes, h, w, generator=g).softmax(1)
        images = torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)
        read = _time(lambda: probs.amax(dim=1), args.repeat + 1)
        for window in args.windows:
            for blur in args.blurs:
                t = _time(lambda: crf_refine(probs, images, window=window, blur=blur, validate_args=False),
                          args.repeat)
                print(f"{n:>5} {size:>8} {window:>6} {blur:>4} {t:>9.2f} {1000 * t / n:>9.1f} {t / read:>12.0f}")


if __name__ == "__main__":
    main()
