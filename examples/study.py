"""The CamVid study of the OREAL protocol with a pretrained model, in one command (resumable):

    python -m examples.study --out runs/study

runs ``python -m examples.al_loop`` with the study's configuration, then writes ``OUT/report.md``
(``examples.report`` with the statistics of ``examples.stats``) and prints it. Configuration:

- CamVid as shipped (180x240), the whole train split (367 images) as the pool, val (101) for early stopping,
  test (233) for mIoU;
- SEEDS superpixels at the paper's scale: an average superpixel of about 32x32 pixels, i.e.
  ``round(H * W / 1024)`` = 42 per image requested at 180x240;
- budget per round: 1 % of the pool's superpixels (**ours**, see docs/pretrained.md); round 0 random +
  ``--rounds`` (5) rounds;
- random, entropy, bvsb, revisiting_sp, pixelbal, cbal, oreal, each with max and mean aggregation (random
  has none: 13 runs per seed); seeds 0-4;
- model ``lite0_fpn_frozen``: the ImageNet EfficientNet-Lite0 encoder, frozen (features cached once per
  image), FPN-style head trained from scratch at round 0 and warm-started after; Adam lr 1e-3, batch 4, Polyak
  averaging, up to ``--max-epochs`` (4) epochs per round with patience ``--patience`` (1), an epoch covering
  the images that have a label (``--epoch labeled``, **ours**: the paper's epoch covers the whole pool);
- ``--jobs`` (2) worker processes of ``--threads`` (1) threads each: the runs are independent, and two
  one-thread processes get more out of the two cores than one two-thread process.

Options the study does not know go to ``examples.al_loop`` (``--labels weak``, ``--unit pixel``, ``--semi plar``:
the other label schemes on the same setting), except those it sets itself (``--data``, ``--size``, ``--sp-count``,
``--model``, ``--pretrained``, ``--lr``, ``--mc-samples``: another value is refused); ``--budget`` sets the units
per round, ``--compare`` adds another run at equal clicks to the report. ``--seeds`` and ``--strategies``
narrow the run (the same output folder can be completed later with more: the loop resumes); ``--rounds`` is part
of the configuration (the full-supervision schedule depends on it), so fewer rounds need another folder.
``--reduced`` runs the same path on the embedded synthetic scenes at a test size (a few minutes on one core);
the tests use it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

STRATEGIES = ("random,entropy:max,entropy:mean,bvsb:max,bvsb:mean,revisiting_sp:max,revisiting_sp:mean,"
              "pixelbal:max,pixelbal:mean,cbal:max,cbal:mean,oreal:max,oreal:mean")
SP_AREA = 32 * 32          # average superpixel area of the paper (pixels)
BUDGET_FRACTION = 0.01     # superpixels labeled per round, as a fraction of the pool's superpixels


def loop_args(a):
    """The ``examples.al_loop`` command line of the study (``a``: this script's parsed arguments)."""
    if a.reduced:
        size, data = (48, 64), ["--data", "synthetic", "--limits", "12,6,6"]
    else:
        size, data = (180, 240), ["--data", "camvid"] + (["--root", a.root] if a.root else [])
        if a.limits:
            data += ["--limits", a.limits]
    sp = max(1, round(size[0] * size[1] / SP_AREA)) if not a.reduced else 12
    args = data + ["--size", f"{size[0]}x{size[1]}", "--sp-count", str(sp), "--model", "lite0_fpn_frozen",
                   "--pretrained", "--rounds", str(a.rounds), "--seeds", a.seeds, "--strategies", a.strategies,
                   "--lr", "1e-3", "--max-epochs", str(a.max_epochs), "--patience", str(a.patience),
                   "--epoch", a.epoch, "--mc-samples", "4", "--threads", str(a.threads), "--jobs", str(a.jobs),
                   "--out", a.out]
    if a.cache_dir:
        args += ["--cache-dir", a.cache_dir]
    return args, size, sp


# examples.al_loop options the study sets itself: passed again after them, they would win without the study knowing
# (its header, superpixel count and budget are computed for its own setting)
STUDY_SET = ("data", "root", "size", "sp_count", "model", "pretrained", "lr", "mc_samples")


def overridden(args, extra):
    """The ``examples.al_loop`` options among ``extra`` that would change a setting of the study's ``args``
    (abbreviated or ``--opt=value`` spellings included, as argparse reads them)."""
    from .al_loop import build_parser

    base, given = vars(build_parser().parse_args(args)), vars(build_parser().parse_args(args + extra))
    return ["--" + k.replace("_", "-") for k in STUDY_SET if base[k] != given[k]]


def pool_budget(args, fraction=BUDGET_FRACTION):
    """``(budget, candidates)``: ``fraction`` of the non-empty superpixels of the pool (at least 1)."""
    import torch

    import oreal

    from .al_loop import build_parser, config_from_args, load_data
    from .superpixels import compute_superpixels

    a = build_parser().parse_args(args)
    cfg = config_from_args(a)
    ds = load_data(cfg)
    sp, S = compute_superpixels(ds.train.images, method=cfg.sp_method, num_superpixels=cfg.sp_count,
                                cache_dir=a.cache_dir)
    n = int((oreal.superpixel_counts(torch.from_numpy(sp), S) > 0).sum())
    return max(1, round(fraction * n)), n


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m examples.study", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="runs/study")
    p.add_argument("--root", help="CamVid folder (default ../shared/data/CamVid or $OREAL_CAMVID)")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--strategies", default=STRATEGIES)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--max-epochs", type=int, default=4)
    p.add_argument("--patience", type=int, default=1)
    p.add_argument("--epoch", choices=["pool", "labeled"], default="labeled",
                   help="what a training epoch covers (the paper: the pool; see docs/pretrained.md)")
    p.add_argument("--threads", type=int, default=1, help="threads per worker")
    p.add_argument("--jobs", type=int, default=2, help="worker processes")
    p.add_argument("--limits", help="TRAIN,VAL,TEST image counts (0 = all; default all): smaller, timed runs "
                                    "to estimate the full study's wall time")
    p.add_argument("--cache-dir", help="superpixel cache (default $OREAL_CACHE or ~/.cache/oreal)")
    p.add_argument("--reduced", action="store_true", help="the same path on synthetic scenes at test size")
    p.add_argument("--budget", type=int, help="units per round (default: 1 %% of the pool's superpixels)")
    p.add_argument("--compare", action="append", default=[], metavar="RESULTS_JSON",
                   help="the report adds that run's test mIoU at this run's clicks (repeatable)")
    a, extra = p.parse_known_args(argv)  # the rest goes to examples.al_loop (e.g. --labels weak, --semi plar)
    problem = None
    if a.budget is not None and a.budget < 1:
        problem = f"--budget must be at least 1, got {a.budget}"
    elif a.reduced and (a.root or a.limits):
        problem = "--reduced runs on synthetic scenes of a fixed size: --root and --limits apply to CamVid only"
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if a.reduced:
        a.seeds = "0,1" if a.seeds == "0,1,2,3,4" else a.seeds
        a.strategies = "random,entropy:max,oreal:max,oreal:mean" if a.strategies == STRATEGIES else a.strategies
        a.rounds, a.max_epochs, a.patience = min(a.rounds, 2), min(a.max_epochs, 2), min(a.patience, 1)
    args, size, sp = loop_args(a)
    fixed = overridden(args, extra)
    if fixed:
        print(f"error: the study sets {', '.join(fixed)} itself (its size, superpixels and budget go together); "
              f"run python -m examples.al_loop for another setting", file=sys.stderr)
        return 2
    args += extra
    from .report import read_results, report

    try:
        others = [read_results(c) for c in a.compare]  # checked before the loop runs for hours
        frac = 0.05 if a.reduced else BUDGET_FRACTION  # the reduced pool has ~150 superpixels
        budget, n = pool_budget(args, frac)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    budget = budget if a.budget is None else a.budget
    print(f"study: {size[0]}x{size[1]}, {sp} superpixels per image requested, {n} in the pool, budget {budget} "
          f"per round ({'given' if a.budget else f'{100 * frac:g} % of the superpixels'}), round 0 + {a.rounds} "
          f"rounds{', loop options ' + ' '.join(extra) if extra else ''}", flush=True)
    from . import al_loop

    t0 = time.time()
    rc = al_loop.main(args + ["--budget", str(budget), "--no-plots"] + (["--no-progress"] if a.reduced else []))
    if rc:
        return rc
    out = Path(a.out)
    results = json.loads((out / "results.json").read_text())
    text = report(results, *others) + f"\n\nWall time of this invocation: {time.time() - t0:.0f} s\n"
    (out / "report.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
