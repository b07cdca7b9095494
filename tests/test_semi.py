"""oreal.semi against slow loops written from SPEC §5 and docs/semi.md, plus blocking and properties."""

import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import oreal
from oreal import semi as P
from tests.conftest import random_probs, random_sp_map, watch_feature_reads

# ------------------------------------------------------------------------------------------ slow references


def unit_features(features, h, w, mode="bilinear"):
    """The whole feature map upsampled with F.interpolate and normalised per pixel: an independent path."""
    kw = {"align_corners": False} if mode == "bilinear" else {}
    up = F.interpolate(features.double(), (h, w), mode="bilinear" if mode == "bilinear" else "nearest-exact", **kw)
    return F.normalize(up, dim=1)


def ref_prototypes(features, labels, c, ignore_index=255, mode="bilinear"):
    n, h, w = labels.shape
    up = unit_features(features, h, w, mode)
    vecs = torch.zeros(c, features.shape[1], dtype=torch.float64)
    counts = [0] * c
    for i in range(n):
        for y in range(h):
            for x in range(w):
                k = int(labels[i, y, x])
                if k != ignore_index:
                    vecs[k] += up[i, :, y, x]
                    counts[k] += 1
    for k in range(c):
        norm = math.sqrt(float(vecs[k] @ vecs[k]))
        if norm > 0:
            vecs[k] /= norm
    return vecs, counts


def ref_refine(features, probs, labels, ignore_index=255, quantile=0.5, trust=None, mode="bilinear"):
    """The rule of docs/semi.md, pixel by pixel."""
    n, c, h, w = probs.shape
    up = unit_features(features, h, w, mode)
    vecs, counts = ref_prototypes(features, labels, c, ignore_index, mode)

    def sims(i, y, x):
        return [float(up[i, :, y, x] @ vecs[k]) if counts[k] else -math.inf for k in range(c)]

    own = {k: [] for k in range(c)}
    for i in range(n):
        for y in range(h):
            for x in range(w):
                k = int(labels[i, y, x])
                if k != ignore_index:
                    own[k].append(sims(i, y, x)[k])
    tau = []
    for k in range(c):
        vals = sorted(own[k])
        tau.append(vals[max(math.ceil(Fraction(repr(quantile)) * len(vals)), 1) - 1] if vals else math.inf)
    out = labels.clone().long()
    undecided = torch.zeros(n, h, w, dtype=torch.bool)
    corrected = torch.zeros(n, h, w, dtype=torch.bool)
    for i in range(n):
        for y in range(h):
            for x in range(w):
                if int(labels[i, y, x]) != ignore_index:
                    continue
                p = [float(probs[i, k, y, x]) for k in range(c)]
                yhat = p.index(max(p))
                if trust is not None and max(p) >= trust:
                    out[i, y, x] = yhat
                    continue
                s = sims(i, y, x)
                near = s.index(max(s))
                a, b = s[yhat] >= tau[yhat], s[near] >= tau[near]
                if (near == yhat and a) or (near != yhat and a and not b):
                    out[i, y, x] = yhat
                elif near != yhat and b and not a:
                    out[i, y, x] = near
                    corrected[i, y, x] = True
                else:
                    out[i, y, x] = ignore_index
                    undecided[i, y, x] = True
    return out, undecided, corrected, vecs, tau


def partial_labels(n, h, w, c, seed, frac=0.3):
    g = torch.Generator().manual_seed(seed + 3)
    labels = torch.randint(0, c, (n, h, w), generator=g)
    return torch.where(torch.rand(n, h, w, generator=g) < frac, labels, 255)


def clustered(n, c, h, w, d, seed, noise=0.8):
    """Features that cluster by a hidden class map, probabilities that mostly agree: a realistic refine case."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.randint(0, c, (n, h, w), generator=g)
    centres = torch.randn(c, d, generator=g, dtype=torch.float64)
    features = centres[truth].permute(0, 3, 1, 2) + noise * torch.randn(n, d, h, w, generator=g, dtype=torch.float64)
    logits = 3 * F.one_hot(truth, c).permute(0, 3, 1, 2).double() + torch.randn(n, c, h, w, generator=g,
                                                                               dtype=torch.float64) * 1.5
    return truth, features, logits.softmax(1)


# ------------------------------------------------------------------------------------------------ prototypes


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("fh, fw", [(3, 4), (6, 7), (9, 11)])
def test_class_prototypes_match_reference(mode, fh, fw):
    labels = partial_labels(2, 6, 7, 4, seed=fh)
    labels[labels == 3] = 255  # class 3 has no labeled pixel
    features = torch.randn(2, 5, fh, fw, generator=torch.Generator().manual_seed(fw), dtype=torch.float64)
    out = P.class_prototypes(features, labels, 4, mode=mode)
    vecs, counts = ref_prototypes(features, labels, 4, mode=mode)
    torch.testing.assert_close(out.vectors, vecs, rtol=0, atol=1e-12)
    assert out.counts.tolist() == counts and counts[3] == 0
    assert torch.equal(out.vectors[3], torch.zeros(5, dtype=torch.float64))


@pytest.mark.parametrize("block_size", [1, 5, 64, 1 << 20])
def test_class_prototypes_block_size(block_size):
    labels = partial_labels(2, 8, 8, 3, seed=1)
    features = torch.randn(2, 6, 4, 4, generator=torch.Generator().manual_seed(1))
    base = P.class_prototypes(features, labels, 3, block_size=1 << 20)
    out = P.class_prototypes(features, labels, 3, block_size=block_size)
    torch.testing.assert_close(out.vectors, base.vectors, rtol=0, atol=1e-7)  # float64 sums, float32 result
    assert torch.equal(out.counts, base.counts)


def test_class_prototypes_half_features_are_computed_in_float32():
    labels = partial_labels(1, 4, 4, 2, seed=2)
    features = torch.randn(1, 3, 2, 2, generator=torch.Generator().manual_seed(2)).half()
    out = P.class_prototypes(features, labels, 2)
    assert out.vectors.dtype == torch.float32
    torch.testing.assert_close(out.vectors, P.class_prototypes(features.float(), labels, 2).vectors)


# --------------------------------------------------------------------------------------------- pseudo labels


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), threshold=st.sampled_from([0.0, 0.4, 0.6, 1.0]), with_labels=st.booleans())
def test_pseudo_labels_match_loop(seed, threshold, with_labels):
    probs = random_probs(2, 3, 4, 5, seed=seed, sharp=2.0)
    probs[0, :, 0, 0] = torch.tensor([0.4, 0.4, 0.2], dtype=torch.float64)  # a tie -> class 0
    labels = partial_labels(2, 4, 5, 3, seed=seed) if with_labels else None
    out = P.pseudo_labels(probs, labels, threshold=threshold)
    for i in range(2):
        for y in range(4):
            for x in range(5):
                p = probs[i, :, y, x].tolist()
                lab = None if labels is None else int(labels[i, y, x])
                if lab is not None and lab != 255:
                    want, conf = lab, 1.0
                else:
                    want, conf = p.index(max(p)), max(p)
                assert float(out.confidence[i, y, x]) == conf
                assert int(out.labels[i, y, x]) == (want if conf >= threshold else 255)


# ------------------------------------------------------------------------------------------------ refinement


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("quantile, trust", [(0.5, None), (0.25, None), (0.9, 0.95), (0.0, None), (1.0, None)])
@pytest.mark.parametrize("seed", [0, 1])
def test_refine_matches_reference(mode, quantile, trust, seed):
    truth, features, probs = clustered(2, 3, 6, 8, 4, seed)
    labels = torch.where(torch.rand(2, 6, 8, generator=torch.Generator().manual_seed(seed)) < 0.3, truth, 255)
    small = F.avg_pool2d(features, 2)  # features at half resolution
    out = P.refine(small, probs, labels, quantile=quantile, trust=trust, mode=mode)
    want, undecided, corrected, vecs, tau = ref_refine(small, probs, labels, quantile=quantile, trust=trust,
                                                       mode=mode)
    assert torch.equal(out.labels, want)
    assert torch.equal(out.undecided, undecided)
    assert torch.equal(out.corrected, corrected)
    torch.testing.assert_close(out.prototypes, vecs, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.thresholds, torch.tensor(tau, dtype=torch.float64), rtol=0, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), c=st.integers(1, 4), frac=st.sampled_from([0.0, 0.05, 0.3, 1.0]))
def test_refine_matches_reference_on_random_inputs(seed, c, frac):
    probs = random_probs(1, c, 5, 4, seed=seed)
    labels = partial_labels(1, 5, 4, c, seed=seed, frac=frac)
    features = torch.randn(1, 3, 3, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    out = P.refine(features, probs, labels)
    want, undecided, corrected, _, _ = ref_refine(features, probs, labels)
    assert torch.equal(out.labels, want) and torch.equal(out.undecided, undecided)
    assert torch.equal(out.corrected, corrected)


def test_refine_properties():
    truth, features, probs = clustered(2, 4, 10, 12, 6, seed=3)
    labels = torch.where(torch.rand(2, 10, 12, generator=torch.Generator().manual_seed(3)) < 0.2, truth, 255)
    out = P.refine(features, probs, labels)
    given_ = labels != 255
    assert torch.equal(out.labels[given_], labels[given_])  # labeled pixels keep their label
    assert not (out.undecided & given_).any() and not (out.corrected & given_).any()
    assert torch.equal(out.labels == 255, out.undecided)
    pseudo = probs.argmax(1)
    kept = ~given_ & ~out.undecided & ~out.corrected
    assert torch.equal(out.labels[kept], pseudo[kept])
    assert (out.labels[out.corrected] != pseudo[out.corrected]).all()
    # On clustered features, refinement does not make the pseudo labels worse where it decides.
    decided = ~given_ & ~out.undecided
    before = (pseudo[decided] == truth[decided]).double().mean()
    after = (out.labels[decided] == truth[decided]).double().mean()
    assert after >= before
    # trust = 0 accepts every pseudo label unchecked.
    trusted = P.refine(features, probs, labels, trust=0.0)
    assert not trusted.undecided.any() and torch.equal(trusted.labels, torch.where(given_, labels, pseudo))


def test_refine_without_labels_leaves_everything_undecided():
    probs = random_probs(1, 3, 4, 4, seed=4)
    labels = torch.full((1, 4, 4), 255)
    out = P.refine(torch.randn(1, 2, 4, 4), probs, labels)
    assert out.undecided.all() and (out.labels == 255).all() and torch.isinf(out.thresholds).all()


@pytest.mark.parametrize("block_size", [1, 7, 100, 1 << 20])
def test_refine_does_not_depend_on_the_block_size(block_size):
    truth, features, probs = clustered(2, 3, 9, 10, 5, seed=5)
    labels = torch.where(torch.rand(2, 9, 10, generator=torch.Generator().manual_seed(5)) < 0.3, truth, 255)
    base = P.refine(features, probs, labels, block_size=1 << 20)
    out = P.refine(features, probs, labels, block_size=block_size)
    for a, b in zip(out[:3], base[:3]):
        assert torch.equal(a, b)


def test_refine_reads_features_in_blocks_and_scales_past_a_pixels_squared_matrix(monkeypatch):
    seen = watch_feature_reads(monkeypatch, P)
    # 2 x 200 x 200 = 80,000 pixels: a pixels x pixels float32 matrix would need 25.6 GB.
    n, c, h, w = 2, 3, 200, 200
    g = torch.Generator().manual_seed(6)
    probs = torch.randn(n, c, h, w, generator=g).softmax(1)
    labels = torch.where(torch.rand(n, h, w, generator=g) < 0.05, probs.argmax(1), 255)
    out = P.refine(torch.randn(n, 8, h // 8, w // 8, generator=g), probs, labels, block_size=4096)
    assert out.labels.shape == (n, h, w)
    assert seen and max(seen) <= 4096 and sum(seen) >= n * h * w


def test_inputs_are_not_modified():
    truth, features, probs = clustered(1, 3, 5, 5, 4, seed=7)
    labels = torch.where(truth == 0, truth, 255)
    copies = [t.clone() for t in (features, probs, labels)]
    P.refine(features, probs, labels)
    P.pseudo_labels(probs, labels)
    P.class_prototypes(features, labels, 3)
    for a, b in zip((features, probs, labels), copies):
        assert torch.equal(a, b)


# -------------------------------------------------------------------------------------------- acquisition


def test_undecided_fraction_matches_loop():
    sp = random_sp_map(2, 6, 7, 5, seed=8)
    undecided = torch.rand(2, 6, 7, generator=torch.Generator().manual_seed(8)) < 0.4
    out = P.undecided_fraction(undecided, sp, 5)
    for i in range(2):
        for k in range(5):
            inside = sp[i] == k
            want = float(undecided[i][inside].float().mean()) if inside.any() else 0.0
            assert float(out[i, k]) == pytest.approx(want, abs=1e-7)


def test_prefer_undecided_weights_scores_and_class_columns():
    scores = torch.tensor([[0.8, 0.5, 0.9]], dtype=torch.float64)
    frac = torch.tensor([[0.5, 1.0, 0.0]], dtype=torch.float64)
    assert P.prefer_undecided(scores, frac).tolist() == [[0.4, 0.5, 0.0]]
    cols = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]], dtype=torch.float64)
    assert P.prefer_undecided(cols, frac).tolist() == [[[0.5, 1.0], [3.0, 4.0], [0.0, 0.0]]]
    with pytest.raises(ValueError, match="`scores` to be non-negative"):
        P.prefer_undecided(-scores, frac)
    with pytest.raises(ValueError, match=r"`scores` to have shape \(N, S\) or \(N, S, C\) with \(N, S\) = \(1, 3\)"):
        P.prefer_undecided(scores[:, :2], frac)
    for bad in ([[2.0, -1.0, 0.5]], [[float("nan"), 0.5, 0.5]]):
        with pytest.raises(ValueError, match=r"`fraction` to hold undecided fractions in \[0, 1\], but got values"):
            P.prefer_undecided(scores, torch.tensor(bad, dtype=torch.float64))


def _pool(seed=9, n=2, s=8):
    g = torch.Generator().manual_seed(seed)
    probs = torch.randn(n, 4, 8, 8, generator=g).softmax(1)
    sp = random_sp_map(n, 8, 8, s, seed=seed, ignore_frac=0.0)
    frac = torch.rand(n, s, generator=g)
    return probs, sp, frac


@pytest.mark.parametrize("name", ["entropy", "bvsb", "oreal", "random"])
def test_query_undecided_filters_then_backfills(name):
    probs, sp, frac = _pool()
    exclude = torch.zeros(2, 8, dtype=torch.bool)
    exclude[0, :2] = True
    args = dict(probs=probs, sp_map=sp, num_superpixels=8, labeled_counts=torch.tensor([3, 0, 1, 2]))
    undecided = (frac >= 0.5) & ~exclude
    k = int(undecided.sum())
    budget = k + 2
    gen = {"generator": torch.Generator().manual_seed(0)} if name == "random" else {}
    sel = P.query_undecided(name, fraction=frac, budget=budget, exclude=exclude, **args, **gen)
    picked = list(zip(sel.image.tolist(), sel.superpixel.tolist()))
    assert len(picked) == budget and len(set(picked)) == budget
    assert all(not exclude[i, s] for i, s in picked)
    assert all(undecided[i, s] for i, s in picked[:k]) and not any(undecided[i, s] for i, s in picked[k:])
    # With a budget the undecided candidates can fill, the picks are the strategy's on them alone.
    gens = [{"generator": torch.Generator().manual_seed(0)} if name == "random" else {} for _ in range(2)]
    few = P.query_undecided(name, fraction=frac, budget=k - 1, exclude=exclude, **args, **gens[0])
    alone = oreal.strategies.query(name, budget=k - 1, exclude=~undecided, **args, **gens[1])
    for a, b in zip(few, alone):
        assert torch.equal(a, b)


def test_query_undecided_without_backfill_and_when_enough():
    probs, sp, frac = _pool(seed=10)
    args = dict(probs=probs, sp_map=sp, num_superpixels=8)
    k = int((frac >= 0.5).sum())
    sel = P.query_undecided("entropy", fraction=frac, budget=k - 1, **args)
    assert (frac[sel.image, sel.superpixel] >= 0.5).all() and sel.image.numel() == k - 1
    with pytest.raises(ValueError, match=f"at most the {k} undecided candidate superpixels"):
        P.query_undecided("entropy", fraction=frac, budget=k + 1, backfill=False, **args)
    part = P.query_undecided("entropy", fraction=frac, budget=k + 1, backfill=False, allow_partial=True, **args)
    assert part.image.numel() == k
    with pytest.raises(ValueError, match="budget of at most the 16 candidate"):
        P.query_undecided("entropy", fraction=frac, budget=17, **args)
    with pytest.raises(ValueError, match=r"`min_fraction` to be a number in \[0, 1\]"):
        P.query_undecided("entropy", fraction=frac, budget=1, min_fraction=2, **args)
    with pytest.raises(TypeError, match=r"`min_fraction` to be a number in \[0, 1\], but got str '0.5'"):
        P.query_undecided("entropy", fraction=frac, budget=1, min_fraction="0.5", **args)
    with pytest.raises(ValueError, match=r"`fraction` must have shape \(2, 8\) = \(N, S\) to match sp_map"):
        P.query_undecided("entropy", fraction=frac[:, :7], budget=1, **args)



def test_query_undecided_refuses_pixel_strategies_and_bad_fractions():
    probs, sp, frac = _pool(seed=11)
    args = dict(probs=probs, sp_map=sp, num_superpixels=8)
    mc = torch.stack([probs, probs.flip(1)], 1)
    with pytest.raises(ValueError, match="superpixel strategy.*'balent_pixel'"):
        P.query_undecided("balent_pixel", fraction=frac, budget=1, mc_probs=mc, sp_map=sp, num_superpixels=8)
    for bad in (float("nan"), -0.5, 1.5):  # NaN would pass `fraction < min_fraction` and count as undecided
        f = frac.clone()
        f[0, 0] = bad
        with pytest.raises(ValueError, match=r"`fraction` to hold undecided fractions in \[0, 1\]"):
            P.query_undecided("entropy", fraction=f, budget=1, **args)
    f = frac.clone()
    f[0, 0] = float("nan")
    P.query_undecided("entropy", fraction=f, budget=1, validate_args=False, **args)  # the check is a host sync


# ---------------------------------------------------------------------------------------------------- errors


def test_bad_inputs_raise_clear_errors():
    probs = random_probs(1, 3, 4, 4, seed=11)
    labels = torch.full((1, 4, 4), 255)
    feats = torch.randn(1, 2, 2, 2)
    with pytest.raises(ValueError, match=r"`ignore_index` to be an integer outside the class ids \[0, 3\)"):
        P.refine(feats, probs, labels.clamp_max(2), ignore_index=2)
    with pytest.raises(ValueError, match=r"`labels` to hold class ids in \[0, 3\) or 255, but found 7"):
        P.refine(feats, probs, torch.full((1, 4, 4), 7))
    with pytest.raises(ValueError, match=r"`quantile` to be a number in \[0, 1\], but got 1.5"):
        P.refine(feats, probs, labels, quantile=1.5)
    with pytest.raises(ValueError, match=r"`trust` to be None or a number in \[0, 1\]"):
        P.refine(feats, probs, labels, trust=-0.1)
    with pytest.raises(ValueError, match=r"`labels` must have shape \(1, 4, 4\)"):
        P.refine(feats, probs, labels[:, :3])
    with pytest.raises(ValueError, match="`features` to have 4 dimensions"):
        P.refine(feats[0], probs, labels)
    with pytest.raises(ValueError, match="`features` to contain only finite values"):
        P.class_prototypes(feats.clone().fill_(float("inf")), labels, 3)
    with pytest.raises(ValueError, match="`probs` to be probabilities"):
        P.pseudo_labels(probs * 3)
    with pytest.raises(ValueError, match=r"`threshold` to be a number in \[0, 1\]"):
        P.pseudo_labels(probs, threshold=2)
    with pytest.raises(ValueError, match=r"`undecided` must have shape \(1, 4, 4\)"):
        P.undecided_fraction(torch.zeros(1, 4, 3, dtype=torch.bool), torch.zeros(1, 4, 4, dtype=torch.long), 2)


def test_devices_agree(device):
    """Every function on ``device`` against the CPU (CUDA cases skip without a GPU)."""
    truth, features, probs = clustered(2, 3, 6, 6, 4, seed=12)
    labels = torch.where(torch.rand(2, 6, 6, generator=torch.Generator().manual_seed(12)) < 0.3, truth, 255)
    sp = random_sp_map(2, 6, 6, 4, seed=12)
    out = P.refine(features.to(device), probs.to(device), labels.to(device))
    cpu = P.refine(features, probs, labels)
    assert out.labels.device.type == device.type
    for a, b in zip(out[:3], cpu[:3]):
        assert torch.equal(a.cpu(), b)
    frac = P.undecided_fraction(out.undecided, sp.to(device), 4)
    torch.testing.assert_close(frac.cpu(), P.undecided_fraction(cpu.undecided, sp, 4))
    assert torch.equal(P.pseudo_labels(probs.to(device)).labels.cpu(), P.pseudo_labels(probs).labels)


@pytest.mark.parametrize("q, n, k", [(0.07, 100, 7), (0.7, 10, 7), (0.5, 9, 5), (0.0, 4, 1), (1.0, 4, 4),
                                     (0.1 + 0.2, 10, 4)])  # 0.1 + 0.2 is 0.30000000000000004: above 3 of 10
def test_lower_quantile_takes_the_exact_ceiling(q, n, k):
    """The ceil(q * n)-th smallest with q as written (its shortest decimal): 0.07 of 100 values is the 7th, although
    the float product 0.07 * 100 rounds up to 7.000000000000001."""
    from oreal.semi import _lower_quantile

    values = torch.arange(n, 0, -1, dtype=torch.float64)  # n, ..., 1: the k-th smallest is k
    got = _lower_quantile(values, torch.zeros(n, dtype=torch.long), 2, q)
    assert got.tolist() == [float(k), math.inf]
