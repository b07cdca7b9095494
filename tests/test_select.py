import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import oreal
from tests import reference as ref
from tests.conftest import random_probs, random_sp_map


def pool(n=3, c=4, h=6, w=6, s=8, seed=0, excluded=0.2):
    probs = random_probs(n, c, h, w, seed=seed, sharp=2.0)
    sp = random_sp_map(n, h, w, s, seed=seed)
    g = torch.Generator().manual_seed(seed + 2)
    exclude = torch.rand(n, s, generator=g) < excluded
    counts = torch.randint(0, 6, (c,), generator=g)
    return probs, sp, counts, exclude


def as_rows(sel):
    return list(zip(sel.image.tolist(), sel.superpixel.tolist(), sel.cls.tolist()))


@pytest.mark.parametrize("aggregation", ["max", "mean"])
@pytest.mark.parametrize("seed", range(4))
def test_select_matches_reference(aggregation, seed, device):
    probs, sp, counts, exclude = pool(seed=seed)
    budget = 7
    sel = oreal.select(probs.to(device), sp.to(device), counts.to(device), budget, num_superpixels=8,
                       exclude=exclude.to(device), aggregation=aggregation)
    expected = ref.select(probs.numpy(), sp.numpy(), counts.tolist(), budget, 8, exclude.numpy(), aggregation)
    assert all(t.device.type == device.type for t in sel)
    assert as_rows(sel) == [(n, s, c) for n, s, c, _ in expected]
    np.testing.assert_allclose(sel.score.cpu().numpy(), [e[3] for e in expected], atol=1e-12)


def test_superpixel_ovr_entropy_matches_pixelwise_max_and_mean():
    probs, sp, _, _ = pool(seed=9)
    pix = oreal.ovr_entropy(probs)
    for aggregation in ("max", "mean"):
        fast = oreal.superpixel_ovr_entropy(probs, sp, 8, aggregation)
        slow = oreal.aggregate(pix, sp, 8, aggregation)
        torch.testing.assert_close(fast, slow, rtol=0, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(g=st.integers(1, 30), c=st.integers(1, 5), seed=st.integers(0, 10_000), data=st.data())
def test_greedy_matches_reference_with_ties(g, c, seed, data):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 3, (g, c), generator=gen).double()  # few distinct values: many ties
    cand = torch.rand(g, generator=gen) < 0.8
    counts = torch.randint(0, 4, (c,), generator=gen)
    budget = data.draw(st.integers(0, int(cand.sum())))
    debt = oreal.class_debt(counts, budget)
    index, cls, score = oreal.greedy_per_class(scores, debt, counts, candidates=cand)
    expected = ref.greedy(scores.numpy(), debt.tolist(), counts.tolist(), cand.numpy())
    assert list(zip(index.tolist(), cls.tolist(), score.tolist())) == [(a, b, float(s)) for a, b, s in expected]


@settings(max_examples=60, deadline=None)
@given(g=st.integers(1, 30), c=st.integers(1, 5), seed=st.integers(0, 10_000), data=st.data())
def test_greedy_matches_reference_for_any_debts(g, c, seed, data):
    # debts not from water filling: zeros anywhere (those classes are skipped), and with allow_partial more
    # debt than there are candidates, so later classes in the visiting order find fewer or none left
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 3, (g, c), generator=gen).double()
    cand = torch.rand(g, generator=gen) < 0.8
    counts = torch.randint(0, 4, (c,), generator=gen)
    debt = torch.tensor(data.draw(st.lists(st.integers(0, g + 1), min_size=c, max_size=c)))
    index, cls, score = oreal.greedy_per_class(scores, debt, counts, candidates=cand, allow_partial=True)
    expected = ref.greedy(scores.numpy(), debt.tolist(), counts.tolist(), cand.numpy())
    assert list(zip(index.tolist(), cls.tolist(), score.tolist())) == [(a, b, float(s)) for a, b, s in expected]


@settings(max_examples=60, deadline=None)
@given(g=st.integers(1, 40), seed=st.integers(0, 10_000), data=st.data())
def test_topk_matches_sorted_reference(g, seed, data):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 4, (g,), generator=gen).float()
    cand = torch.rand(g, generator=gen) < 0.7
    budget = data.draw(st.integers(0, int(cand.sum())))
    index, values = oreal.topk(scores, budget, candidates=cand)
    expected = sorted((i for i in range(g) if cand[i]), key=lambda i: (-float(scores[i]), i))[:budget]
    assert index.tolist() == expected and torch.equal(values, scores[index])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 3), s=st.integers(1, 10), c=st.integers(1, 5),
       aggregation=st.sampled_from(["max", "mean"]), data=st.data())
def test_selection_properties(seed, n, s, c, aggregation, data):
    probs = random_probs(n, c, 5, 5, seed=seed, sharp=3.0)
    sp = random_sp_map(n, 5, 5, s, seed=seed, ignore_frac=0.3)
    gen = torch.Generator().manual_seed(seed)
    exclude = torch.rand(n, s, generator=gen) < 0.3
    counts = torch.randint(0, 5, (c,), generator=gen)
    cand = oreal.candidates(sp, s, exclude)
    budget = data.draw(st.integers(0, int(cand.sum())))
    sel = oreal.select(probs, sp, counts, budget, num_superpixels=s, exclude=exclude, aggregation=aggregation)
    picked = list(zip(sel.image.tolist(), sel.superpixel.tolist()))
    assert len(picked) == budget  # the budget is met exactly
    assert len(set(picked)) == budget  # no duplicates
    assert all(cand[i, k] for i, k in picked)  # never excluded, never empty
    # each class took exactly its debt
    debt = oreal.class_debt(counts, budget)
    assert torch.equal(oreal.class_counts(sel.cls, c), debt)
    again = oreal.select(probs, sp, counts, budget, num_superpixels=s, exclude=exclude, aggregation=aggregation)
    assert all(torch.equal(a, b) for a, b in zip(sel, again))  # identical across calls


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), s=st.integers(2, 10))
def test_selection_invariant_to_superpixel_relabeling(seed, s):
    """Continuous random scores have no ties, so relabeling ids only relabels the picks."""
    probs = random_probs(2, 3, 6, 6, seed=seed, sharp=2.0)
    sp = random_sp_map(2, 6, 6, s, seed=seed)
    perm = torch.randperm(s, generator=torch.Generator().manual_seed(seed))
    relabeled = torch.where(sp >= 0, perm[sp.clamp_min(0)], -1)
    counts = torch.tensor([3, 0, 1])
    budget = min(4, int(oreal.candidates(sp, s).sum()))
    a = oreal.select(probs, sp, counts, budget, num_superpixels=s)
    b = oreal.select(probs, relabeled, counts, budget, num_superpixels=s)
    assert torch.equal(perm[a.superpixel], b.superpixel) and torch.equal(a.image, b.image)
    assert torch.equal(a.cls, b.cls)
    torch.testing.assert_close(a.score, b.score, rtol=0, atol=0)


def test_uniform_scores_break_ties_by_global_index():
    probs = torch.full((2, 2, 4, 4), 0.5)
    sp = torch.arange(4).repeat_interleave(4).reshape(4, 4).T.expand(2, 4, 4)  # 4 column superpixels
    exclude = torch.zeros(2, 4, dtype=torch.bool)
    exclude[0, 1] = True
    sel = oreal.select(probs, sp, torch.tensor([1, 0]), 4, num_superpixels=4, exclude=exclude)
    # debt = [2, 2]; class 1 is rarer and visited first; every score is ln 2, so lower g = n * 4 + s first
    assert oreal.class_debt(torch.tensor([1, 0]), 4).tolist() == [2, 2]
    assert as_rows(sel) == [(0, 0, 1), (0, 2, 1), (0, 3, 0), (1, 0, 0)]


def test_zero_budget_gives_empty_selection():
    probs, sp, counts, exclude = pool()
    sel = oreal.select(probs, sp, counts, 0, num_superpixels=8, exclude=exclude)
    assert all(t.numel() == 0 for t in sel)


def test_too_few_candidates():
    probs, sp, counts, _ = pool()
    exclude = torch.ones(3, 8, dtype=torch.bool)
    exclude[0, :2] = False
    available = int(oreal.candidates(sp, 8, exclude).sum())
    with pytest.raises(ValueError, match=rf"at most the {available} candidate.*budget = 5"):
        oreal.select(probs, sp, counts, 5, num_superpixels=8, exclude=exclude)
    sel = oreal.select(probs, sp, counts, 5, num_superpixels=8, exclude=exclude, allow_partial=True)
    assert len(sel.image) == available and set(sel.image.tolist()) == {0}


def test_class_mask_keeps_classes_out():
    probs, sp, counts, exclude = pool(seed=3)
    mask = torch.tensor([True, False, True, False])
    sel = oreal.select(probs, sp, counts, 6, num_superpixels=8, exclude=exclude, class_mask=mask)
    assert set(sel.cls.tolist()) <= {0, 2} and len(sel.cls) == 6


@pytest.mark.parametrize("dtype, tol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_half_probabilities(dtype, tol):
    probs, sp, counts, exclude = pool(seed=4)
    half = probs.to(dtype)
    sel = oreal.select(half, sp, counts, 6, num_superpixels=8, exclude=exclude)
    upcast = oreal.select(half.float(), sp, counts, 6, num_superpixels=8, exclude=exclude, validate_args=False)
    assert sel.score.dtype == torch.float32
    assert all(torch.equal(a, b) for a, b in zip(sel, upcast))  # computed in float32
    full = oreal.superpixel_ovr_entropy(probs.float(), sp, 8)
    fast = oreal.superpixel_ovr_entropy(half, sp, 8)
    assert (fast - full).abs().max() <= tol


def test_inputs_not_modified():
    probs, sp, counts, exclude = pool(seed=5)
    saved = [t.clone() for t in (probs, sp, counts, exclude)]
    oreal.select(probs, sp, counts, 5, num_superpixels=8, exclude=exclude)
    assert all(torch.equal(a, b) for a, b in zip(saved, (probs, sp, counts, exclude)))


@pytest.mark.parametrize("aggregation", ["max", "mean"])
def test_select_with_small_chunks_matches_reference(aggregation, monkeypatch):
    monkeypatch.setattr(sys.modules["oreal.aggregate"], "CPU_CHUNK", 7)
    probs, sp, counts, exclude = pool(seed=11)
    sel = oreal.select(probs, sp, counts, 9, num_superpixels=8, exclude=exclude, aggregation=aggregation)
    expected = ref.select(probs.numpy(), sp.numpy(), counts.tolist(), 9, 8, exclude.numpy(), aggregation)
    assert as_rows(sel) == [(n, s, c) for n, s, c, _ in expected]


def literal_max_ovr_entropy(probs, sp, s):
    """``max_{x in g} h(p_c(x))`` literally, pixel by pixel in float64 (no shortcut): (N, S, C) array."""
    n, c = probs.shape[:2]
    out = np.zeros((n, s, c))
    p64 = probs.double().numpy()
    for i in range(n):
        for y, x in np.ndindex(*sp.shape[1:]):
            k = int(sp[i, y, x])
            if k >= 0:
                for cls in range(c):
                    out[i, k, cls] = max(out[i, k, cls], ref.binary_entropy(float(p64[i, cls, y, x])))
    return out


def test_max_ovr_entropy_keeps_tiny_probabilities():
    # Class 1 is rare and the model confident: p = 1e-12 in superpixel 0, 1e-9 in superpixel 1 (float32).
    probs = torch.zeros(1, 2, 1, 2)
    probs[0, 1, 0] = torch.tensor([1e-12, 1e-9])
    probs[0, 0] = 1 - probs[0, 1]
    sp = torch.tensor([[[0, 1]]])
    sel = oreal.select(probs, sp, torch.tensor([5, 0]), 1, num_superpixels=2)
    assert as_rows(sel) == [(0, 1, 1)]
    expected = literal_max_ovr_entropy(probs, sp, 2)
    assert expected[0, 0, 1] == pytest.approx(2.86e-11, rel=1e-2) and expected[0, 1, 1] == pytest.approx(2.17e-8,
                                                                                                          rel=1e-2)
    # float32 h(p) = -(p ln p + (1 - p) ln(1 - p)) loses the second term once 1 - p rounds to 1: 1/(1 - ln p) off
    assert sel.score.item() == oreal.binary_entropy(probs[0, 1, 0, 1].double()).float().item()  # float64, rounded
    assert sel.score.item() == pytest.approx(expected[0, 1, 1], rel=0.05)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk", [None, 3])
def test_max_ovr_entropy_is_the_literal_max_for_tiny_and_saturated(dtype, chunk, monkeypatch):
    if chunk:
        monkeypatch.setattr(sys.modules["oreal.aggregate"], "CPU_CHUNK", chunk)
    tiny = torch.finfo(dtype).tiny
    values = [tiny / 8, tiny, 1e-30, 1e-20, 1e-12, 3e-9, 1e-8, 1.5e-8, 2e-8, 1e-7, 1e-3, 0.25, 0.49, 0.5, 0.75,
              1 - 1e-3, 1 - 1e-7, 1.0, 0.0]
    g = torch.Generator().manual_seed(0)
    n, h, w, s = 2, 6, 9, 7
    # Class 0 takes the listed values (subnormal to saturated) in random places, class 1 is its complement.
    # h is flat near 0.5 (float32 rounds h(0.4999) to h(0.5)), so 0.49 is the value closest to 0.5.
    p0 = torch.tensor(values, dtype=dtype)[torch.randint(0, len(values), (n, h, w), generator=g)]
    probs = torch.stack([p0, 1 - p0], 1)
    sp = random_sp_map(n, h, w, s, seed=3)
    fast = oreal.superpixel_ovr_entropy(probs, sp, s)
    # the literal max of h over the pixels, in float64 rounded to the dtype: bit for bit
    assert torch.equal(fast, oreal.aggregate(oreal.ovr_entropy(probs.double()), sp, s, "max").to(dtype))
    expected = literal_max_ovr_entropy(probs, sp, s)  # float64, pixel by pixel
    fast = fast.numpy()
    assert ((fast > 0) == (expected > 0)).all()  # nothing tiny is rounded to 0
    for cls in range(2):  # every class column ranks as the float64 literal max does
        assert np.array_equal(np.argsort(-fast[..., cls].ravel(), kind="stable"),
                              np.argsort(-expected[..., cls].ravel(), kind="stable"))


@pytest.mark.parametrize("aggregation", ["max", "mean"])
def test_select_bits_do_not_depend_on_the_thread_count(aggregation):
    """Scatters that torch's threads share (see tests/test_aggregate.py): the same picks, scores and superpixel
    scores to the last bit with 1 to 4 threads."""
    from tests.test_aggregate import with_threads

    probs, sp, counts, exclude = pool(n=2, c=5, h=128, w=256, s=40, seed=12)
    probs = probs.float()

    def run():
        return (oreal.select(probs, sp, counts, 9, num_superpixels=40, exclude=exclude, aggregation=aggregation),
                oreal.superpixel_ovr_entropy(probs, sp, 40, aggregation))

    runs = with_threads((1, 2, 3, 4), run)
    for sel, scores in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0][0], sel)) and torch.equal(runs[0][1], scores)


@pytest.mark.parametrize("aggregation", ["max", "mean"])
@pytest.mark.parametrize("bad, message", [(float("nan"), "finite"), (1.25, r"in \[0, 1\].*\[-0.25, 1.25\]"),
                                          (-0.5, r"in \[0, 1\].*\[-0.5, 1.5\]")])
def test_select_checks_values_in_its_own_pass(aggregation, bad, message, monkeypatch):
    """Values are checked chunk by chunk along the reduction: a bad pixel in the last chunk is still found."""
    monkeypatch.setattr(sys.modules["oreal.aggregate"], "CPU_CHUNK", 5)
    probs, sp, counts, _ = pool(c=2, seed=13)
    probs = probs.float()
    probs[-1, 0, -1, -1], probs[-1, 1, -1, -1] = bad, 1 - bad
    with pytest.raises(ValueError, match=message):
        oreal.select(probs, sp, counts, 3, num_superpixels=8, aggregation=aggregation)
    probs[-1, 1, -1, -1] = 0.5  # now in range but not summing to 1 (for the in-range bad values)
    if 0 <= bad <= 1:
        return
    probs[-1, 0, -1, -1] = 0.25
    with pytest.raises(ValueError, match="sum to 1 along dim 1 .* deviation is 0.25"):
        oreal.select(probs, sp, counts, 3, num_superpixels=8, aggregation=aggregation)


@given(st.integers(0, 2 ** 31 - 1), st.sampled_from([1e-3, 1e-4, 1e-5]))
@settings(max_examples=40, deadline=None)
def test_max_ovr_entropy_near_one_half_is_the_rounded_float64_literal_max(seed, spread):
    """Near p = 0.5, where a float32 h of every pixel is not monotone to the last bit, the max-aggregated score is
    the float64 literal max over the pixels, rounded to float32: the entropy of the pixel nearest 0.5."""
    g = torch.Generator().manual_seed(seed)
    p0 = 0.5 + spread * (2 * torch.rand(2, 6, 9, generator=g) - 1)
    probs = torch.stack([p0, 1 - p0], 1).float()
    sp = random_sp_map(2, 6, 9, 5, seed=seed % 1000)
    fast = oreal.superpixel_ovr_entropy(probs, sp, 5)
    assert torch.equal(fast, oreal.aggregate(oreal.ovr_entropy(probs.double()), sp, 5, "max").float())
