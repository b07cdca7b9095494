import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import oreal
from tests import reference as ref
from tests.conftest import random_probs

PIXEL_SCORES = [(oreal.entropy, ref.entropy), (oreal.bvsb, ref.bvsb), (oreal.margin, ref.margin)]


def with_certain_pixels(probs):
    """Put one-hot and exactly-tied pixels in, where 0 ln 0 and equal top-2 matter."""
    probs = probs.clone()
    probs[0, :, 0, 0] = 0.0
    probs[0, 0, 0, 0] = 1.0
    probs[0, :, 0, 1] = 0.0
    probs[0, :2, 0, 1] = 0.5
    return probs


@pytest.mark.parametrize("fn, reference", PIXEL_SCORES)
def test_pixel_scores_match_reference(fn, reference, device):
    probs = with_certain_pixels(random_probs(2, 4, 3, 5, seed=1))
    out = fn(probs.to(device))
    assert out.shape == (2, 3, 5) and out.device.type == device.type
    np.testing.assert_allclose(out.cpu().numpy(), ref.pixel_scores(probs.numpy(), reference), atol=1e-12)


def test_ovr_entropy_matches_reference():
    probs = with_certain_pixels(random_probs(2, 4, 3, 5, seed=2))
    out = oreal.ovr_entropy(probs)
    expected = np.vectorize(ref.binary_entropy)(probs.numpy())
    assert out.shape == probs.shape
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-12)


def mc_samples(n=2, k=5, c=4, h=3, w=2, seed=3):
    g = torch.Generator().manual_seed(seed)
    return (2 * torch.randn(n, k, c, h, w, generator=g, dtype=torch.float64)).softmax(2)


@pytest.mark.parametrize("fn, reference", [(oreal.bald, ref.bald), (oreal.balent, ref.balent)])
def test_mc_scores_match_reference(fn, reference):
    mc = mc_samples()
    out = fn(mc)
    n, _, _, h, w = mc.shape
    expected = np.zeros((n, h, w))
    for i in range(n):
        for y in range(h):
            for x in range(w):
                expected[i, y, x] = reference(mc[i, :, :, y, x].numpy())
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-7, atol=1e-9)


def test_bald_is_zero_when_samples_agree():
    mc = random_probs(1, 3, 2, 2, seed=4)[:, None].expand(1, 6, 3, 2, 2)
    assert torch.allclose(oreal.bald(mc), torch.zeros(1, 2, 2, dtype=mc.dtype), atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bald_is_never_negative(dtype):
    """Samples that agree give H(mean) - mean H within rounding of 0, on either side; the score stays >= 0."""
    mc = random_probs(4, 7, 30, 40, seed=5).to(dtype)[:, None].expand(4, 5, 7, 30, 40)
    out = oreal.bald(mc)
    assert bool((out >= 0).all()) and float(out.max()) < 1e3 * torch.finfo(dtype).eps


def test_binary_entropy_checks_its_range():
    for bad in ([1.5, 0.5], [-0.1], [float("nan")]):
        with pytest.raises(ValueError, match=r"`p` to hold probabilities in \[0, 1\], but got values in"):
            oreal.binary_entropy(torch.tensor(bad))
    assert bool(oreal.binary_entropy(torch.tensor([1.5]), validate_args=False).isfinite().all())  # not checked


def test_ratio_and_margin_rank_the_spec_example_differently():
    """SPEC §1: top-2 (0.2, 0.1) vs (0.55, 0.44): the ratio ranks the second pixel higher, the margin the first."""
    a = [0.2] + [0.1] * 8
    b = [0.55, 0.44, 0.01] + [0.0] * 6
    probs = torch.tensor([a, b], dtype=torch.float64).T[None]  # (1, 9, 2): classes along dim 1
    r, m = oreal.bvsb(probs)[0], oreal.margin(probs)[0]
    torch.testing.assert_close(r, torch.tensor([0.5, 0.8], dtype=torch.float64))
    torch.testing.assert_close(m, torch.tensor([0.9, 0.89], dtype=torch.float64))
    assert r[0] < r[1] and m[0] > m[1]


@settings(max_examples=40, deadline=None)
@given(c=st.integers(2, 6), seed=st.integers(0, 10_000), sharp=st.floats(0.0, 20.0))
def test_score_ranges(c, seed, sharp):
    probs = random_probs(2, c, 3, 3, seed=seed, sharp=sharp)
    eps = 1e-12
    h = oreal.entropy(probs)
    assert (h >= -eps).all() and (h <= math.log(c) + eps).all()
    for fn in (oreal.bvsb, oreal.margin):
        v = fn(probs)
        assert (v >= -eps).all() and (v <= 1 + eps).all()
    o = oreal.ovr_entropy(probs)
    assert (o >= -eps).all() and (o <= math.log(2) + eps).all()
    mc = torch.stack([random_probs(2, c, 3, 3, seed=seed + k, sharp=sharp) for k in range(3)], 1)
    b = oreal.bald(mc)
    assert (b >= -1e-9).all() and (b <= math.log(c) + 1e-9).all()
    assert torch.isfinite(oreal.balent(mc)).all()


@pytest.mark.parametrize("fn", [oreal.entropy, oreal.bvsb, oreal.margin, oreal.ovr_entropy])
@pytest.mark.parametrize("dtype, tol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_half_inputs(fn, dtype, tol):
    """Half inputs are computed in float32: exactly the float32 result of the rounded input, and within the
    documented tolerance of the float32 result of the unrounded input."""
    probs = random_probs(2, 5, 8, 8, seed=5, dtype=torch.float32)
    half = probs.to(dtype)
    out = fn(half)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, fn(half.float(), validate_args=False), rtol=0, atol=0)
    assert (out - fn(probs)).abs().max() <= tol


def test_inputs_not_modified():
    probs = random_probs(1, 3, 4, 4, seed=6)
    mc = torch.stack([probs, probs.flip(1)], 1)
    before, mc_before = probs.clone(), mc.clone()
    for fn in (oreal.entropy, oreal.bvsb, oreal.margin, oreal.ovr_entropy):
        fn(probs)
    oreal.bald(mc), oreal.balent(mc)
    assert torch.equal(probs, before) and torch.equal(mc, mc_before)


@given(st.floats(min_value=1.0000000031710769e-30, max_value=1.0, allow_subnormal=False, width=32))
@settings(max_examples=300, deadline=None)
def test_binary_entropy_keeps_both_terms_for_tiny_and_saturated_p(p):
    """Against the float64 formula with log1p: for tiny p, (1 - p) ln(1 - p) ~ -p is not dropped (1 - p rounds to
    1 in float32), and p = 1 gives 0 (no NaN); the fused kernel of select agrees."""
    from oreal.uncertainty import _binary_entropy_into

    x = torch.tensor([p], dtype=torch.float32)
    d = x.double()
    want = float(-(d * d.log()) - ((1 - d) * torch.log1p(-d) if p < 1 else 0))
    got = [float(oreal.binary_entropy(x)),
           float(_binary_entropy_into(x, torch.empty_like(x), torch.empty_like(x), torch.empty_like(x)))]
    for g in got:
        assert g == pytest.approx(want, rel=1e-5, abs=1e-37), (p, got, want)


@given(c=st.integers(2, 7), shape=st.sampled_from([(5,), (2, 3, 4)]), levels=st.sampled_from([1, 2, 3, 1000]),
       dtype=st.sampled_from([torch.float16, torch.float32, torch.float64]), seed=st.integers(0, 2 ** 31 - 1))
@settings(max_examples=80, deadline=None)
def test_top2_is_the_two_largest_of_each_pixel_ties_included(c, shape, levels, dtype, seed):
    """The running pair gives what sorting each pixel's classes gives; 1 to 3 distinct values make ties common."""
    from oreal.uncertainty import _top2

    g = torch.Generator().manual_seed(seed)
    x = (torch.randint(0, levels, (shape[0], c, *shape[1:]), generator=g) - 1.5).to(dtype)
    first, second = _top2(x)
    flat = x.movedim(1, -1).reshape(-1, c).tolist()
    want = [sorted(row, reverse=True)[:2] for row in flat]
    assert first.dtype == dtype and first.shape == (shape[0], *shape[1:])
    assert first.reshape(-1).tolist() == [w[0] for w in want]
    assert second.reshape(-1).tolist() == [w[1] for w in want]
    argmax = [row.index(max(row)) for row in flat]  # the first maximum
    again = _top2(x, labels=torch.arange(c))  # the same pair, and the label of the first maximum: its index here
    assert torch.equal(again[0], first) and torch.equal(again[1], second)
    assert again[2].dtype == torch.long and again[2].reshape(-1).tolist() == argmax
    weights = [0.5 + k for k in range(c)]  # float labels come back in x's dtype
    labelled = _top2(x, labels=torch.tensor(weights, dtype=torch.float64))[2]
    assert labelled.dtype == dtype and labelled.reshape(-1).tolist() == [weights[k] for k in argmax]
    assert torch.equal(x, (torch.randint(0, levels, (shape[0], c, *shape[1:]),
                                         generator=torch.Generator().manual_seed(seed)) - 1.5).to(dtype))


@given(st.lists(st.floats(min_value=0.0, max_value=1.0, width=32), min_size=1, max_size=40),
       st.sampled_from([torch.float32, torch.float64]))
@settings(max_examples=200, deadline=None)
def test_xlogx_is_t_ln_t_with_0_ln_0_0(values, dtype):
    """The vectorised ``t ln t`` against float64 ``t * log(t)``: 0 gives 0, no NaN, normal values within a few ulp of
    the product, subnormals (moved to ``tiny`` inside the log) within ``17 t``; the same bits strided or not."""
    from oreal.uncertainty import _xlogx

    t = torch.tensor(values, dtype=dtype)
    got = _xlogx(t)
    d = t.double()
    want = torch.where(d > 0, d * d.clamp_min(1e-320).log(), torch.zeros_like(d))
    tiny = torch.finfo(dtype).tiny
    normal, subnormal = d >= tiny, (d > 0) & (d < tiny)
    assert torch.equal(got[t == 0], torch.zeros_like(got[t == 0]))
    assert torch.allclose(got[normal].double(), want[normal], rtol=4 * torch.finfo(dtype).eps, atol=0)
    assert bool(((got.double() - want).abs()[subnormal] < 17 * d[subnormal]).all())
    spread = torch.zeros(2 * len(values), dtype=dtype)
    spread[::2] = t
    assert torch.equal(_xlogx(spread[::2]), got)
    assert torch.equal(t, torch.tensor(values, dtype=dtype))  # input untouched


@given(st.floats(min_value=0.5, max_value=1.0, width=32), st.sampled_from([torch.float32, torch.float64]))
@settings(max_examples=200, deadline=None)
def test_binary_entropy_is_symmetric_to_the_last_bit(p, dtype):
    """``h(p) == h(1 - p)`` bit for bit (``1 - p`` is exact for ``p >= 0.5``), so the literal max of ``h`` over pixels
    and ``h`` of the pixel nearest to 0.5 are the same number."""
    x = torch.tensor([p], dtype=dtype)
    assert torch.equal(oreal.binary_entropy(x), oreal.binary_entropy(1 - x))


def _naive_scores(p):
    """The pixel scores written plainly, for autograd to differentiate (float64, no exact 0 or 1 in ``p``)."""
    top = p.topk(2, dim=1).values
    return {oreal.entropy: -(p * p.log()).sum(1), oreal.bvsb: top[:, 1] / top[:, 0],
            oreal.margin: 1 - (top[:, 0] - top[:, 1]),
            oreal.ovr_entropy: -(p * p.log() + (1 - p) * (1 - p).log()),
            oreal.binary_entropy: -(p * p.log() + (1 - p) * (1 - p).log())}


@pytest.mark.filterwarnings("error")  # nor a warning from the validation's host reads
@pytest.mark.parametrize("fn", [oreal.entropy, oreal.bvsb, oreal.margin, oreal.ovr_entropy, oreal.binary_entropy])
def test_pixel_scores_are_differentiable(fn):
    """Probabilities that require grad (a model's softmax in a training step): the same values as without grad, and
    the gradient of the plain formula."""
    z = torch.randn(2, 5, 3, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64, requires_grad=True)
    p = z.softmax(1)
    out = fn(p)
    assert out.requires_grad and torch.equal(out.detach(), fn(p.detach()))
    weights = torch.rand(out.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    got, = torch.autograd.grad((out * weights).sum(), z, retain_graph=True)  # p is differentiated again below
    want, = torch.autograd.grad((_naive_scores(p)[fn] * weights).sum(), z)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fn", [oreal.bald, oreal.balent])
def test_mc_scores_keep_a_graph(fn):
    mc = mc_samples().requires_grad_()
    out = fn(mc)
    assert out.requires_grad and torch.equal(out.detach(), fn(mc.detach()))
    assert torch.isfinite(torch.autograd.grad(out.sum(), mc)[0]).all()
