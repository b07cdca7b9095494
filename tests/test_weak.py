"""oreal.weak against slow loops written from SPEC §5/§6 and docs/weak.md, plus gradients and properties."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st

import oreal
from oreal import weak as W
from tests.conftest import random_probs, random_sp_map, watch_feature_reads

# ------------------------------------------------------------------------------------------ slow references


def ref_weak_labels(labels, sp, s, c, ignore_index=255, min_share=0.0):
    n = labels.shape[0]
    out = torch.zeros(n, s, c, dtype=torch.bool)
    for i in range(n):
        for k in range(s):
            counts = [int(((sp[i] == k) & (labels[i] == cls)).sum()) for cls in range(c)]
            total = sum(counts)
            if total == 0:
                continue
            dominant = counts.index(max(counts))  # first maximum: lowest class id
            for cls in range(c):
                out[i, k, cls] = (counts[cls] > 0 and counts[cls] / total >= min_share) or cls == dominant
    return out


def ref_loss(logits, sp, weak, s, temperature, weights):
    """Term by term, pixel by pixel, pair by pair, in float64."""
    n, c, h, w = logits.shape
    lq = [[[None] * w for _ in range(h)] for _ in range(n)]
    for i in range(n):
        for y in range(h):
            for x in range(w):
                z = [float(logits[i, k, y, x]) / temperature for k in range(c)]
                m = max(z)
                lse = m + math.log(sum(math.exp(v - m) for v in z))
                lq[i][y][x] = [v - lse for v in z]
    ce, n_ce, mp, n_mp, pp, n_pp = 0.0, 0, 0.0, 0, 0.0, 0
    for i in range(n):
        for y in range(h):
            for x in range(w):
                g = int(sp[i, y, x])
                if g < 0:
                    continue
                ys = [k for k in range(c) if weak[i, g, k]]
                if len(ys) == 1:
                    ce -= lq[i][y][x][ys[0]]
                    n_ce += 1
                elif len(ys) >= 2:
                    mp -= math.log(sum(math.exp(lq[i][y][x][k]) for k in ys))
                    n_mp += 1
        for g in range(s):
            pixels = [(y, x) for y in range(h) for x in range(w) if sp[i, y, x] == g]
            if not pixels:
                continue
            for k in range(c):
                if weak[i, g, k]:
                    pp -= max(lq[i][y][x][k] for y, x in pixels)
                    n_pp += 1
    ce, mp, pp = ce / max(n_ce, 1), mp / max(n_mp, 1), pp / max(n_pp, 1)
    return weights[0] * ce + weights[1] * mp + weights[2] * pp, ce, mp, pp


def ref_pseudo(features, probs, sp, weak, s, ignore_index=255, mode="bilinear"):
    """Upsample the whole feature map (an independent path) and loop over superpixels and pixels."""
    n, c, h, w = probs.shape
    kw = {"align_corners": False} if mode == "bilinear" else {}
    up = F.interpolate(features.double(), (h, w), mode="bilinear" if mode == "bilinear" else "nearest-exact", **kw)
    up = F.normalize(up, dim=1)
    out = torch.full((n, h, w), ignore_index, dtype=torch.long)
    for i in range(n):
        for g in range(s):
            pixels = [(y, x) for y in range(h) for x in range(w) if sp[i, y, x] == g]
            classes = [k for k in range(c) if weak[i, g, k]]
            if not pixels or not classes:
                continue
            protos = {}
            for k in classes:
                best = max(float(probs[i, k, y, x]) for y, x in pixels)
                y, x = next((y, x) for y, x in pixels if float(probs[i, k, y, x]) == best)  # row-major first
                protos[k] = up[i, :, y, x]
            for y, x in pixels:
                sims = [(float(up[i, :, y, x] @ protos[k]), k) for k in classes]
                top = max(v for v, _ in sims)
                out[i, y, x] = min(k for v, k in sims if v == top)
    return out


def random_weak(n, s, c, seed, frac=0.5):
    g = torch.Generator().manual_seed(seed + 7)
    weak = torch.rand(n, s, c, generator=g) < frac
    weak[torch.rand(n, s, generator=g) < 0.3] = False  # unlabeled superpixels
    return weak


# ---------------------------------------------------------------------------------------------- weak labels


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), s=st.integers(1, 8), c=st.integers(1, 4),
       min_share=st.sampled_from([0.0, 0.1, 0.25, 1 / 3, 0.5, 0.9, 1.0]))
def test_weak_labels_match_reference(seed, s, c, min_share):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c, (2, 5, 6), generator=g)
    labels[torch.rand(2, 5, 6, generator=g) < 0.2] = 255
    sp = random_sp_map(2, 5, 6, s, seed=seed)
    out = W.weak_labels(labels, sp, s, c, min_share=min_share)
    assert out.dtype == torch.bool and out.shape == (2, s, c)
    assert torch.equal(out, ref_weak_labels(labels, sp, s, c, min_share=min_share))
    # Named sets are non-empty exactly where the superpixel has a valid pixel; min_share only removes classes.
    valid = oreal.superpixel_label_counts(labels, sp, s, c).sum(-1) > 0
    assert torch.equal(out.any(-1), valid)
    assert not (out & ~W.weak_labels(labels, sp, s, c)).any()


def test_weak_labels_share_is_exact_at_the_boundary_and_keeps_the_dominant_class():
    labels = torch.tensor([[[0, 0, 0, 1, 1, 2]]])  # shares 1/2, 1/3, 1/6
    sp = torch.zeros(1, 1, 6, dtype=torch.long)
    assert W.weak_labels(labels, sp, 1, 3, min_share=1 / 3)[0, 0].tolist() == [True, True, False]
    assert W.weak_labels(labels, sp, 1, 3, min_share=0.34)[0, 0].tolist() == [True, False, False]
    assert W.weak_labels(labels, sp, 1, 3, min_share=1.0)[0, 0].tolist() == [True, False, False]  # dominant
    # a share equal to the decimal min_share reaches it: 7 of 100 at 0.07 (0.07 * 100 rounds to 7.000000000000001)
    labels = torch.tensor([0] * 86 + [1] * 7 + [2] * 7).reshape(1, 1, 100)
    assert W.weak_labels(labels, sp.new_zeros(1, 1, 100), 1, 3, min_share=0.07)[0, 0].tolist() == [True] * 3
    assert W.weak_labels(labels, sp.new_zeros(1, 1, 100), 1, 3, min_share=0.0701)[0, 0].tolist() == [True, False,
                                                                                                       False]
    tie = torch.tensor([[[1, 1, 2, 2]]])
    assert W.weak_labels(tie, sp[..., :4], 1, 3, min_share=0.9)[0, 0].tolist() == [False, True, False]


def test_clicks_and_presence_counts_match_loops():
    weak = random_weak(3, 7, 4, seed=1)
    labeled = torch.rand(3, 7, generator=torch.Generator().manual_seed(2)) < 0.6
    counts = W.presence_counts(weak, labeled)
    expected = [sum(bool(weak[i, k, c]) and bool(labeled[i, k]) for i in range(3) for k in range(7))
                for c in range(4)]
    assert counts.tolist() == expected and counts.dtype == torch.int64
    assert int(W.clicks(weak, labeled)) == sum(expected)
    assert int(W.clicks(weak)) == int(weak.sum()) == int(W.presence_counts(weak).sum())


def test_presence_counts_drive_the_class_debt():
    weak = torch.tensor([[[True, True, False], [True, False, False], [False, True, True]]])
    counts = W.presence_counts(weak)
    assert counts.tolist() == [2, 2, 1]  # dominant counting could never give 5 counts from 3 superpixels
    assert oreal.class_debt(counts, 2).tolist() == [1, 0, 1]  # class 2 first, then the tie to class 0


# ---------------------------------------------------------------------------------------------------- losses


@pytest.mark.parametrize("temperature, weights", [(0.1, (16.0, 8.0, 1.0)), (1.0, (1.0, 2.0, 3.0)),
                                                  (0.5, (0.0, 1.0, 0.0))])
@pytest.mark.parametrize("seed", [0, 1])
def test_weak_loss_matches_reference(temperature, weights, seed):
    g = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(2, 4, 5, 6, generator=g, dtype=torch.float64)
    s = 6
    sp = random_sp_map(2, 5, 6, s, seed=seed)
    sp[0] = torch.where(sp[0] == 5, 0, sp[0])  # superpixel 5 of image 0 is empty ...
    weak = random_weak(2, s, 4, seed)
    weak[0, 5] = True  # ... and labeled: its pairs must not count
    out = W.weak_loss(logits, sp, weak, s, temperature=temperature, ce_weight=weights[0], mp_weight=weights[1],
                      pp_weight=weights[2])
    total, ce, mp, pp = ref_loss(logits, sp, weak, s, temperature, weights)
    for got, want in zip(out, (total, ce, mp, pp)):
        assert got.dtype == torch.float64 and got.ndim == 0
        assert abs(float(got) - want) < 1e-9 * max(1.0, abs(want))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 2), c=st.integers(1, 4), s=st.integers(1, 6),
       temperature=st.sampled_from([0.05, 0.1, 1.0, 3.0]))
@example(seed=0, n=2, c=2, s=2, temperature=3.0)  # a set holding every class: -ln sum q rounded below 0
def test_weak_loss_properties(seed, n, c, s, temperature):
    g = torch.Generator().manual_seed(seed)
    logits = 4 * torch.randn(n, c, 3, 4, generator=g, dtype=torch.float64)
    sp = random_sp_map(n, 3, 4, s, seed=seed)
    weak = random_weak(n, s, c, seed)
    out = W.weak_loss(logits, sp, weak, s, temperature=temperature)
    want = ref_loss(logits, sp, weak, s, temperature, (16.0, 8.0, 1.0))
    for got, ref_value in zip(out, want):
        assert float(got) >= 0 and abs(float(got) - ref_value) < 1e-9 * max(1.0, abs(ref_value))
    # Renaming superpixels (with their label sets) and shuffling the images change nothing.
    perm = torch.randperm(s, generator=g)
    renamed = torch.where(sp >= 0, perm[sp.clamp_min(0)], -1)
    moved = torch.empty_like(weak)
    moved[:, perm] = weak
    flip = torch.arange(n - 1, -1, -1)
    again = W.weak_loss(logits[flip], renamed[flip], moved[flip], s, temperature=temperature)
    for a, b in zip(again, out):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_weak_loss_defaults_are_the_papers():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 3, 4, 4, generator=g, dtype=torch.float64)
    sp = random_sp_map(1, 4, 4, 4, seed=3, ignore_frac=0.0)
    weak = random_weak(1, 4, 3, seed=3, frac=0.7)
    out = W.weak_loss(logits, sp, weak, 4)
    assert abs(float(out.total) - ref_loss(logits, sp, weak, 4, 0.1, (16.0, 8.0, 1.0))[0]) < 1e-9
    assert abs(float(out.total) - (16 * out.ce + 8 * out.mp + out.pp)) < 1e-9


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weak_loss_gradcheck(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 3, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    sp = random_sp_map(2, 3, 4, 4, seed=seed)
    weak = random_weak(2, 4, 3, seed)
    weak[:, 0] = torch.tensor([True, True, False])  # at least one multi-class superpixel per image
    weak[:, 1] = torch.tensor([False, True, False])  # and one one-class superpixel

    def fn(x):
        return tuple(W.weak_loss(x, sp, weak, 4, temperature=0.5))

    assert torch.autograd.gradcheck(fn, (logits,))


def test_weak_loss_is_finite_for_extreme_logits_and_empty_terms():
    logits = torch.tensor([[[[1e4, -1e4]], [[-1e4, 1e4]], [[0.0, 0.0]]]], dtype=torch.float32, requires_grad=True)
    sp = torch.tensor([[[0, 1]]])
    weak = torch.tensor([[[False, True, False], [True, False, True]]])  # both pixels get q_y ~ 0 at T = 0.1
    out = W.weak_loss(logits, sp, weak, 2)
    out.total.backward()
    assert all(torch.isfinite(t) for t in out) and torch.isfinite(logits.grad).all()
    assert float(out.ce.detach()) == pytest.approx(2e5, rel=1e-6)  # -ln q = 2e4 / 0.1, not inf
    # Nothing labeled: every term 0, zero gradient, no NaN.
    none = W.weak_loss(logits, sp, torch.zeros_like(weak), 2)
    assert float(none.total.detach()) == 0.0
    (grad,) = torch.autograd.grad(none.total, logits)
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("level", [10.0, 1e3, 6e4])
def test_weak_loss_keeps_its_digits_at_large_logits(level):
    """Equal logits give q = 1/C whatever their level: ln q computed as z - logsumexp(z) subtracts two large
    float32 numbers and lost 2 % of ln 3 at 6e4; with the largest logit subtracted first it stays within a few
    ulps of the exact value."""
    logits = torch.full((1, 3, 1, 2), level, dtype=torch.float32)
    sp = torch.tensor([[[0, 0]]])
    weak = torch.tensor([[[True, False, False]]])  # one class: ce = pp = ln 3
    out = W.weak_loss(logits, sp, weak, 1, temperature=1.0)
    assert float(out.ce) == pytest.approx(math.log(3), rel=1e-6)
    assert float(out.pp) == pytest.approx(math.log(3), rel=1e-6)
    two = W.weak_loss(logits, sp, torch.tensor([[[True, True, False]]]), 1, temperature=1.0)
    assert float(two.mp) == pytest.approx(math.log(1.5), rel=1e-6)  # -ln(2/3)


def test_weak_loss_ignores_pixels_outside_superpixels_and_unlabeled_superpixels():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(1, 3, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    sp = random_sp_map(1, 4, 4, 3, seed=4, ignore_frac=0.3)
    weak = torch.tensor([[[True, False, True], [False, False, False], [False, True, False]]])
    W.weak_loss(logits, sp, weak, 3).total.backward()
    dead = (sp == -1) | (sp == 1)
    assert torch.equal(logits.grad[:, :, dead[0]], torch.zeros_like(logits.grad[:, :, dead[0]]))
    assert (logits.grad[:, :, ~dead[0]] != 0).any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_weak_loss_half_is_computed_in_float32(dtype):
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(1, 3, 4, 4, generator=g).to(dtype)
    sp = random_sp_map(1, 4, 4, 3, seed=5)
    weak = random_weak(1, 3, 3, seed=5, frac=0.8)
    out = W.weak_loss(logits, sp, weak, 3)
    assert out.total.dtype == torch.float32
    torch.testing.assert_close(out.total, W.weak_loss(logits.float(), sp, weak, 3).total, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------- stage 2: pseudo


def test_prototype_pixels_match_loop_with_ties():
    probs = random_probs(2, 3, 5, 5, seed=6)
    probs = (probs * 4).round() / 4  # many exact ties inside superpixels
    probs = probs / probs.sum(1, keepdim=True)
    sp = random_sp_map(2, 5, 5, 4, seed=6)
    weak = random_weak(2, 4, 3, seed=6, frac=0.8)
    out = W.prototype_pixels(probs, sp, weak, 4, validate_args=False)
    for i in range(2):
        for g in range(4):
            pixels = [y * 5 + x for y in range(5) for x in range(5) if sp[i, y, x] == g]
            for k in range(3):
                if not weak[i, g, k] or not pixels:
                    assert out[i, g, k] == -1
                    continue
                vals = [float(probs[i, k].reshape(-1)[p]) for p in pixels]
                assert out[i, g, k] == pixels[vals.index(max(vals))]


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("fh, fw", [(3, 4), (6, 7), (12, 10)])
def test_prototype_pseudo_labels_match_reference(mode, fh, fw):
    n, c, h, w, s = 2, 4, 6, 7, 5
    probs = random_probs(n, c, h, w, seed=fh)
    g = torch.Generator().manual_seed(fw)
    features = torch.randn(n, 5, fh, fw, generator=g, dtype=torch.float64)
    sp = random_sp_map(n, h, w, s, seed=fh + fw)
    weak = random_weak(n, s, c, seed=fw)
    out = W.prototype_pseudo_labels(features, probs, sp, weak, s, mode=mode)
    assert out.dtype == torch.int64 and out.shape == (n, h, w)
    assert torch.equal(out, ref_pseudo(features, probs, sp, weak, s, mode=mode))
    # Every pseudo label is a class of its superpixel's set; unlabeled superpixels and -1 pixels are ignored.
    rows = torch.cat([weak, torch.zeros(n, 1, c, dtype=torch.bool)], 1)
    sets = rows[torch.arange(n)[:, None, None], torch.where(sp < 0, s, sp)]
    has = sets.any(-1)
    assert torch.equal(out != 255, has)
    assert sets.gather(-1, out.clamp_max(c - 1)[..., None]).squeeze(-1)[has].all()


@pytest.mark.parametrize("block_size", [1, 3, 17, 1 << 20])
def test_prototype_pseudo_labels_do_not_depend_on_the_block_size(block_size):
    probs = random_probs(2, 3, 8, 9, seed=8)
    features = torch.randn(2, 6, 4, 5, generator=torch.Generator().manual_seed(8))
    sp = random_sp_map(2, 8, 9, 6, seed=8)
    weak = random_weak(2, 6, 3, seed=8)
    base = W.prototype_pseudo_labels(features, probs, sp, weak, 6, block_size=1 << 20)
    assert torch.equal(W.prototype_pseudo_labels(features, probs, sp, weak, 6, block_size=block_size), base)


def test_prototype_pseudo_labels_ties_go_to_the_lower_class_and_one_class_sets_fill():
    # One superpixel, classes 0 and 2 named, both prototypical pixels are pixel 0: identical prototypes.
    probs = torch.tensor([[[[0.5, 0.2, 0.1]], [[0.0, 0.6, 0.1]], [[0.5, 0.2, 0.8]]]])
    features = torch.randn(1, 4, 1, 3, generator=torch.Generator().manual_seed(9))
    sp = torch.tensor([[[0, 0, 1]]])
    weak = torch.tensor([[[True, False, True], [False, True, False]]])
    out = W.prototype_pseudo_labels(features, probs, sp, weak, 2)
    assert out.tolist() == [[[0, 0, 1]]]


def test_pseudo_labels_blocks_bound_the_feature_reads(monkeypatch):
    seen = watch_feature_reads(monkeypatch, W)
    probs = random_probs(1, 3, 10, 10, seed=10)
    W.prototype_pseudo_labels(torch.randn(1, 4, 5, 5), probs, random_sp_map(1, 10, 10, 4, seed=10),
                              torch.ones(1, 4, 3, dtype=torch.bool), 4, block_size=7)
    assert seen and max(seen) <= 7


def test_inputs_are_not_modified():
    probs = random_probs(1, 3, 4, 4, seed=11)
    logits = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(11))
    features = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(12))
    sp = random_sp_map(1, 4, 4, 3, seed=11)
    weak = random_weak(1, 3, 3, seed=11)
    copies = [t.clone() for t in (probs, logits, features, sp, weak)]
    W.weak_loss(logits, sp, weak, 3)
    W.prototype_pseudo_labels(features, probs, sp, weak, 3)
    W.presence_counts(weak)
    for a, b in zip((probs, logits, features, sp, weak), copies):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------------- errors


def test_bad_inputs_raise_clear_errors():
    probs = random_probs(1, 3, 4, 4, seed=12)
    sp = torch.zeros(1, 4, 4, dtype=torch.long)
    weak = torch.ones(1, 2, 3, dtype=torch.bool)
    feats = torch.randn(1, 4, 2, 2)
    with pytest.raises(ValueError, match=r"`weak` must have shape \(1, 2, 3\)"):
        W.weak_loss(probs, sp, weak[:, :, :2], 2)
    with pytest.raises(TypeError, match="`weak` to have dtype torch.bool"):
        W.weak_loss(probs, sp, weak.long(), 2)
    with pytest.raises(ValueError, match="`temperature` to be a finite number > 0, but got 0"):
        W.weak_loss(probs, sp, weak, 2, temperature=0)
    with pytest.raises(TypeError, match="`temperature` to be a number, but got str '1'"):
        W.weak_loss(probs, sp, weak, 2, temperature="1")
    with pytest.raises(ValueError, match="`pp_weight` to be a finite number >= 0, but got -1"):
        W.weak_loss(probs, sp, weak, 2, pp_weight=-1)
    with pytest.raises(ValueError, match="`ce_weight` to be a finite number >= 0, but got nan"):
        W.weak_loss(probs, sp, weak, 2, ce_weight=float("nan"))
    with pytest.raises(TypeError, match="`mp_weight` to be a number, but got NoneType None"):
        W.weak_loss(probs, sp, weak, 2, mp_weight=None)
    with pytest.raises(ValueError, match="`logits` to contain only finite values"):
        W.weak_loss(probs.clone().fill_(float("nan")), sp, weak, 2)
    with pytest.raises(ValueError, match=r"`logits / temperature` to be finite in torch.float32, but it overflows: "
                                         r"the largest \|logit\| is 3e\+38 and temperature=0.1"):
        W.weak_loss(probs.float().fill_(3e38), sp, weak, 2)
    with pytest.raises(ValueError, match="temperature=1e-39"):
        W.weak_loss(probs.float(), sp, weak, 2, temperature=1e-39)
    with pytest.raises(ValueError, match=r"`min_share` to be a number in \[0, 1\], but got 1.5"):
        W.weak_labels(sp, sp, 2, 3, min_share=1.5)
    with pytest.raises(TypeError, match=r"`min_share` to be a number in \[0, 1\], but got str '0.5'"):
        W.weak_labels(sp, sp, 2, 3, min_share="0.5")
    with pytest.raises(TypeError, match=r"`ignore_index` to be an integer, but got float 255.0"):
        W.prototype_pseudo_labels(feats, probs, sp, weak, 2, ignore_index=255.0)
    with pytest.raises(ValueError, match=r"`ignore_index` to be an integer outside the class ids \[0, 3\)"):
        W.prototype_pseudo_labels(feats, probs, sp, weak, 2, ignore_index=1)
    with pytest.raises(ValueError, match=r"`mode` to be one of \['bilinear', 'nearest'\]"):
        W.prototype_pseudo_labels(feats, probs, sp, weak, 2, mode="bicubic")
    with pytest.raises(ValueError, match="`block_size` to be an integer >= 1, but got 0"):
        W.prototype_pseudo_labels(feats, probs, sp, weak, 2, block_size=0)
    with pytest.raises(ValueError, match=r"`features` to have shape \(N, D, h, w\) with N = 1"):
        W.prototype_pseudo_labels(feats.expand(2, -1, -1, -1), probs, sp, weak, 2)
    with pytest.raises(ValueError, match="`probs` to be probabilities"):
        W.prototype_pseudo_labels(feats, probs * 2, sp, weak, 2)
    with pytest.raises(ValueError, match=r"`weak` to have shape \(N, S, C\)"):
        W.presence_counts(weak[0])
    with pytest.raises(ValueError, match=r"`labeled` must have shape \(1, 2\)"):
        W.clicks(weak, torch.ones(1, 3, dtype=torch.bool))


def test_devices_agree(device):
    """Every function on ``device`` against the CPU (CUDA cases skip without a GPU)."""
    probs = random_probs(2, 3, 6, 6, seed=13)
    logits = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    features = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
    sp = random_sp_map(2, 6, 6, 5, seed=13)
    weak = random_weak(2, 5, 3, seed=13)
    labels = probs.argmax(1)
    moved = [t.to(device) for t in (probs, logits, features, sp, weak, labels)]
    assert torch.equal(W.weak_labels(moved[5], moved[3], 5, 3).cpu(), W.weak_labels(labels, sp, 5, 3))
    for a, b in zip(W.weak_loss(moved[1], moved[3], moved[4], 5), W.weak_loss(logits, sp, weak, 5)):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-12, atol=1e-12)
    out = W.prototype_pseudo_labels(moved[2], moved[0], moved[3], moved[4], 5)
    assert out.device.type == device.type
    assert torch.equal(out.cpu(), W.prototype_pseudo_labels(features, probs, sp, weak, 5))
