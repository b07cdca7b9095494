"""Markdown report from a ``results.json`` of the example loop: the per-round table, a paired max-vs-mean
comparison (same seed = same round 0) and the class make-up of the final labeled sets.

    python -m examples.report runs/camvid/results.json
    python -m examples.report runs/camvid_weak/results.json --compare runs/camvid/results.json

``--compare OTHER`` (repeatable) adds the other run's test mIoU at this run's clicks (linear interpolation
between its rounds; '-' outside its range): the superpixel dominant-label run beside a ``--unit pixel`` or
``--labels weak`` run at equal clicks, or the ``--semi`` runs beside each other.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .stats import percent, stats_markdown, with_aggregations


def _table(results):
    from .al_loop import format_table

    return format_table(results)


def max_vs_mean(results):
    """Rows (method, AuALC max, AuALC mean, paired difference mean ± std over seeds, seeds where max won)."""
    summ = with_aggregations(results["summary"])
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


def weak_table(results):
    """Table 4 of the OREAL paper: AuALC of stage 1 and stage 2 per method, max, mean and mean - max (means over
    seeds), for a ``--labels weak`` run; None for other runs."""
    summ = results["summary"]
    if results.get("labels") != "weak":
        return None
    lines = ["Weak labels (AuALC % against clicks, mean over seeds):", "",
             "| method | stage 1 max | stage 1 mean | mean - max | stage 2 max | stage 2 mean | mean - max |",
             "|---|---|---|---|---|---|---|"]
    names = dict.fromkeys(spec.partition(":")[0] for spec in summ)
    for name in names:
        cells = []
        for stage in (1, 2):
            vals = []
            for agg in ("max", "mean"):
                e = summ.get(f"{name}:{agg}", summ.get(name) if agg == "max" else None) or {}
                e = e if stage == 1 else e.get("stage2", {})
                vals.append(e.get("aualc_mean"))
            diff = vals[1] - vals[0] if None not in vals else None
            cells += [percent(vals[0]), percent(vals[1]), "-" if diff is None else f"{100 * diff:+.1f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def at_clicks(results, other):
    """Rows ``(strategy, [(clicks, mIoU, other's mIoU at those clicks or None)] per round)``: ``other``'s mean
    curve of the same strategy (or, when ``other`` lacks it, of every strategy it has, named ``other: spec``)
    interpolated linearly at this run's mean clicks per round."""
    rows = []
    for spec, e in results["summary"].items():
        refs = {spec: other["summary"][spec]} if spec in other["summary"] else other["summary"]
        for ref_spec, ref in refs.items():
            c, m = np.asarray(ref["clicks"], float), np.asarray(ref["miou_mean"], float)
            cells = [(x, y, float(np.interp(x, c, m)) if c[0] <= x <= c[-1] else None)
                     for x, y in zip(e["clicks"], e["miou_mean"])]
            rows.append((spec if ref_spec == spec else f"{spec} vs {ref_spec}", cells))
    return rows


def _unit(results):
    return "pixels" if results.get("unit") == "pixel" else "superpixels"


def _labels(results):
    return "classes present (weak labels)" if results.get("labels") == "weak" else "dominant labels"


def _scheme(results):
    semi = results.get("semi", "none")
    return f"{_unit(results)}, {_labels(results)}" + ("" if semi == "none" else f", --semi {semi}")


def relative_table(results):
    """Test mIoU as % of the fully supervised mIoU per round (mean over seeds), with the share of the pool's
    units labeled by then (clicks / annotatable units; weak labels: superpixels, not clicks): the shape of the
    "% of full supervision at increasing label fractions" tables of region-based AL papers. None without a
    full-supervision reference."""
    full, summ = results.get("full_miou"), results["summary"]
    if not full or not summ:
        return None
    units = results.get("pool_units")
    rounds = len(next(iter(summ.values()))["clicks"])
    budget = results.get("budget")
    head = [f"r{i}" + (f" ({100 * budget * (i + 1) / units:.3g} % of the {_unit(results)})" if units and budget else "")
            for i in range(rounds)]
    lines = [f"Test mIoU as % of full supervision ({100 * full:.1f} mIoU), mean over seeds:", "",
             "| strategy | " + " | ".join(head) + " |", "|---|" + "---|" * rounds]
    for spec, e in sorted(summ.items(), key=lambda kv: -sum(kv[1]["miou_mean"])):
        lines.append(f"| {spec} | " + " | ".join(f"{100 * m / full:.1f}" for m in e["miou_mean"]) + " |")
    return "\n".join(lines)


def class_makeup(results):
    """Mean over seeds of the final labeled class counts, per strategy."""
    out = {}
    for r in results["runs"].values():
        out.setdefault(r["strategy"], []).append(r["history"][-1]["class_counts"])
    return {k: np.mean(v, 0) for k, v in out.items()}


def report(results, *others):
    """The markdown report of ``results``; each of ``others`` (another run's results) adds its test mIoU at
    this run's clicks (:func:`at_clicks`)."""
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
    lines += [stats_markdown(results), ""]
    for extra in (weak_table(results), relative_table(results)):
        if extra:
            lines += [extra, ""]
    for other in others:
        lines += [f"Test mIoU % at equal clicks: this run ({_scheme(results)}) / the compared run "
                  f"({_scheme(other)}) interpolated at the same clicks:", ""]
        for name, cells in at_clicks(results, other):
            lines.append(f"- {name}: " + ", ".join(f"{c:g} clicks {percent(a)} / {percent(b)}" for c, a, b in cells))
        lines.append("")
    lines += [f"Labeled {_unit(results)} per class after the last round (mean over seeds; {_labels(results)}):", "",
              "| strategy | " + " | ".join(classes) + " | smallest / largest |",
              "|---|" + "---|" * (len(classes) + 1)]
    for k in sorted(cm, key=lambda k: -cm[k].min() / max(cm[k].max(), 1)):
        v = cm[k]
        lines.append(f"| {k} | " + " | ".join(f"{x:.0f}" for x in v) + f" | {v.min() / max(v.max(), 1):.3f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m examples.report", description=__doc__.splitlines()[0])
    p.add_argument("results", help="results.json written by python -m examples.al_loop")
    p.add_argument("--compare", action="append", default=[],
                   help="another results.json: its mIoU at this run's clicks (repeatable)")
    a = p.parse_args(argv)
    try:
        loaded = [read_results(path) for path in [a.results, *a.compare]]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report(*loaded))
    return 0


def read_results(path) -> dict:
    """The results dict of a ``results.json`` file; a ``ValueError`` naming the file when it cannot be read or
    is not one."""
    try:
        results = json.loads(Path(path).read_text())
        if not isinstance(results, dict) or "summary" not in results:
            raise ValueError(f"expected the JSON object of results.json, with a 'summary', but got "
                             f"{type(results).__name__}{' without one' if isinstance(results, dict) else ''}")
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read a results file from {path}: {e}") from e
    return results


if __name__ == "__main__":
    sys.exit(main())
