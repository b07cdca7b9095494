"""Every bad input gets a clear error that says what was expected and what came."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import oreal

N, C, H, W, S = 2, 3, 4, 4, 4


def good():
    probs = torch.randn(N, C, H, W, generator=torch.Generator().manual_seed(0)).softmax(1)
    sp = torch.arange(S).repeat_interleave(H // S * W).reshape(H, W).expand(N, H, W).contiguous()
    return dict(probs=probs, sp_map=sp, labeled_counts=torch.tensor([1, 0, 2]), budget=3, num_superpixels=S)


def call(**changes):
    args = good()
    args.update(changes)
    budget = args.pop("budget")
    return oreal.select(args.pop("probs"), args.pop("sp_map"), args.pop("labeled_counts"), budget, **args)


def sp_with(value):
    sp = good()["sp_map"].clone()
    sp[0, 0, 0] = value
    return sp


def probs_with(value):
    p = good()["probs"].clone()
    p[1, 0, 2, 2] = value
    return p


CASES = [
    (dict(probs=[[0.5]]), TypeError, r"`probs` to be a torch.Tensor, but got list"),
    (dict(probs=torch.ones(N, C, H, W, dtype=torch.long)), TypeError, r"`probs` to have a floating point dtype"),
    (dict(probs=torch.rand(N, C, H)), ValueError, r"`probs` to have 4 dimensions, but got 3"),
    (dict(sp_map=torch.zeros(N, H, W - 1, dtype=torch.long)), ValueError,
     r"`sp_map` must have shape \(2, 4, 4\) = \(N, H, W\) to match probs, got \(2, 4, 3\)"),
    (dict(sp_map=torch.zeros(N, H, W)), TypeError, r"`sp_map` to have an integer dtype, but got torch.float32"),
    *[(dict(sp_map=torch.zeros(N, H, W, dtype=getattr(torch, f"uint{b}"))), TypeError,
       rf"`sp_map` to have an integer dtype, but got torch.uint{b}; .* e.g. `sp_map.long\(\)`")
      for b in (16, 32, 64) if hasattr(torch, f"uint{b}")],
    (dict(sp_map=torch.zeros(N, H, W, dtype=torch.long, device="meta")), ValueError,
     r"`sp_map` to be on the same device as `probs` \(cpu\), but got meta"),
    (dict(sp_map=sp_with(S)), ValueError, r"superpixel ids in \[0, 4\) or -1, but found 4"),
    (dict(sp_map=sp_with(-2)), ValueError, r"superpixel ids in \[0, 4\) or -1, but found -2"),
    (dict(probs=probs_with(float("nan"))), ValueError, r"only finite values, but found NaN or inf"),
    (dict(probs=probs_with(float("inf"))), ValueError, r"only finite values"),
    (dict(probs=torch.randn(N, C, H, W)), ValueError, r"probabilities in \[0, 1\].*not logits"),
    (dict(probs=torch.full((N, C, H, W), 0.5)), ValueError, r"sum to 1 along dim 1 .* deviation is 0.5"),
    (dict(labeled_counts=torch.tensor([1, -1, 0])), ValueError, r"`labeled_counts` to be non-negative, but found -1"),
    (dict(labeled_counts=torch.tensor([1, 0])), ValueError, r"`labeled_counts` must have shape \(3,\) = \(C,\)"),
    (dict(labeled_counts=torch.tensor([1.0, 0.0, 2.0])), TypeError, r"`labeled_counts` to have an integer dtype"),
    (dict(budget=-1), ValueError, r"`budget` to be an integer >= 0, but got -1"),
    (dict(budget=2.5), TypeError, r"`budget` to be an integer, but got float"),
    (dict(budget=True), TypeError, r"`budget` to be an integer, but got bool"),
    (dict(budget=9), ValueError, r"at most the 8 candidate superpixels .* budget = 9"),
    (dict(num_superpixels=0), ValueError, r"`num_superpixels` to be an integer >= 1, but got 0"),
    (dict(exclude=torch.zeros(N, S + 1, dtype=torch.bool)), ValueError, r"`exclude` must have shape \(2, 4\)"),
    (dict(exclude=torch.zeros(N, S)), TypeError, r"`exclude` to have dtype torch.bool, but got torch.float32"),
    (dict(aggregation="median"), ValueError, r"`aggregation` to be one of \['max', 'mean'\], but got 'median'"),
    (dict(class_mask=torch.zeros(C, dtype=torch.bool)), ValueError, r"leaves no class to balance"),
    (dict(class_mask=torch.ones(C + 1, dtype=torch.bool)), ValueError, r"`class_mask` must have shape \(3,\)"),
]


@pytest.mark.parametrize("changes, error, match", CASES, ids=[m[:40] for _, _, m in CASES])
def test_select_rejects_bad_input(changes, error, match):
    with pytest.raises(error, match=match):
        call(**changes)


def test_valid_input_passes():
    sel = call()
    assert len(sel.image) == 3


def test_value_checks_can_be_turned_off():
    # validate_args=False skips the host-syncing value checks (not the cheap shape checks)
    call(probs=torch.full((N, C, H, W), 0.5), validate_args=False)
    with pytest.raises(ValueError, match="4 dimensions"):
        call(probs=torch.rand(N, C, H), validate_args=False)


@pytest.mark.parametrize("fn", [oreal.entropy, oreal.bvsb, oreal.margin, oreal.ovr_entropy])
def test_scores_reject_logits(fn):
    with pytest.raises(ValueError, match="not logits"):
        fn(torch.randn(2, 3, 4))


@pytest.mark.parametrize("fn", [oreal.bvsb, oreal.margin])
def test_two_classes_needed_for_top2(fn):
    with pytest.raises(ValueError, match="at least 2 classes in dim 1"):
        fn(torch.ones(2, 1, 4))


def test_balent_needs_two_samples():
    with pytest.raises(ValueError, match="at least K = 2 samples"):
        oreal.balent(torch.full((1, 1, 2, 3), 0.5))


def test_aggregate_errors():
    sp = good()["sp_map"]
    with pytest.raises(ValueError, match=r"`reduce` to be one of"):
        oreal.aggregate(torch.rand(N, H, W), sp, S, "median")
    with pytest.raises(ValueError, match=r"shape \(N, H, W\) or \(N, C, H, W\)"):
        oreal.aggregate(torch.rand(H, W), sp, S)
    with pytest.raises(ValueError, match="only finite values"):
        oreal.aggregate(torch.full((N, H, W), float("nan")), sp, S)


def test_label_errors():
    sp = good()["sp_map"]
    labels = torch.zeros(N, H, W, dtype=torch.long)
    labels[0, 0, 0] = 7
    with pytest.raises(ValueError, match=r"class ids in \[0, 3\) or 255, but found 7"):
        oreal.dominant_labels(labels, sp, S, 3)
    with pytest.raises(ValueError, match=r"class ids < num_classes = 3 .* found 7"):
        oreal.class_counts(labels, 3)
    with pytest.raises(ValueError, match=r"`pred` must have shape"):
        oreal.miou(labels[0], labels, 3)


def test_greedy_and_topk_errors():
    scores = torch.rand(5, 3)
    cand = torch.ones(5, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"`debt` must have shape \(3,\)"):
        oreal.greedy_per_class(scores, torch.tensor([1, 1]), torch.tensor([0, 0, 0]), candidates=cand)
    with pytest.raises(ValueError, match=r"`candidates` must have shape \(5,\)"):
        oreal.topk(scores[:, 0], 2, candidates=cand[:4])
    with pytest.raises(ValueError, match="only finite values"):
        oreal.topk(torch.tensor([1.0, float("nan")]), 1, candidates=torch.ones(2, dtype=torch.bool))


@given(st.integers(0, 60), st.sampled_from([float("nan"), float("inf"), float("-inf"), None]),
       st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]), st.integers(0, 2 ** 31 - 1))
@settings(max_examples=120, deadline=None)
def test_all_finite_finds_nan_and_inf_anywhere(size, bad, dtype, seed):
    """``all_finite`` (one aminmax) against ``isfinite(x).all()``, with one bad value anywhere, empty included."""
    from oreal._checks import all_finite

    g = torch.Generator().manual_seed(seed)
    x = (1e3 * torch.randn(size, generator=g)).to(dtype)
    if bad is not None and size:
        x[int(torch.randint(0, size, (1,), generator=g))] = bad
    assert all_finite(x) == bool(torch.isfinite(x).all())
    assert all_finite(x.reshape(1, size, 1).expand(2, size, 3)) == bool(torch.isfinite(x).all())


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=0, max_size=4), seed=st.integers(0, 2 ** 31 - 1),
       nan=st.booleans(), dtype=st.sampled_from([torch.float32, torch.float16, torch.int64]))
def test_extremes_is_aminmax_in_any_layout(shape, seed, nan, dtype):
    """The min and max of every value, whatever the strides (permuted, sliced, expanded); NaN propagates."""
    from oreal._checks import extremes
    g = torch.Generator().manual_seed(seed)
    base = (torch.randn(*shape, 3, generator=g) * 100).to(dtype)
    if nan and dtype.is_floating_point:
        base.view(-1)[int(torch.randint(base.numel(), (1,), generator=g))] = float("nan")
    views = [base, base.flip(-1)[..., :2], base.unsqueeze(0).expand(2, *base.shape)]
    if base.ndim >= 2:
        perm = torch.randperm(base.ndim, generator=g).tolist()
        views += [base.permute(perm), base.transpose(0, -1)[..., ::2]]
    for v in views:
        flat = v.contiguous().flatten().double()  # the reference: Python's min and max over the values
        lo, hi = extremes(v)
        if flat.isnan().any():
            assert lo.isnan() and hi.isnan()
        else:
            assert float(lo) == min(flat.tolist()) and float(hi) == max(flat.tolist())


_LABELS = torch.tensor([[[0, 1], [2, 255]]])
_SP = torch.tensor([[[0, 0], [1, 1]]])


@pytest.mark.parametrize("fn", [
    lambda ii: oreal.superpixel_label_counts(_LABELS, _SP, 2, 3, ignore_index=ii),
    lambda ii: oreal.dominant_labels(_LABELS, _SP, 2, 3, ignore_index=ii),
    lambda ii: oreal.confusion_matrix(_LABELS.clamp_max(2), _LABELS, 3, ignore_index=ii),
    lambda ii: oreal.miou(_LABELS.clamp_max(2), _LABELS, 3, ignore_index=ii),
])
def test_ignore_index_is_checked(fn):
    """An integer outside the class ids, in int64: a string, bool, float or a class id never passes silently."""
    for bad, err, match in [("255", TypeError, "`ignore_index` to be an integer, but got str '255'"),
                            (True, TypeError, "`ignore_index` to be an integer, but got bool True"),
                            (255.0, TypeError, "`ignore_index` to be an integer, but got float"),
                            (1, ValueError, r"`ignore_index` to be an integer outside the class ids \[0, 3\), "
                                            r"but got 1"),
                            (2 ** 70, ValueError, r"`ignore_index` to be an integer <= 2\*\*63 - 1")]:
        with pytest.raises(err, match=match):
            fn(bad)
    fn(255)  # the labels' void value: accepted


def test_metric_counts_are_checked():
    with pytest.raises(ValueError, match=r"`num_classes` to be at most 3037000499 \(its C \* C bins"):
        oreal.confusion_matrix(torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long), 2 ** 32)
    with pytest.raises(ValueError, match="`confusion` to be non-negative, but found -1"):
        oreal.miou_from_confusion(torch.tensor([[1, -1], [-1, 1]]))
    # the unchecked call computes what the counts say
    assert float(oreal.miou_from_confusion(torch.tensor([[1, -1], [-1, 1]]), validate_args=False)) == -1.0


def test_allow_partial_must_be_a_bool():
    """A truthy stand-in ("no", 1) would silently return fewer picks than the budget."""
    from oreal import semi
    from oreal.stream import StreamingSelector

    args = good()
    probs, sp = args["probs"], args["sp_map"]
    stream = StreamingSelector("entropy", num_superpixels=S, budget=3)
    stream.update(probs=probs, sp_map=sp, image_ids=[0, 1])
    calls = [lambda flag: oreal.select(**args, allow_partial=flag),
             lambda flag: oreal.topk(torch.rand(4), 2, candidates=torch.ones(4, dtype=torch.bool), allow_partial=flag),
             lambda flag: oreal.strategies.query("entropy", probs=probs, sp_map=sp, num_superpixels=S, budget=3,
                                                 allow_partial=flag),
             lambda flag: stream.compute(allow_partial=flag),
             lambda flag: semi.query_undecided("entropy", fraction=torch.ones(N, S), probs=probs, sp_map=sp,
                                               num_superpixels=S, budget=3, allow_partial=flag)]
    for call in calls:
        for bad in ("no", 1, None):
            with pytest.raises(TypeError, match=f"`allow_partial` to be True or False, but got {type(bad).__name__}"):
                call(bad)
        assert len(call(False)[0]) == len(call(True)[0])  # enough candidates: the flag changes nothing here


def test_uint8_labels_are_checked_against_a_negative_ignore_index():
    """255 in uint8 labels is not the ignore index -1 (uint8 comparisons would wrap -1 to 255)."""
    labels = torch.tensor([[[0, 1], [255, 1]]], dtype=torch.uint8)
    sp = torch.zeros(1, 2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match=r"class ids in \[0, 3\) or -1, but found 255.*ignore_index=255"):
        oreal.superpixel_label_counts(labels, sp, 1, 3, ignore_index=-1)
    assert oreal.superpixel_label_counts(labels, sp, 1, 3, ignore_index=255).tolist() == [[[1, 2, 0]]]


def test_numpy_scalars_are_numbers():
    """Options and fractions computed with numpy (np.float32, np.int64) are taken like Python numbers."""
    import numpy as np

    from oreal import weak

    args = good()
    pool = dict(probs=args["probs"], sp_map=args["sp_map"], num_superpixels=S, budget=3,
                labeled_counts=args["labeled_counts"])
    want = oreal.strategies.query("cbal", lam=0.5, **pool)
    for lam in (np.float32(0.5), np.float64(0.5)):
        got = oreal.strategies.query("cbal", lam=lam, **pool)
        assert all(torch.equal(a, b) for a, b in zip(got, want))
    labels = torch.tensor([[[0] * 93 + [1] * 7]])
    sp = torch.zeros(1, 1, 100, dtype=torch.long)
    assert weak.weak_labels(labels, sp, 1, 2, min_share=np.float64(0.07)).tolist() == [[[True, True]]]
    with pytest.raises(TypeError, match="`lam` to be a number, but got Tensor"):
        oreal.strategies.query("cbal", lam=torch.tensor(0.5), **pool)
