"""oreal.strategies: every strategy against a slow numpy reference written from SPEC §1, §4, §5, hypothesis
properties of the shared signature, the two known behaviours of the issue, and bad-input errors."""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import oreal
from oreal import strategies
from tests import reference as ref
from tests.conftest import random_sp_map

ALL = ["random", "entropy", "bvsb", "margin", "revisiting_sp", "pixelbal", "cbal", "cbal_milp", "oreal",
       "oreal_mean", "bald", "balent", "balent_pixel", "edge_entropy", "edge_entropy_class", "sp_crf", "sp_crf_class"]
CLASS_WISE = {"oreal", "oreal_mean", "edge_entropy_class", "sp_crf_class"}


# ---------------------------------------------------------------------------------------------------- fixtures


def make_pool(seed=0, n=2, c=3, h=6, w=7, s=6, k=4, exclude_frac=0.2, dtype=torch.float64):
    """Random pool; superpixel s-1 is empty in every image, some pixels are -1, some superpixels excluded."""
    g = torch.Generator().manual_seed(1000 + seed)
    logits = 1.5 * torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    sp = random_sp_map(n, h, w, s, seed=seed)
    sp = torch.where(sp == s - 1, -1, sp)
    mc = (logits.unsqueeze(1) + torch.randn(n, k, c, h, w, generator=g, dtype=torch.float64)).softmax(2)
    return dict(
        sp_map=sp, num_superpixels=s,
        logits=logits.to(dtype), probs=logits.softmax(1).to(dtype), mc_probs=mc.to(dtype),
        images=torch.rand(n, 3, h, w, generator=g, dtype=torch.float64),
        labeled_counts=torch.randint(0, 6, (c,), generator=g),
        exclude=torch.rand(n, s, generator=g) < exclude_frac,
    )


def np_pool(pool):
    return {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in pool.items()}


def run(name, pool, budget, **kw):
    return strategies.query(name, budget=budget, generator=torch.Generator().manual_seed(7), **pool, **kw)


def picks(sel):
    return list(zip(sel.image.tolist(), sel.superpixel.tolist()))


# ------------------------------------------------------------------------------------ slow references (numpy)


def ref_candidates(sp, s, exclude):
    n = sp.shape[0]
    return np.array([[(sp[i] == k).any() and not exclude[i, k] for k in range(s)] for i in range(n)])


def ref_top(scores, cand, budget):
    """scores, cand (N, S): the budget best candidates by (-score, g) as [(n, s)], and their scores."""
    n, s = scores.shape
    order = sorted((g for g in range(n * s) if cand.reshape(-1)[g]), key=lambda g: (-scores.reshape(-1)[g], g))
    chosen = order[:budget]
    return [(g // s, g % s) for g in chosen], np.array([scores.reshape(-1)[g] for g in chosen])


def ref_softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def ref_sobel_weight(images, alpha):
    """w = 1 + alpha * |Sobel(gray)| / max, replicate border, gray = channel mean; loop over pixels."""
    gray = images.mean(axis=1)
    n, h, w = gray.shape
    kx = [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]
    ky = [[-1, -2, -1], [0, 0, 0], [1, 2, 1]]
    mag = np.zeros((n, h, w))
    for i in range(n):
        for y in range(h):
            for x in range(w):
                gx = gy = 0.0
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        v = gray[i, min(max(y + dy, 0), h - 1), min(max(x + dx, 0), w - 1)]
                        gx += kx[dy + 1][dx + 1] * v
                        gy += ky[dy + 1][dx + 1] * v
                mag[i, y, x] = math.hypot(gx, gy)
    out = np.ones((n, h, w))
    for i in range(n):
        if mag[i].max() > 0:
            out[i] = 1 + alpha * mag[i] / mag[i].max()
    return out


def ref_class_scores(probs, sp, s, agg, weight=None):
    """(N*S, C): aggregate of weight * binary entropy of p_c over each superpixel."""
    n, c = probs.shape[:2]
    weight = np.ones((n,) + probs.shape[2:]) if weight is None else weight
    out = np.zeros((n * s, c))
    for cls in range(c):
        pix = np.vectorize(ref.binary_entropy)(probs[:, cls]) * weight
        out[:, cls] = ref.aggregate(pix, sp, s, agg).reshape(-1)
    return out


def ref_superpixel_scores(name, p, agg, **opts):
    """Flat (N, S) class-agnostic score of each superpixel-level strategy, from the SPEC formulas."""
    sp, s = p["sp_map"], p["num_superpixels"]
    probs = p["probs"]
    n, c = probs.shape[:2]
    if name in ("entropy", "bvsb", "margin"):
        return ref.aggregate(ref.pixel_scores(probs, getattr(ref, name)), sp, s, agg)
    if name in ("bald", "balent"):
        mc = p["mc_probs"]
        pix = np.zeros(sp.shape)
        for i, y, x in np.ndindex(*sp.shape):
            pix[i, y, x] = getattr(ref, name)(mc[i, :, :, y, x])
        return ref.aggregate(pix, sp, s, agg)
    if name == "revisiting_sp":
        u = ref.aggregate(ref.pixel_scores(probs, ref.bvsb), sp, s, agg)
        cand = ref_candidates(sp, s, p["exclude"])
        lo, hi = u[cand].min(), u[cand].max()
        u_norm = (u - lo) / (hi - lo) if hi > lo else np.ones_like(u)
        dom = ref.dominant_labels(probs.argmax(1), sp, s, c, ignore_index=-1)
        freq = [(dom[cand] == k).sum() / cand.sum() for k in range(c)]
        return np.array([[u_norm[i, k] * math.exp(-freq[dom[i, k]]) if dom[i, k] >= 0 else 0.0
                          for k in range(s)] for i in range(n)])
    if name == "pixelbal":
        t, mu = opts.get("temperature", 0.1), opts.get("mu", 6.0)
        z = p["logits"]
        mass, count = np.zeros(c), 0
        for i, y, x in np.ndindex(*sp.shape):
            if sp[i, y, x] >= 0:
                mass += ref_softmax(z[i, :, y, x] / t)
                count += 1
        w = (1 + mu * mass / count) ** -2
        pix = np.zeros(sp.shape)
        for i, y, x in np.ndindex(*sp.shape):
            q = ref_softmax(z[i, :, y, x])
            pix[i, y, x] = ref.bvsb(q) * w[int(np.argmax(q))]
        return ref.aggregate(pix, sp, s, agg)
    if name == "cbal":
        lam = opts.get("lam", 2.0)
        ent = ref.aggregate(ref.pixel_scores(probs, ref.entropy), sp, s, agg)
        debt = np.array(ref.water_filling(p["labeled_counts"], p["budget"]))
        target = debt / debt.sum()
        out = np.zeros((n, s))
        for i in range(n):
            for k in range(s):
                inside = sp[i] == k
                if inside.any():
                    mean_p = np.array([probs[i, cls][inside].mean() for cls in range(c)])
                    out[i, k] = ent[i, k] - lam * np.abs(mean_p - target).sum()
        return out
    if name == "edge_entropy":
        weight = ref_sobel_weight(p["images"], opts.get("alpha", 1.0))
        return ref.aggregate(ref.pixel_scores(probs, ref.entropy) * weight, sp, s, agg)
    raise AssertionError(name)


# ------------------------------------------------------------------------------------------- references: tests

TOPB = [("entropy", "max"), ("entropy", "mean"), ("bvsb", "max"), ("bvsb", "mean"), ("margin", "max"),
        ("margin", "mean"), ("revisiting_sp", "mean"), ("revisiting_sp", "max"), ("pixelbal", "mean"),
        ("pixelbal", "max"), ("cbal", "mean"), ("cbal", "max"), ("bald", "mean"), ("bald", "max"),
        ("balent", "mean"), ("balent", "max"), ("edge_entropy", "mean"), ("edge_entropy", "max")]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name, agg", TOPB)
def test_top_b_strategies_match_reference(name, agg, seed):
    pool = make_pool(seed)
    budget = 4
    sel = run(name, pool, budget, aggregation=agg)
    p = np_pool(dict(pool, budget=budget))
    expected, scores = ref_top(ref_superpixel_scores(name, p, agg), ref_candidates(p["sp_map"], 6, p["exclude"]),
                               budget)
    assert picks(sel) == expected
    assert sel.cls.tolist() == [-1] * budget
    np.testing.assert_allclose(sel.score.numpy(), scores, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name, opts", [("pixelbal", {"temperature": 1.0, "mu": 12.0}), ("cbal", {"lam": 0.5}),
                                        ("edge_entropy", {"alpha": 4.0})])
def test_options_reach_the_formula(name, opts):
    pool = make_pool(3)
    sel = run(name, pool, 5, aggregation="mean", **opts)
    p = np_pool(dict(pool, budget=5))
    expected, scores = ref_top(ref_superpixel_scores(name, p, "mean", **opts),
                               ref_candidates(p["sp_map"], 6, p["exclude"]), 5)
    assert picks(sel) == expected
    np.testing.assert_allclose(sel.score.numpy(), scores, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name, agg", [("oreal", "max"), ("oreal", "mean"), ("oreal_mean", "mean"),
                                       ("edge_entropy_class", "mean"), ("edge_entropy_class", "max"),
                                       ("sp_crf_class", "mean"), ("sp_crf_class", "max")])
@pytest.mark.parametrize("seed", [0, 4])
def test_class_wise_strategies_match_reference(name, agg, seed):
    pool = make_pool(seed, c=4, n=3)
    budget = 7
    sel = run(name, pool, budget, aggregation=agg)
    p = np_pool(pool)
    s = p["num_superpixels"]
    weight = ref_sobel_weight(p["images"], 1.0) if name == "edge_entropy_class" else None
    probs = ref_crf(pool) if name == "sp_crf_class" else p["probs"]
    scores = ref_class_scores(probs, p["sp_map"], s, agg, weight)
    counts = [int(v) for v in p["labeled_counts"]]
    expected = ref.greedy(scores, ref.water_filling(counts, budget), counts,
                          ref_candidates(p["sp_map"], s, p["exclude"]).reshape(-1))
    assert picks(sel) == [(g // s, g % s) for g, _, _ in expected]
    assert sel.cls.tolist() == [c for _, c, _ in expected]
    np.testing.assert_allclose(sel.score.numpy(), [v for _, _, v in expected], rtol=1e-9, atol=1e-12)


def ref_crf(pool, **crf):
    """The pool's probabilities refined by the dense-loop CRF reference with the default options (7 x 7 window)."""
    opts = {"window": 7, **crf}
    return ref.crf_dense(pool["probs"], pool["images"], opts.pop("iterations", 5), **opts).numpy()


@pytest.mark.parametrize("agg", ["mean", "max"])
@pytest.mark.parametrize("seed", [0, 2])
def test_sp_crf_is_superpixel_entropy_of_the_crf_refined_probabilities(agg, seed):
    pool = make_pool(seed, n=3)
    sel = run("sp_crf", pool, 6, aggregation=agg)
    p = np_pool(pool)
    refined = ref.aggregate(ref.pixel_scores(ref_crf(pool), ref.entropy), p["sp_map"], 6, agg)
    expected, scores = ref_top(refined, ref_candidates(p["sp_map"], 6, p["exclude"]), 6)
    assert picks(sel) == expected
    np.testing.assert_allclose(sel.score.numpy(), scores, rtol=1e-9, atol=1e-12)
    # The CRF options reach the refinement; uint8 images are read as 0-255 colours.
    pool8 = dict(pool, images=(pool["images"] * 255).round().to(torch.uint8))
    sel = run("sp_crf", pool8, 6, aggregation=agg, iterations=2, window=3, spatial_weight=1.0)
    refined = ref.aggregate(ref.pixel_scores(ref_crf(pool8, iterations=2, window=3, w_s=1.0), ref.entropy),
                            p["sp_map"], 6, agg)
    assert picks(sel) == ref_top(refined, ref_candidates(p["sp_map"], 6, p["exclude"]), 6)[0]


def test_sp_crf_rejects_images_out_of_colour_range():
    pool = make_pool(1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        run("sp_crf", dict(pool, images=pool["images"] * 255), 3)
    with pytest.raises(ValueError, match="window"):
        run("sp_crf_class", pool, 3, window=4)


def test_oreal_default_is_max_and_matches_select():
    pool = make_pool(5)
    sel = strategies.query("oreal", budget=5, **pool)
    direct = oreal.select(pool["probs"], pool["sp_map"], pool["labeled_counts"], 5, num_superpixels=6,
                          exclude=pool["exclude"], aggregation="max")
    assert all(torch.equal(a, b) for a, b in zip(sel, direct))


def test_class_mask_reaches_the_debt():
    pool = make_pool(6, c=3)
    mask = torch.tensor([True, False, True])
    for name in ("oreal", "edge_entropy_class"):
        sel = run(name, pool, 6, class_mask=mask)
        assert 1 not in sel.cls.tolist() and len(sel.cls) == 6


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_balent_pixel_matches_reference(seed):
    pool = make_pool(seed)
    n, h, w = pool["sp_map"].shape
    g = torch.Generator().manual_seed(seed)
    pix_exclude = torch.rand(n, h, w, generator=g) < 0.3
    sel = run("balent_pixel", dict(pool, exclude=pix_exclude), 9)
    mc, sp, ex = pool["mc_probs"].numpy(), pool["sp_map"].numpy(), pix_exclude.numpy()
    score = np.zeros(n * h * w)
    cand = np.zeros(n * h * w, dtype=bool)
    for i, y, x in np.ndindex(n, h, w):
        score[(i * h + y) * w + x] = ref.balent(mc[i, :, :, y, x])
        cand[(i * h + y) * w + x] = sp[i, y, x] >= 0 and not ex[i, y, x]
    order = sorted(np.flatnonzero(cand), key=lambda f: (-score[f], f))[:9]
    assert picks(sel) == [(f // (h * w), f % (h * w)) for f in order]
    assert sel.cls.tolist() == [-1] * 9
    np.testing.assert_allclose(sel.score.numpy(), score[order], rtol=1e-9)


def _milp_objective(chosen, u, p, omega, lam):
    chosen = list(chosen)
    return u[chosen].sum() + lam * np.abs(p[chosen].sum(0) - omega).sum()


@pytest.mark.parametrize("seed, agg, budget", [(0, "mean", 3), (1, "max", 4), (2, "mean", 2), (3, "mean", 5)])
def test_cbal_milp_is_the_brute_force_optimum(seed, agg, budget):
    pytest.importorskip("scipy")
    pool = make_pool(seed, n=2, s=6, c=3, exclude_frac=0.1)
    sel = run("cbal_milp", pool, budget, aggregation=agg)
    p = np_pool(pool)
    sp, s, probs = p["sp_map"], p["num_superpixels"], p["probs"]
    ent = ref.aggregate(ref.pixel_scores(probs, ref.entropy), sp, s, agg).reshape(-1)
    mean_p = np.stack([ref.aggregate(probs[:, c], sp, s, "mean").reshape(-1) for c in range(3)], 1)
    omega = np.array(ref.water_filling(p["labeled_counts"], budget), dtype=float)
    cand = np.flatnonzero(ref_candidates(sp, s, p["exclude"]).reshape(-1))
    best = min(_milp_objective(sub, -ent, mean_p, omega, 0.6) for sub in itertools.combinations(cand, budget))
    got = [n * s + k for n, k in picks(sel)]
    assert len(set(got)) == budget and set(got) <= set(cand.tolist())
    assert _milp_objective(got, -ent, mean_p, omega, 0.6) == pytest.approx(best, abs=1e-7)
    # Picks come out by descending superpixel entropy, which is their score.
    np.testing.assert_allclose(sel.score.numpy(), ent[got], rtol=1e-9)
    assert (np.diff(sel.score.numpy()) <= 0).all()


def test_cbal_milp_balances_more_than_the_entropy_term_alone():
    pytest.importorskip("scipy")
    pool = make_pool(8, n=2, s=6, c=3, exclude_frac=0.0)
    pool["labeled_counts"] = torch.tensor([0, 9, 9])  # all debt on class 0
    with_balance = run("cbal_milp", pool, 3, lam=50.0)
    without = run("cbal_milp", pool, 3, lam=0.0)
    assert picks(without) == picks(run("entropy", pool, 3))  # lam = 0 is plain top-B entropy
    mean_p = oreal.aggregate(pool["probs"], pool["sp_map"], 6, "mean")
    mass0 = lambda sel: float(mean_p[sel.image, sel.superpixel, 0].sum())  # noqa: E731
    assert mass0(with_balance) >= mass0(without)


def test_random_is_uniform_over_candidates():
    pool = make_pool(0, n=1, s=6, exclude_frac=0.0)
    pool["exclude"] = torch.tensor([[False, True, False, False, False, False]])
    cand = [k for k in range(6) if (pool["sp_map"][0] == k).any() and k != 1]
    g = torch.Generator().manual_seed(123)
    hits = {k: 0 for k in range(6)}
    trials = 600
    for _ in range(trials):
        sel = strategies.query("random", sp_map=pool["sp_map"], num_superpixels=6, budget=2,
                               exclude=pool["exclude"], generator=g)
        for k in sel.superpixel.tolist():
            hits[k] += 1
    expected = trials * 2 / len(cand)
    assert all(hits[k] == 0 for k in range(6) if k not in cand)
    chi2 = sum((hits[k] - expected) ** 2 / expected for k in cand)
    assert chi2 < 20  # far above the 99.9% point for <= 4 degrees of freedom (18.5)


def test_random_depends_only_on_the_generator():
    pool = make_pool(1)
    a = strategies.query("random", budget=5, **pool, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    b = strategies.query("random", budget=5, **pool, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(99)
    c = strategies.query("random", budget=5, **pool, generator=torch.Generator().manual_seed(4))
    assert picks(a) == picks(b) and picks(a) != picks(c)
    # nor on torch's default dtype (torch.rand follows it)
    old = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        d = strategies.query("random", budget=5, **pool, generator=torch.Generator().manual_seed(3))
    finally:
        torch.set_default_dtype(old)
    assert picks(d) == picks(a)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_edge_weight_is_the_same_at_any_value_scale(dtype):
    """The docs promise any value scale: the Sobel magnitude of 1e20-scaled float32 images overflowed (inf / inf:
    NaN scores) and that of 1e-25-scaled ones vanished (no edge term). Scaled by a power of two, the weights are
    the same bits; at any scale they match the float64 reference (math.hypot)."""
    from oreal.strategies import _edge_weight

    images = torch.rand(2, 3, 6, 7, generator=torch.Generator().manual_seed(0), dtype=dtype)
    base = _edge_weight(images, 1.5)
    for power in (-90, -40, 8, 70):
        assert torch.equal(_edge_weight(images * 2.0 ** power, 1.5), base), power
    for scale in (1e20, 1e-25, 3e37):
        scaled = images * scale
        want = torch.from_numpy(ref_sobel_weight(scaled.double().numpy(), 1.5))
        torch.testing.assert_close(_edge_weight(scaled, 1.5).double(), want, rtol=1e-5, atol=0)


def test_ties_go_to_the_lower_global_index():
    pool = make_pool(2, exclude_frac=0.0)
    sp = torch.arange(6).repeat_interleave(7).reshape(6, 7).expand(2, 6, 7).clone()  # every sp non-empty
    pool.update(sp_map=sp, probs=torch.full((2, 3, 6, 7), 1 / 3, dtype=torch.float64))
    for name in ("entropy", "bvsb", "margin", "revisiting_sp", "cbal", "edge_entropy"):
        flat = torch.ones_like(pool["images"])  # no edges, so the edge weight is flat too
        sel = run(name, dict(pool, images=flat), 4)
        assert picks(sel) == [(0, 0), (0, 1), (0, 2), (0, 3)], name


# ----------------------------------------------------------------------------------------- known behaviours


def boundary_scene():
    """16x16 image, 4x4 superpixel blocks (S = 16), two classes.

    Left block column: every pixel moderately unsure, p = (0.7, 0.3). Right half: a confident object
    (class 1). The object's thin boundary, column 7, runs through the background superpixels of block column
    1 (columns 4-7), where the model is undecided (0.5, 0.5); the rest of those superpixels is confident.
    """
    g = torch.Generator().manual_seed(0)
    p1 = torch.full((16, 16), 0.02, dtype=torch.float64)
    p1[:, :4] = 0.3
    p1[:, 8:] = 0.98
    p1[:, 7] = 0.5
    p1 = (p1 + 0.005 * torch.rand(16, 16, generator=g, dtype=torch.float64)).clamp(0, 1)
    probs = torch.stack([1 - p1, p1]).unsqueeze(0)
    rows, cols = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    sp = ((rows // 4) * 4 + cols // 4).unsqueeze(0)
    boundary = {(0, r * 4 + 1) for r in range(4)}
    return probs, sp, boundary


@pytest.mark.parametrize("name, mean_name", [("entropy", "entropy"), ("bvsb", "bvsb"), ("margin", "margin"),
                                             ("oreal", "oreal_mean")])
def test_max_picks_the_thin_boundary_and_mean_does_not(name, mean_name):
    probs, sp, boundary = boundary_scene()
    common = dict(probs=probs, sp_map=sp, num_superpixels=16, budget=4, labeled_counts=torch.tensor([0, 0]))
    with_max = strategies.query(name, aggregation="max", **common)
    with_mean = strategies.query(mean_name, aggregation="mean", **common)
    assert set(picks(with_max)) == boundary
    assert not set(picks(with_mean)) & boundary


def test_oreal_favours_the_class_rare_in_the_labeled_set():
    """Class 2 is missing from the labeled set. The pool mixes superpixels where the model confuses classes 0
    and 1 (high entropy) with superpixels that lean to class 2 (lower entropy). Entropy goes for the 0/1
    confusion; OREAL puts the debt on class 2 and goes for the superpixels that might be class 2."""
    g = torch.Generator().manual_seed(5)
    n, s, c = 4, 16, 3
    rows, cols = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    sp = ((rows // 4) * 4 + cols // 4).expand(n, 16, 16).clone()
    kind = torch.rand(n, s, generator=g) < 0.5  # True: leans to class 2
    base = torch.where(kind.unsqueeze(-1), torch.tensor([0.25, 0.1, 0.65], dtype=torch.float64),
                       torch.tensor([0.47, 0.45, 0.08], dtype=torch.float64))  # (n, s, c)
    pix = base.gather(1, sp.reshape(n, -1, 1).expand(-1, -1, c)).reshape(n, 16, 16, c).permute(0, 3, 1, 2)
    probs = (pix.log() + 0.3 * torch.randn(n, c, 16, 16, generator=g, dtype=torch.float64)).softmax(1)
    common = dict(probs=probs, sp_map=sp, num_superpixels=s, budget=12, labeled_counts=torch.tensor([30, 30, 0]))
    mean_p = oreal.aggregate(probs, sp, s, "mean")  # (n, s, c)
    dominant = mean_p.argmax(-1)

    def share_of_class_2(sel):
        return float((dominant[sel.image, sel.superpixel] == 2).double().mean())

    for agg in ("max", "mean"):
        ent = strategies.query("entropy", aggregation=agg, **common)
        ore = strategies.query("oreal", aggregation=agg, **common)
        assert share_of_class_2(ore) > share_of_class_2(ent) + 0.5, agg
    assert set(strategies.query("oreal", **common).cls.tolist()) == {2}


# ---------------------------------------------------------------------------------------------- properties


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(ALL), seed=st.integers(0, 10_000), n=st.integers(1, 3), s=st.integers(2, 7),
       c=st.integers(2, 4), frac=st.floats(0.0, 1.0), data=st.data())
def test_budget_unique_candidates_deterministic(name, seed, n, s, c, frac, data):
    pool = make_pool(seed, n=n, c=c, h=5, w=4, s=s, k=3, exclude_frac=frac, dtype=torch.float32)
    if name == "balent_pixel":
        g = torch.Generator().manual_seed(seed)
        pool["exclude"] = torch.rand(n, 5, 4, generator=g) < frac
        cand = (pool["sp_map"] >= 0) & ~pool["exclude"]
    else:
        cand = oreal.candidates(pool["sp_map"], s, pool["exclude"])
    available = int(cand.sum())
    aggs = strategies.requirements(name)["aggregations"]
    agg = data.draw(st.sampled_from(aggs)) if aggs else None
    budget = data.draw(st.integers(0, available))
    before = {k: v.clone() for k, v in pool.items() if isinstance(v, torch.Tensor)}
    sel = run(name, pool, budget, aggregation=agg)
    assert all(torch.equal(before[k], pool[k]) for k in before)  # inputs untouched
    assert all(t.shape == (budget,) for t in sel)
    assert sel.image.dtype == sel.superpixel.dtype == sel.cls.dtype == torch.int64
    assert len(set(picks(sel))) == budget
    flat = cand.reshape(n, -1)
    assert all(bool(flat[i, k]) for i, k in picks(sel))
    if name in CLASS_WISE:
        assert all(0 <= v < c for v in sel.cls.tolist())
    else:
        assert sel.cls.tolist() == [-1] * budget
    again = run(name, pool, budget, aggregation=agg)
    assert all(torch.equal(a, b) for a, b in zip(sel, again))
    # One pick more than the candidates: an error naming both numbers, or all of them with allow_partial.
    with pytest.raises(ValueError, match=f"at most the {available} candidate"):
        run(name, pool, available + 1, aggregation=agg)
    assert len(run(name, pool, available + 1, aggregation=agg, allow_partial=True).image) == available


@pytest.mark.parametrize("name", [n for n in ALL if n != "random"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_are_computed_in_float32(name, dtype):
    pool = make_pool(9, dtype=dtype)
    if name == "balent_pixel":
        pool["exclude"] = None
    sel = run(name, pool, 3, validate_args=False)
    assert sel.score.dtype == torch.float32 and len(sel.image) == 3


def test_empty_budget_and_device():
    pool = make_pool(0)
    for name in ALL:
        kw = {"exclude": None} if name == "balent_pixel" else {}
        sel = run(name, dict(pool, **kw), 0)
        assert all(t.numel() == 0 for t in sel) and sel.image.device == pool["sp_map"].device, name


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", [n for n in ALL if n not in ("random", "cbal_milp")])
def test_cuda_matches_cpu(name):
    pool = make_pool(3)
    if name == "balent_pixel":
        pool["exclude"] = None
    cpu = run(name, pool, 4)
    gpu = run(name, {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in pool.items()}, 4)
    assert picks(cpu) == picks(gpu) and gpu.image.is_cuda
    torch.testing.assert_close(cpu.score, gpu.score.cpu())


# ---------------------------------------------------------------------------------------------- the registry


def test_available_lists_every_strategy_with_a_summary():
    names = strategies.available()
    assert sorted(names) == sorted(ALL)
    assert all(isinstance(v, str) and 10 < len(v) < 140 and "\n" not in v for v in names.values())
    assert oreal.strategies is strategies


def test_requirements():
    assert strategies.requirements("balent")["inputs"] == ("mc_probs",)
    assert strategies.requirements("random")["aggregations"] == ()
    assert strategies.requirements("pixelbal")["options"] == {"temperature": 0.1, "mu": 6.0}
    assert strategies.requirements("cbal")["options"]["lam"] == 2.0
    assert strategies.requirements("cbal_milp")["options"]["lam"] == 0.6


# -------------------------------------------------------------------------------------------------- errors


def _q(name, **kw):
    pool = make_pool(0)
    pool.update(kw)
    return strategies.query(name, budget=3, **pool)


@pytest.mark.parametrize("call, err, match", [
    (lambda: _q("not_a_method"), ValueError, "Unknown strategy 'not_a_method'.*'oreal'"),
    (lambda: _q("balent", mc_probs=None), ValueError, "'balent' needs `mc_probs`"),
    (lambda: _q("bald", mc_probs=None), ValueError, "'bald' needs `mc_probs`"),
    (lambda: _q("pixelbal", logits=None), ValueError, "'pixelbal' needs `logits`.*not computed from `probs`"),
    (lambda: _q("oreal", labeled_counts=None), ValueError, "'oreal' needs `labeled_counts`"),
    (lambda: _q("edge_entropy", images=None), ValueError, "'edge_entropy' needs `images`"),
    (lambda: _q("edge_entropy", images=torch.zeros(2, 6, 7, dtype=torch.bool)), TypeError,
     "`images` to have a real numeric dtype, but got torch.bool"),
    (lambda: _q("edge_entropy", images=torch.zeros(2, 6, 7, dtype=torch.complex64)), TypeError,
     "`images` to have a real numeric dtype, but got torch.complex64"),
    (lambda: _q("edge_entropy", images=torch.zeros(6, 7)), ValueError,
     r"`images` to be a Tensor\[N, channels, H, W\] with at least one channel or Tensor\[N, H, W\], but got "
     r"\(6, 7\)"),
    (lambda: _q("edge_entropy", images=torch.zeros(2, 0, 6, 7)), ValueError,
     r"with at least one channel or Tensor\[N, H, W\], but got \(2, 0, 6, 7\)"),
    (lambda: _q("sp_crf", images=torch.zeros(2, 0, 6, 7)), ValueError, r"at least one channel.*\(2, 0, 6, 7\)"),
    (lambda: _q("edge_entropy", images=torch.zeros(2, 6, 7).to_sparse()), TypeError,
     "`images` to be a dense \\(strided\\) tensor, but got layout torch.sparse_coo"),
    (lambda: _q("entropy", probs=make_pool(0)["probs"].to_sparse()), TypeError,
     "`probs` to be a dense \\(strided\\) tensor, but got layout torch.sparse_coo.*to_dense"),
    (lambda: _q("edge_entropy", images=torch.zeros(2, 3, 6, 8)), ValueError,
     r"`images` must have N, H, W = \(2, 6, 7\) to match sp_map, got shape \(2, 3, 6, 8\)"),
    (lambda: _q("entropy", probs=None), ValueError, "'entropy' needs `probs`"),
    (lambda: _q("random"), ValueError, "'random' needs `generator`"),
    (lambda: _q("random", generator=1), TypeError, "torch.Generator"),
    (lambda: _q("cbal", lambda_=2), ValueError, r"Unknown option\(s\) \['lambda_'\].*'lam'"),
    (lambda: _q("entropy", alpha=1.0), ValueError, r"Unknown option\(s\) \['alpha'\] for strategy 'entropy'"),
    (lambda: _q("pixelbal", temperature=0.0), ValueError, "temperature"),
    # finite and > 0, but logits / T overflows: the class mass was NaN cast to int64
    (lambda: _q("pixelbal", temperature=1e-39, logits=make_pool(0)["logits"].float()), ValueError,
     "`logits / temperature` to be finite in torch.float32, but it overflows at temperature=1e-39"),
    (lambda: _q("pixelbal", mu="6"), TypeError, "option `mu`"),
    (lambda: _q("random", generator=torch.Generator(), aggregation="max"), ValueError, "has no aggregation"),
    (lambda: _q("oreal_mean", aggregation="max"), ValueError, r"one of \['mean'\]"),
    (lambda: _q("entropy", aggregation="sum"), ValueError, "aggregation"),
    (lambda: _q("balent_pixel"), ValueError, r"`exclude` must have shape \(2, 6, 7\)"),
    (lambda: _q("entropy", exclude=torch.zeros(2, 6, 7, dtype=torch.bool)), ValueError, r"\(2, 6\)"),
    (lambda: _q("oreal", labeled_counts=torch.zeros(4, dtype=torch.long)), ValueError, "labeled_counts"),
    (lambda: _q("oreal", labeled_counts=torch.tensor([1, -1, 0])), ValueError, "non-negative"),
    (lambda: _q("entropy", probs=torch.rand(2, 3, 6, 7, dtype=torch.float64) + 1), ValueError, "probabilities"),
    (lambda: _q("entropy", probs=torch.rand(2, 3, 6, 8)), ValueError, "match sp_map"),
    (lambda: _q("balent", mc_probs=torch.rand(2, 1, 3, 6, 7).softmax(2)), ValueError, "K = 2"),
    (lambda: _q("edge_entropy", images=torch.rand(2, 3, 5, 7)), ValueError, "images"),
    (lambda: _q("cbal_milp", max_candidates=3), ValueError, "max_candidates = 3.*'cbal'"),
    (lambda: _q("oreal", class_mask=torch.ones(2, dtype=torch.bool)), ValueError, "class_mask"),
    (lambda: _q("entropy", sp_map=torch.full((2, 6, 7), 9)), ValueError, "superpixel ids"),
    (lambda: _q(3), ValueError, "Unknown strategy"),
])
def test_bad_inputs(call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_validate_args_changes_checks_not_results():
    pool = make_pool(11)
    for name in ALL:
        kw = {"exclude": None} if name == "balent_pixel" else {}
        a = run(name, dict(pool, **kw), 4)
        b = run(name, dict(pool, **kw), 4, validate_args=False)
        assert all(torch.equal(x, y) for x, y in zip(a, b)), name
