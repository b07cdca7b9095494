"""Markdown report from a ``results.json`` of the example loop: the per-round table, a paired max-vs-mean
comparison (same seed = same round 0) and the class make-up of the final labeled sets.

    python -m examples.report runs/camvid/results.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def _table(results):
    from .al_loop import format_table

    return format_table(results)


def max_vs_mean(results):
    """Rows (method, AuALC max, AuALC mean, paired difference mean ± std over seeds, seeds where max won)."""
    summ = results["summary"]
    rows = []
    for spec in summ:
        if not spec.endswith(":max"):
            continue
        name = spec[: -len(":max")]
        other = f"{name}:mean"
        if other not in summ or "aualc" not in summ[spec]:
            continue
        a = dict(zip(summ[spec]["seeds"], summ[spec]["aualc"]))
        b = dict(zip(summ[other]["seeds"], summ[other]["aualc"]))
        seeds = sorted(set(a) & set(b))
        d = np.array([a[s] - b[s] for s in seeds])
        rows.append((name, summ[spec]["aualc_mean"], summ[other]["aualc_mean"], d.mean(), d.std(),
                     int((d > 0).sum()), len(seeds)))
    return rows


def class_makeup(results):
    """Mean over seeds of the final labeled class counts, per strategy."""
    out = {}
    for r in results["runs"].values():
        out.setdefault(r["strategy"], []).append(r["history"][-1]["class_counts"])
    return {k: np.mean(v, 0) for k, v in out.items()}


def report(results):
    lines = [_table(results), ""]
    mm = max_vs_mean(results)
    if mm:
        lines += ["Max vs mean aggregation (AuALC %, paired by seed: both start from the same round 0):", "",
                  "| method | max | mean | max - mean (mean ± std over seeds) | seeds where max won |",
                  "|---|---|---|---|---|"]
        for name, a, b, dm, ds, won, n in mm:
            lines.append(f"| {name} | {100 * a:.1f} | {100 * b:.1f} | {100 * dm:+.1f} ± {100 * ds:.1f} | {won}/{n} |")
        lines.append("")
    cm = class_makeup(results)
    classes = results.get("classes") or [str(i) for i in range(len(next(iter(cm.values()))))]
    from .stats import stats_markdown

    lines += [stats_markdown(results), ""]
    lines += ["Labeled superpixels per class after the last round (mean over seeds; dominant labels):", "",
              "| strategy | " + " | ".join(classes) + " | smallest / largest |",
              "|---|" + "---|" * (len(classes) + 1)]
    for k in sorted(cm, key=lambda k: -cm[k].min() / max(cm[k].max(), 1)):
        v = cm[k]
        lines.append(f"| {k} | " + " | ".join(f"{x:.0f}" for x in v) + f" | {v.min() / max(v.max(), 1):.3f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m examples.report", description=__doc__.splitlines()[0])
    p.add_argument("results", help="results.json written by python -m examples.al_loop")
    a = p.parse_args(argv)
    path = Path(a.results)
    try:
        results = json.loads(path.read_text())
        results["summary"]
    except (OSError, ValueError, KeyError) as e:
        print(f"error: cannot read a results file from {path}: {e}", file=sys.stderr)
        return 2
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
