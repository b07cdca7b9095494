"""oreal.labels against plain loops, and hypothesis properties."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import oreal
from oreal.labels import partial_labels, region_masks, relabel_superpixels, selection_mask
from tests.conftest import random_sp_map


def sel_of(images, sps):
    image, sp = torch.tensor(images, dtype=torch.long), torch.tensor(sps, dtype=torch.long)
    return oreal.Selection(image, sp, torch.full_like(image, -1), torch.zeros(len(images)))


# ------------------------------------------------------------------------------------------- slow references


def ref_region_masks(images, sps, sp_map, unit):
    n, h, w = sp_map.shape
    out = np.zeros((len(images), h, w), dtype=bool)
    for b, (i, s) in enumerate(zip(images, sps)):
        for y in range(h):
            for x in range(w):
                out[b, y, x] = (y * w + x == s) if unit == "pixel" else (sp_map[i, y, x] == s)
    return out


def ref_partial_labels(sp_map, sp_labels, ignore_index):
    n, h, w = sp_map.shape
    out = np.full((n, h, w), ignore_index, dtype=np.int64)
    for i in range(n):
        for y in range(h):
            for x in range(w):
                s = sp_map[i, y, x]
                if s >= 0 and sp_labels[i, s] >= 0:
                    out[i, y, x] = sp_labels[i, s]
    return out


def ref_relabel(sp_map, ignore):
    out = np.full(sp_map.shape, -1, dtype=np.int64)
    S = 0
    for i in range(sp_map.shape[0]):
        ids = sorted({int(v) for v in sp_map[i].ravel() if v >= 0 and v != ignore})
        rank = {v: r for r, v in enumerate(ids)}
        for y in range(sp_map.shape[1]):
            for x in range(sp_map.shape[2]):
                v = int(sp_map[i, y, x])
                if v in rank:
                    out[i, y, x] = rank[v]
        S = max(S, len(ids))
    return out, S


# ------------------------------------------------------------------------------------------- region_masks


@pytest.mark.parametrize("unit", ["superpixel", "pixel"])
def test_region_masks_match_reference(unit, device):
    sp = random_sp_map(3, 5, 6, 7, seed=2)
    if unit == "superpixel":
        picks = [(int(i), int(s)) for i, s in [(2, sp[2, 0, 0]), (0, sp[0, 4, 5]), (2, sp[2, 3, 1])] if s >= 0]
    else:
        picks = [(1, 0), (0, 29), (1, 13)]
    images, sps = zip(*picks)
    out = region_masks(oreal.Selection(*(t.to(device) for t in sel_of(images, sps))), sp.to(device),
                       unit=unit)
    assert out.dtype == torch.bool and out.device.type == device.type and out.shape == (len(picks), 5, 6)
    np.testing.assert_array_equal(out.cpu().numpy(), ref_region_masks(images, sps, sp.numpy(), unit))


def test_region_masks_of_a_query_cover_exactly_the_picked_superpixels():
    g = torch.Generator().manual_seed(3)
    probs = torch.randn(4, 3, 8, 8, generator=g).softmax(1)
    sp = random_sp_map(4, 8, 8, 10, seed=3)
    sel = oreal.select(probs, sp, torch.tensor([5, 0, 2]), 6, num_superpixels=10)
    masks = region_masks(sel, sp)
    for b in range(6):
        i, s = int(sel.image[b]), int(sel.superpixel[b])
        assert torch.equal(masks[b], sp[i] == s) and masks[b].any()


def test_region_masks_balent_pixel_selection():
    g = torch.Generator().manual_seed(4)
    mc = torch.randn(2, 3, 4, 5, 6, generator=g).softmax(2)
    sp = torch.zeros(2, 5, 6, dtype=torch.long)
    sel = oreal.strategies.query("balent_pixel", mc_probs=mc, sp_map=sp, num_superpixels=1, budget=4)
    masks = region_masks(sel, sp, unit="pixel")
    assert masks.flatten(1).sum(1).tolist() == [1, 1, 1, 1]
    for b in range(4):
        y, x = divmod(int(sel.superpixel[b]), 6)
        assert masks[b, y, x]


def test_region_masks_errors():
    sp = torch.tensor([[[0, 1], [1, 1]]])
    with pytest.raises(ValueError, match="no pixel in sp_map"):
        region_masks(sel_of([0], [2]), sp)
    with pytest.raises(ValueError, match="`selection.superpixel` to be non-negative, but found -1"):
        region_masks(sel_of([0], [-1]), sp)
    with pytest.raises(ValueError, match=r"image indices of sp_map in \[0, 1\), but found 1"):
        region_masks(sel_of([1], [0]), sp)
    with pytest.raises(ValueError, match=r"flat pixel indices h \* W \+ w in \[0, 4\), but found 4"):
        region_masks(sel_of([0], [4]), sp, unit="pixel")
    with pytest.raises(ValueError, match="`unit` to be one of"):
        region_masks(sel_of([0], [0]), sp, unit="pixels")
    with pytest.raises(TypeError, match="oreal.Selection"):
        region_masks((torch.tensor([0]), torch.tensor([0])), sp)
    assert region_masks(sel_of([], []), sp).shape == (0, 2, 2)


# ------------------------------------------------------------------------------------------- selection_mask


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4)), max_size=12))
def test_selection_mask_matches_loop(picks):
    images, sps = zip(*picks) if picks else ((), ())
    out = selection_mask(sel_of(images, sps), 4, 5)
    expected = np.zeros((4, 5), dtype=bool)
    for i, s in picks:
        expected[i, s] = True
    np.testing.assert_array_equal(out.numpy(), expected)


def test_selection_mask_excludes_the_picks_next_round():
    g = torch.Generator().manual_seed(5)
    probs = torch.randn(3, 4, 6, 6, generator=g).softmax(1)
    sp = random_sp_map(3, 6, 6, 8, seed=5, ignore_frac=0.0)
    first = oreal.select(probs, sp, torch.zeros(4, dtype=torch.long), 5, num_superpixels=8)
    labeled = selection_mask(first, 3, 8)
    second = oreal.select(probs, sp, torch.zeros(4, dtype=torch.long), 5, num_superpixels=8, exclude=labeled)
    assert not labeled[second.image, second.superpixel].any()
    assert int(labeled.sum()) == 5


def test_selection_mask_errors():
    with pytest.raises(ValueError, match=r"superpixel ids in \[0, 3\), but found 3"):
        selection_mask(sel_of([0], [3]), 2, 3)
    with pytest.raises(ValueError, match=r"image ids in \[0, 2\), but found 2"):
        selection_mask(sel_of([2], [0]), 2, 3)


# ------------------------------------------------------------------------------------------- partial_labels


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2 ** 16), st.sampled_from([255, 11, -100, 0]))
def test_partial_labels_matches_loop(seed, ignore_index):
    sp = random_sp_map(2, 5, 4, 6, seed=seed)
    g = torch.Generator().manual_seed(seed)
    sp_labels = torch.randint(-1, 5, (2, 6), generator=g)
    sp_before, lab_before = sp.clone(), sp_labels.clone()
    out = partial_labels(sp, sp_labels, ignore_index=ignore_index)
    assert out.dtype == torch.int64
    np.testing.assert_array_equal(out.numpy(), ref_partial_labels(sp.numpy(), sp_labels.numpy(), ignore_index))
    assert torch.equal(sp, sp_before) and torch.equal(sp_labels, lab_before)


def test_partial_labels_on_device(device):
    sp = random_sp_map(2, 4, 4, 5, seed=1).to(device, torch.int32)
    sp_labels = torch.tensor([[0, -1, 2, 1, -1], [-1, -1, 3, 0, 1]], device=device)
    out = partial_labels(sp, sp_labels)
    assert out.device.type == device.type
    np.testing.assert_array_equal(out.cpu().numpy(), ref_partial_labels(sp.cpu().numpy(), sp_labels.cpu().numpy(),
                                                                         255))


def test_partial_labels_errors():
    sp = torch.tensor([[[0, 1], [2, -1]]])
    with pytest.raises(ValueError, match=r"shape \(N, S\) with N = 1"):
        partial_labels(sp, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="found 2"):
        partial_labels(sp, torch.zeros(1, 2, dtype=torch.long))  # sp id 2 with S = 2
    with pytest.raises(ValueError, match="found -2"):
        partial_labels(sp, torch.tensor([[0, -2, 1]]))
    with pytest.raises(TypeError, match="integer dtype"):
        partial_labels(sp, torch.zeros(1, 3))


def test_examples_oracle_partial_labels_uses_the_library():
    from examples.oracle import partial_labels as example_partial_labels

    sp = random_sp_map(2, 5, 5, 6, seed=7)
    sp_labels = torch.randint(-1, 4, (2, 6), generator=torch.Generator().manual_seed(7))
    labeled = torch.rand(2, 6, generator=torch.Generator().manual_seed(8)) < 0.5
    expected = ref_partial_labels(sp.numpy(), torch.where(labeled, sp_labels, -1).numpy(), 255)
    np.testing.assert_array_equal(example_partial_labels(sp, labeled, sp_labels).numpy(), expected)


# ------------------------------------------------------------------------------------------- relabel_superpixels


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2 ** 16), st.integers(1, 40), st.sampled_from([None, 0, 3, -1]), st.booleans())
def test_relabel_matches_loop(seed, high, ignore, as_numpy):
    g = torch.Generator().manual_seed(seed)
    sp = torch.randint(-1, high, (3, 4, 5), generator=g, dtype=torch.int32)
    before = sp.clone()
    out, S = relabel_superpixels(sp.numpy() if as_numpy else sp, ignore=ignore)
    expected, S_ref = ref_relabel(sp.numpy(), ignore)
    assert out.dtype == torch.int64 and S == S_ref
    np.testing.assert_array_equal(out.numpy(), expected)
    assert torch.equal(sp, before)


def test_relabel_slic_opencv_and_gaps_feed_select():
    slic = torch.tensor([[[1, 1, 2, 2], [3, 3, 4, 4]]])       # scikit-image SLIC, start_label=1
    opencv = torch.tensor([[[0, 0, 1, 1], [2, 2, 3, 3]]])     # OpenCV: from 0
    gappy = torch.tensor([[[10, 10, 86, 86], [4, 4, 30, 30]]])
    for sp in (slic, opencv, gappy):
        new, S = relabel_superpixels(sp)
        assert S == 4 and sorted(new.unique().tolist()) == [0, 1, 2, 3]
        probs = torch.full((1, 2, 2, 4), 0.5)
        oreal.select(probs, new, torch.zeros(2, dtype=torch.long), 4, num_superpixels=S)  # every id is valid
    assert torch.equal(relabel_superpixels(opencv)[0], opencv)
    assert torch.equal(relabel_superpixels(slic)[0], slic - 1)


def test_relabel_edge_cases(device):
    assert relabel_superpixels(torch.full((2, 3, 3), -1, device=device))[1] == 0
    new, S = relabel_superpixels(torch.zeros(0, 3, 3, dtype=torch.long, device=device))
    assert S == 0 and new.shape == (0, 3, 3)
    new, S = relabel_superpixels(torch.tensor([[[5]], [[-1]], [[7]]], device=device))
    assert new.device.type == device.type and new.flatten().tolist() == [0, -1, 0] and S == 1
    with pytest.raises(ValueError, match="found -3"):
        relabel_superpixels(torch.tensor([[[-3, 0]]]))
    with pytest.raises(TypeError, match="integer dtype"):
        relabel_superpixels(torch.zeros(1, 2, 2))
    with pytest.raises(TypeError, match="integer array"):
        relabel_superpixels("map")


# ------------------------------------------------------------------------------- messages that say what to do


def test_superpixel_id_error_says_what_to_do():
    sp = torch.tensor([[[0, 86], [3, 3]]])
    probs = torch.full((1, 2, 2, 2), 0.5)
    with pytest.raises(ValueError, match=r"found 86; pass num_superpixels = largest id \+ 1 = 87, or .*"
                                         r"oreal.labels.relabel_superpixels\(sp_map\)"):
        oreal.select(probs, sp, torch.zeros(2, dtype=torch.long), 1, num_superpixels=86)
    with pytest.raises(ValueError, match=r"found 86; pass num_superpixels = largest id \+ 1 = 87"):
        oreal.stream.StreamingSelector("entropy", num_superpixels=4, budget=1).update(probs, sp_map=sp, image_ids=[0])
    with pytest.raises(ValueError, match=r"found -3; mark pixels without a superpixel with -1 .*ignore=-3"):
        oreal.candidates(torch.tensor([[[0, -3]]]), 4)
    # the advice works: relabelling makes the map acceptable, and so does ignore= for the negative id
    new, S = relabel_superpixels(sp)
    oreal.select(probs, new, torch.zeros(2, dtype=torch.long), 1, num_superpixels=S)
    assert relabel_superpixels(torch.tensor([[[0, -3]]]), ignore=-3)[0].tolist() == [[[0, -1]]]


def test_void_label_error_names_ignore_index():
    labels = torch.tensor([[[0, 11], [3, 11]]])  # CamVid: 11 classes, void = 11
    sp = torch.zeros(1, 2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match=r"found 11; if 11 marks pixels without a label \(void\), pass "
                                         r"`ignore_index=11`"):
        oreal.dominant_labels(labels, sp, 1, 11)
    with pytest.raises(ValueError, match=r"pass `ignore_index=11`"):
        oreal.miou(torch.zeros(1, 2, 2, dtype=torch.long), labels, 11)
    assert oreal.dominant_labels(labels, sp, 1, 11, ignore_index=11).tolist() == [[0]]  # the named fix works


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_half_precision_picks_differ_only_by_near_ties(dtype, tol):
    """docs/guide.md "Devices and precision": half picks differ from float32 picks, but only among near-ties."""
    g = torch.Generator().manual_seed(0)
    grid = (torch.arange(64) // 8)[:, None] * 8 + (torch.arange(64) // 8)[None, :]
    sp = grid.expand(8, 64, 64)
    counts = torch.tensor([50, 40, 30, 20, 10, 5, 3, 2, 1, 0, 0])
    for scale in (0.1, 1.0, 3.0):
        probs = (scale * torch.randn(8, 11, 64, 64, generator=g)).softmax(1)
        full = oreal.select(probs, sp, counts, 20, num_superpixels=64)
        half = oreal.select(probs.to(dtype), sp, counts, 20, num_superpixels=64, validate_args=False)
        if scale == 3.0:  # the numbers quoted in the guide
            kept = len(set(zip(full.image.tolist(), full.superpixel.tolist()))
                       & set(zip(half.image.tolist(), half.superpixel.tolist())))
            assert kept == {torch.float16: 17, torch.bfloat16: 8}[dtype]
        # the same classes take picks in the same order (the debt does not depend on probs) ...
        assert torch.equal(full.cls, half.cls)
        # ... and within a class every half pick scores, in float32, within 2 * tol of the float32 pick it
        # replaced (the one-vs-rest entropy of each is within tol of the float32 value)
        ovr = oreal.superpixel_ovr_entropy(probs, sp, 64)  # (N, S, C) float32 scores
        for b in range(20):
            c = int(full.cls[b])
            got = float(ovr[half.image[b], half.superpixel[b], c])
            want = float(ovr[full.image[b], full.superpixel[b], c])
            assert got >= want - 2 * tol
