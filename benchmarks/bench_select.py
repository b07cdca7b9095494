"""Speed and memory of `oreal.select` at Cityscapes-like size, as ratios measured in one run.

    python benchmarks/bench_select.py            # N=2, C=19, 512x1024, 576 superpixels per image
    python benchmarks/bench_select.py --small    # a quick run at 1/4 of the size
    python benchmarks/bench_select.py --channels-last   # also: the same probs stored channels_last against NCHW
    python benchmarks/bench_select.py --cityscapes --device cuda --dtype float16   # N=8, 19x1024x2048 on a GPU

Prints:
- select time / time of one read pass over probs (``probs.amax(dim=1)``), with and without ``validate_args``,
  as the median of ratios of back-to-back runs (robust to load from other processes);
- speed-up over a per-superpixel Python loop that computes the same OREAL scores (the research-code way:
  a boolean mask per superpixel, the pixel probabilities under it, their one-vs-rest entropies, the max),
  and checks that both pick the same superpixels;
- peak extra resident memory of select / size of probs (CPU; Linux, from /proc/self/status), measured in a
  fresh process that has only loaded the pool, so that heap freed by earlier work cannot hide allocations; on
  CUDA, the peak of torch's allocator above what was allocated before;
- on CUDA, select's achieved memory bandwidth (the bytes of ``probs`` and ``sp_map``, which it must read at least
  once, over its time) as a fraction of the device's peak (twice its memory clock times its bus width, from
  ``torch.cuda.get_device_properties``, or ``--peak-gbps``).

Times on CUDA are taken between ``torch.cuda.synchronize()`` calls, so queued work is not left out.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import torch

import oreal


def voronoi_superpixels(n: int, h: int, w: int, per_side: tuple[int, int], gen: torch.Generator,
                        device: torch.device | str = "cpu") -> torch.Tensor:
    """Irregular superpixels: each pixel joins the nearest of a jittered grid of seeds (drawn on the CPU with
    ``gen``, so the same on every device; the distances are computed on ``device``)."""
    rows, cols = per_side
    ys = (torch.arange(rows) + 0.5) * h / rows
    xs = (torch.arange(cols) + 0.5) * w / cols
    maps = []
    for _ in range(n):
        jitter_y = (torch.rand(rows, cols, generator=gen) - 0.5) * 0.8 * h / rows
        jitter_x = (torch.rand(rows, cols, generator=gen) - 0.5) * 0.8 * w / cols
        seeds = torch.stack([(ys[:, None] + jitter_y).reshape(-1), (xs[None, :] + jitter_x).reshape(-1)], 1)
        seeds = seeds.to(device)
        out = torch.empty(h, w, dtype=torch.long, device=device)
        grid = torch.meshgrid(torch.arange(w, device=device).float(), torch.arange(h, device=device).float(),
                              indexing="xy")
        px = torch.stack(grid[::-1], -1)
        step = max(1, (1 << 22) // (w * rows * cols))  # rows per cdist: at most 4M distances at a time
        for y0 in range(0, h, step):
            chunk = px[y0:y0 + step].reshape(-1, 2)
            out[y0:y0 + step] = torch.cdist(chunk, seeds).argmin(1).reshape(-1, w)
        maps.append(out)
    return torch.stack(maps)


def synthetic_probs(n: int, c: int, h: int, w: int, gen: torch.Generator, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Smooth, fairly confident predictions with noisy boundaries, like a segmentation model's: drawn in float32
    on the CPU (the same values on every device) one image at a time (the same draws as for the whole batch at
    once), then moved to ``device`` and ``dtype``."""
    out = torch.empty(n, c, h, w, dtype=dtype, device=device)
    coarse = 4 * torch.randn(n, c, h // 32, w // 32, generator=gen)
    for i in range(n):
        logits = torch.nn.functional.interpolate(coarse[i:i + 1], size=(h, w), mode="bilinear", align_corners=False)
        logits += 0.5 * torch.randn(1, c, h, w, generator=gen)
        out[i] = logits.softmax(1)[0]
    return out


def python_loop_scores(probs: torch.Tensor, sp_map: torch.Tensor, s: int) -> torch.Tensor:
    """Per-superpixel loop: mask, gather, one-vs-rest entropy, max. Returns (N * S, C), in select's score dtype
    (float32 for half inputs)."""
    n, c = probs.shape[:2]
    dtype = torch.float32 if probs.dtype in (torch.float16, torch.bfloat16) else probs.dtype
    out = torch.zeros(n * s, c, dtype=dtype, device=probs.device)
    for i in range(n):
        for k in range(s):
            mask = sp_map[i] == k
            if mask.any():
                p = probs[i][:, mask]  # (C, P)
                h = oreal.binary_entropy(p.double())  # float64, as select evaluates its maxima, then rounded
                out[i * s + k] = h.amax(1).to(dtype)
    return out


def synchronizer(device: torch.device):
    """What waits for ``device``'s queued work: ``torch.cuda.synchronize`` on CUDA, nothing on the CPU."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _seconds(fn, sync) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def paired_ratio(fn, baseline, repeats: int, sync=lambda: None) -> tuple[float, float, float]:
    """Median of ``time(fn) / time(baseline)`` over repeats that run the two back to back, so that load from
    other processes, which drifts over seconds, hits both sides of each ratio alike (``sync``: see
    ``synchronizer``). Returns (median ratio, median fn seconds, median baseline seconds)."""
    fn(), baseline()  # warm-up
    pairs = [(_seconds(fn, sync), _seconds(baseline, sync)) for _ in range(repeats)]
    ratio = statistics.median(a / b for a, b in pairs)
    return ratio, statistics.median(a for a, _ in pairs), statistics.median(b for _, b in pairs)


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1)) / 1024


def peak_extra_mib(fn) -> float:
    """Peak resident memory above the current level while ``fn`` runs (Linux: VmHWM after resetting it)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_mib("VmRSS")
    fn()
    return _status_mib("VmHWM") - before


def _measure_in_fresh_process(path: str, budget: int, num_superpixels: int) -> None:
    """Child mode: load the saved pool (nothing else allocated yet) and print select's peak extra memory."""
    pool = torch.load(path)
    read = peak_extra_mib(lambda: pool["probs"].amax(dim=1))  # first op of the process: one-time setup included
    extra = peak_extra_mib(lambda: oreal.select(pool["probs"], pool["sp_map"], pool["counts"], budget,
                                                num_superpixels=num_superpixels))
    print(f"{read:.3f} {extra:.3f}")


def fresh_process_peak_mib(probs: torch.Tensor, sp_map: torch.Tensor, counts: torch.Tensor, budget: int,
                           num_superpixels: int) -> tuple[float, float]:
    """Peak extra memory of one read pass, then of select, measured in a new process where no freed heap from
    earlier work hides allocations."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "pool.pt")
        torch.save({"probs": probs, "sp_map": sp_map, "counts": counts}, path)
        out = subprocess.run([sys.executable, __file__, "--measure-memory", path, "--budget", str(budget),
                              "--superpixels", str(num_superpixels),
                              "--chunk", str(sys.modules["oreal.aggregate"].CPU_CHUNK)],
                             check=True, capture_output=True, text=True)
    read, extra = out.stdout.strip().splitlines()[-1].split()
    return float(read), float(extra)


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def add_pool_options(parser: argparse.ArgumentParser) -> None:
    """The options both benchmarks share: the pool's size, device and dtype."""
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--small", action="store_true", help="quarter-size pool for a quick check")
    size.add_argument("--cityscapes", action="store_true", help="N=8, C=19, 1024x2048 (Cityscapes' size)")
    parser.add_argument("--device", default="cpu", help="torch device of the pool, e.g. cuda (default: cpu)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype of the probabilities")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")


def pool_device(args: argparse.Namespace) -> torch.device:
    """The ``--device`` asked for, after checking that it exists here; sets ``--threads``."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here")
    if args.threads:
        torch.set_num_threads(args.threads)
    return device


def peak_bandwidth(device: torch.device) -> float | None:
    """Bytes per second the device's memory can move: on CUDA twice the memory clock (kHz) times the bus width
    (bits / 8), as the device reports them; None where unknown."""
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    clock_khz, bus_bits = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    return 2 * clock_khz * 1e3 * bus_bits / 8 if clock_khz and bus_bits else None


def cuda_peak_extra_mib(fn, device: torch.device) -> float:
    """Peak of torch's CUDA allocator above what was allocated before ``fn``."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pool_options(parser)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--peak-gbps", type=float, default=None,
                        help="the device's peak memory bandwidth in GB/s (default: from its properties on CUDA)")
    parser.add_argument("--chunk", type=int, default=None,
                        help="pixels per chunk of the class-plane reduction (oreal.aggregate.CPU_CHUNK)")
    parser.add_argument("--channels-last", action="store_true",
                        help="also time select on the same probs stored channels_last, against NCHW")
    parser.add_argument("--measure-memory", metavar="POOL", help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--superpixels", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_memory:
        _measure_in_fresh_process(args.measure_memory, args.budget, args.superpixels)
        return
    device, dtype = pool_device(args), DTYPES[args.dtype]
    sync = synchronizer(device)
    if args.chunk:
        sys.modules["oreal.aggregate"].CPU_CHUNK = args.chunk  # the module: oreal.aggregate is the function
    # superpixels of about 30x30 pixels at every size
    n, c, h, w, grid = ((2, 19, 256, 512, (12, 24)) if args.small else (8, 19, 1024, 2048, (48, 48))
                        if args.cityscapes else (2, 19, 512, 1024, (24, 24)))
    s = grid[0] * grid[1]
    gen = torch.Generator().manual_seed(0)
    probs = synthetic_probs(n, c, h, w, gen, device, dtype)
    sp_map = voronoi_superpixels(n, h, w, grid, gen, device)
    counts = torch.randint(0, 50, (c,), generator=gen).to(device)
    size_mib = probs.numel() * probs.element_size() / 2**20
    if device.type == "cpu":
        where = f"{torch.get_num_threads()} threads, chunks of {sys.modules['oreal.aggregate'].CPU_CHUNK} pixels"
    else:
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    print(f"pool: N={n} C={c} {h}x{w}, {s} superpixels per image, probs {size_mib:.0f} MiB {args.dtype} on "
          f"{device}, budget {args.budget}, {where}")

    def run(validate: bool):
        return oreal.select(probs, sp_map, counts, args.budget, num_superpixels=s, validate_args=validate)

    def read_pass():
        return probs.amax(dim=1)

    r_sel, t_sel, t_read = paired_ratio(lambda: run(False), read_pass, args.repeats, sync)
    r_val, t_val, _ = paired_ratio(lambda: run(True), read_pass, args.repeats, sync)
    r_mean, t_mean, _ = paired_ratio(lambda: oreal.select(probs, sp_map, counts, args.budget, num_superpixels=s,
                                                          aggregation="mean", validate_args=False),
                                     read_pass, max(3, args.repeats // 2), sync)
    loop_scores = python_loop_scores(probs, sp_map, s)
    cand = oreal.candidates(sp_map, s)
    loop_pick = oreal.greedy_per_class(loop_scores, oreal.class_debt(counts, args.budget), counts,
                                       candidates=cand.reshape(-1))[0]
    sel = run(True)
    same = torch.equal(loop_pick, sel.image * s + sel.superpixel)
    r_loop, t_loop, _ = paired_ratio(lambda: python_loop_scores(probs, sp_map, s), lambda: run(True), 3, sync)
    if device.type == "cpu":
        read_extra, extra = fresh_process_peak_mib(probs, sp_map, counts, args.budget, s)
        memory = f"fresh process; its first op, the read pass, took {read_extra:.1f} MiB"
    else:
        extra = cuda_peak_extra_mib(lambda: run(True), device) if device.type == "cuda" else float("nan")
        memory = "torch's CUDA allocator" if device.type == "cuda" else "not measured on this device"

    print(f"one read pass (probs.amax(dim=1)):       {1e3 * t_read:9.1f} ms")
    print(f"select, validate_args=False:              {1e3 * t_sel:9.1f} ms  = {r_sel:5.2f}x the read pass")
    print(f"select, validate_args=True (default):     {1e3 * t_val:9.1f} ms  = {r_val:5.2f}x the read pass")
    print(f"select, aggregation='mean':               {1e3 * t_mean:9.1f} ms  = {r_mean:5.2f}x the read pass")
    print(f"per-superpixel Python loop (same scores): {1e3 * t_loop:9.1f} ms  -> select (default) is "
          f"{r_loop:.0f}x faster")
    print(f"same picks as the loop: {same}")
    print(f"peak extra memory of select: {extra:.1f} MiB = {extra / size_mib:.3f}x the size of probs ({memory})")
    probs_bytes = probs.numel() * probs.element_size()
    read_bytes = probs_bytes + sp_map.numel() * sp_map.element_size()  # what select reads at least once
    peak = args.peak_gbps * 1e9 if args.peak_gbps else peak_bandwidth(device)

    def rate(nbytes: int, seconds: float) -> str:
        share = f" = {100 * nbytes / seconds / peak:.1f} % of the peak {peak / 1e9:.0f} GB/s" if peak else ""
        return f"{nbytes / seconds / 1e9:.3g} GB/s{share}"

    print(f"bandwidth of select, (probs + sp_map) / time: {rate(read_bytes, t_val)} (default), "
          f"{rate(read_bytes, t_sel)} (validate_args=False)")
    print(f"bandwidth of the read pass, probs / time: {rate(probs_bytes, t_read)}")
    if not same:
        raise SystemExit("select and the reference loop disagree")
    if args.channels_last:
        last = probs.contiguous(memory_format=torch.channels_last)
        for aggregation in ("max", "mean"):
            def on(x, aggregation=aggregation):
                return oreal.select(x, sp_map, counts, args.budget, num_superpixels=s, aggregation=aggregation)

            if not all(torch.equal(a, b) for a, b in zip(on(last), on(probs))):
                raise SystemExit(f"select ({aggregation}) differs between channels_last and NCHW probs")
            ratio, seconds, _ = paired_ratio(lambda: on(last), lambda: on(probs), args.repeats)
            print(f"select ({aggregation}) on channels_last probs / on NCHW: {ratio:.2f}x ({1e3 * seconds:.1f} ms), "
                  f"the same selection")


if __name__ == "__main__":
    main()
