"""Statistics for AL comparisons over seeds: a 95 % interval per method, and paired differences.

- ``t_interval(x)``: mean and the Student-t 95 % interval ``mean ± t_{0.975, n-1} · s / sqrt(n)`` (``s`` the
  sample standard deviation, ``ddof=1``); the quantiles for ``n - 1 <= 30`` are tabulated (no scipy), beyond
  that a Cornish-Fisher expansion gives them.
- ``paired(a, b)``: per-seed differences ``d = a - b`` (the runs of one seed share round 0): mean, the
  percentile-bootstrap 95 % interval of the mean (``resamples`` resamples of the seeds with replacement, a
  seeded ``numpy.random.Generator``: deterministic), the Student-t interval, wins ``#(d > 0)`` / ties / ``n``
  and the exact two-sided sign-test p-value (ties dropped): ``min(1, 2 · P(Bin(m, 1/2) <= min(w, m - w)))``.

With 5 seeds a bootstrap interval is too narrow (it ignores that ``s`` is itself estimated) and the sign
test cannot go below ``p = 0.0625``: read both with that in mind (**ours**: both are reported so that
neither is taken alone).
"""
from __future__ import annotations

import math

import numpy as np

# t_{0.975, df} for df = 1..30
_T975 = (12.706204736, 4.302652730, 3.182446305, 2.776445105, 2.570581836, 2.446911851, 2.364624252,
         2.306004135, 2.262157163, 2.228138852, 2.200985160, 2.178812830, 2.160368656, 2.144786688,
         2.131449546, 2.119905299, 2.109815578, 2.100922040, 2.093024054, 2.085963447, 2.079613845,
         2.073873068, 2.068657610, 2.063898562, 2.059538553, 2.055529439, 2.051830516, 2.048407142,
         2.045229642, 2.042272456)


def percent(v):
    """A fraction as a percentage with one decimal (``0.4567`` -> ``"45.7"``), ``"-"`` for None."""
    return "-" if v is None else f"{100 * v:.1f}"


def _as_1d(x, name):
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1 or a.size == 0 or not np.isfinite(a).all():
        raise ValueError(f"Expected argument `{name}` to be a non-empty 1-D sequence of finite numbers, but got "
                         f"{x!r}")
    return a


def t_quantile(df):
    """``t_{0.975, df}`` (two-sided 95 %) for an integer ``df >= 1``."""
    if not isinstance(df, (int, np.integer)) or df < 1:
        raise ValueError(f"Expected argument `df` to be an integer >= 1, but got {df!r}")
    if df <= len(_T975):
        return _T975[df - 1]
    # Cornish-Fisher expansion of the t quantile around the normal one (relative error < 1e-6 for df > 30)
    z, v = 1.959963984540054, float(df)
    return (z + (z ** 3 + z) / (4 * v) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * v ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * v ** 3))


def t_interval(x):
    """``(mean, low, high)`` of the Student-t 95 % interval; one value gives ``(x, nan, nan)``."""
    a = _as_1d(x, "x")
    m = float(a.mean())
    if a.size < 2:
        return m, math.nan, math.nan
    h = t_quantile(a.size - 1) * float(a.std(ddof=1)) / math.sqrt(a.size)
    return m, m - h, m + h


def sign_test(d):
    """``(wins, ties, n, p)``: exact two-sided sign test of ``median(d) = 0``, ties (``d == 0``) dropped."""
    a = _as_1d(d, "d")
    w, t = int((a > 0).sum()), int((a == 0).sum())
    m = a.size - t
    if m == 0:
        return w, t, a.size, 1.0
    k = min(w, m - w)
    p = min(1.0, 2.0 * sum(math.comb(m, i) for i in range(k + 1)) / 2.0 ** m)
    return w, t, a.size, p


def bootstrap_interval(d, resamples=10000, seed=0):
    """``(low, high)``: percentile-bootstrap 95 % interval of the mean of ``d``."""
    a = _as_1d(d, "d")
    if not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"Expected argument `resamples` to be an integer >= 1, but got {resamples!r}")
    g = np.random.Generator(np.random.PCG64(seed))
    means = a[g.integers(0, a.size, size=(resamples, a.size))].mean(1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)


def paired(a, b, resamples=10000, seed=0):
    """Paired comparison of ``a`` and ``b`` (same order: one entry per seed). Returns a dict with ``n``,
    ``mean``, ``boot`` (low, high), ``t`` (low, high), ``wins``, ``ties``, ``p_sign``."""
    a, b = _as_1d(a, "a"), _as_1d(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"Expected `a` and `b` to have one value per seed each, but got {a.size} and {b.size}")
    d = a - b
    m, lo, hi = t_interval(d)
    w, t, n, p = sign_test(d)
    return {"n": n, "mean": m, "boot": bootstrap_interval(d, resamples, seed), "t": (lo, hi), "wins": w,
            "ties": t, "p_sign": p}


def with_aggregations(summary):
    """``summary`` with every strategy listed without its aggregation (``oreal``) under the one the loop ran it
    with (``oreal:max``, :func:`examples.al_loop.full_spec`), so that the max-vs-mean and paired comparisons find
    it."""
    from .al_loop import full_spec

    return {full_spec(spec): entry for spec, entry in summary.items()}


def _aualc_by_seed(summary, spec):
    e = summary.get(spec) or {}
    return dict(zip(e.get("seeds", []), e.get("aualc", [])))


def comparisons(results, reference="oreal"):
    """Rows of paired AuALC differences from a loop ``results`` dict: ``max - mean`` per method, then
    ``reference:AGG - other:AGG`` for every other method with the same aggregation (and vs ``random``).
    Each row: ``(label, paired(...) dict)``; only seeds present in both runs are paired."""
    summ = with_aggregations(results["summary"])
    rows = []

    def add(label, x, y):
        sa, sb = _aualc_by_seed(summ, x), _aualc_by_seed(summ, y)
        seeds = sorted(set(sa) & set(sb))
        if seeds:
            rows.append((label, paired([sa[s] for s in seeds], [sb[s] for s in seeds])))

    names = []
    for spec in summ:
        n = spec.split(":")[0]
        if n not in names:
            names.append(n)
    for n in names:
        if f"{n}:max" in summ and f"{n}:mean" in summ:
            add(f"{n}: max - mean", f"{n}:max", f"{n}:mean")
    for agg in ("max", "mean"):
        ref = f"{reference}:{agg}"
        if ref not in summ:
            continue
        for n in names:
            other = "random" if n == "random" else f"{n}:{agg}"
            if n != reference and other in summ:
                add(f"{ref} - {other}", ref, other)
    return rows


def stats_markdown(results, reference="oreal"):
    """Markdown: per-method AuALC with its 95 % t-interval, then the paired differences."""
    summ = results["summary"]
    if not any("aualc" in e for e in summ.values()):
        return "(no AuALC: the run has no full-supervision reference)"
    lines = ["AuALC per method (%, mean over seeds and Student-t 95 % interval):", "",
             "| strategy | seeds | AuALC | 95 % interval |", "|---|---|---|---|"]
    order = sorted((s for s in summ if "aualc" in summ[s]), key=lambda s: -summ[s]["aualc_mean"])
    for s in order:
        m, lo, hi = t_interval(summ[s]["aualc"])
        ci = f"[{100 * lo:.1f}, {100 * hi:.1f}]" if len(summ[s]["aualc"]) > 1 else "- (one seed)"
        lines.append(f"| {s} | {len(summ[s]['aualc'])} | {100 * m:.1f} | {ci} |")
    rows = comparisons(results, reference)
    if rows:
        lines += ["", "Paired AuALC differences (percentage points; per seed, same round 0): mean, bootstrap and "
                  "Student-t 95 % intervals, wins / seeds and the exact two-sided sign-test p:", "",
                  "| comparison | mean | bootstrap 95 % | t 95 % | wins | sign p |", "|---|---|---|---|---|---|"]
        for label, r in rows:
            b, t = r["boot"], r["t"]
            boot, ci = (f"[{100 * b[0]:+.2f}, {100 * b[1]:+.2f}]", f"[{100 * t[0]:+.2f}, {100 * t[1]:+.2f}]") \
                if r["n"] > 1 else ("- (one seed)", "-")
            lines.append(f"| {label} | {100 * r['mean']:+.2f} | {boot} | {ci} | {r['wins']}/{r['n']} | "
                         f"{r['p_sign']:.3f} |")
    return "\n".join(lines)
