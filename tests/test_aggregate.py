import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import oreal
from tests import reference as ref
from tests.conftest import random_sp_map

REDUCTIONS = ["max", "mean", "min", "sum"]


def score_and_map(n=2, h=6, w=7, s=9, seed=0, classes=None):
    g = torch.Generator().manual_seed(seed)
    shape = (n, h, w) if classes is None else (n, classes, h, w)
    score = torch.randn(*shape, generator=g, dtype=torch.float64)
    sp = random_sp_map(n, h, w, s, seed=seed)
    sp[:, :, :] = torch.where(sp == s - 1, -1, sp)  # superpixel s-1 is empty everywhere
    return score, sp


@pytest.mark.parametrize("reduce", REDUCTIONS)
def test_aggregate_matches_reference(reduce, device):
    score, sp = score_and_map()
    out = oreal.aggregate(score.to(device), sp.to(device), 9, reduce)
    assert out.shape == (2, 9) and out.device.type == device.type
    np.testing.assert_allclose(out.cpu().numpy(), ref.aggregate(score.numpy(), sp.numpy(), 9, reduce), atol=1e-12)
    assert (out[:, -1] == 0).all()  # the empty superpixel is 0


@pytest.mark.parametrize("reduce", REDUCTIONS)
def test_aggregate_per_class_column(reduce):
    score, sp = score_and_map(classes=3, seed=1)
    out = oreal.aggregate(score, sp, 9, reduce)
    assert out.shape == (2, 9, 3)
    for c in range(3):
        expected = ref.aggregate(score[:, c].numpy(), sp.numpy(), 9, reduce)
        np.testing.assert_allclose(out[:, :, c].numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("fn, reduce", [(oreal.superpixel_max, "max"), (oreal.superpixel_mean, "mean"),
                                        (oreal.superpixel_min, "min"), (oreal.superpixel_sum, "sum")])
def test_named_reductions_are_aggregate(fn, reduce):
    score, sp = score_and_map(seed=2)
    assert torch.equal(fn(score, sp, 9), oreal.aggregate(score, sp, 9, reduce))


def test_counts_match_reference(device):
    _, sp = score_and_map(seed=3)
    out = oreal.superpixel_counts(sp.to(device), 9)
    expected = [[int((sp[i] == k).sum()) for k in range(9)] for i in range(2)]
    assert out.dtype == torch.int64 and out.cpu().tolist() == expected


@pytest.mark.parametrize("sp_dtype", [torch.int16, torch.int32, torch.int64])
def test_integer_map_dtypes(sp_dtype):
    score, sp = score_and_map(seed=4)
    assert torch.equal(oreal.aggregate(score, sp.to(sp_dtype), 9), oreal.aggregate(score, sp, 9))


def test_dominant_labels_match_reference_with_ties_and_ignore(device):
    g = torch.Generator().manual_seed(5)
    labels = torch.randint(0, 3, (3, 6, 6), generator=g)
    labels[torch.rand(3, 6, 6, generator=g) < 0.2] = 255
    sp = random_sp_map(3, 6, 6, 10, seed=5)
    # Superpixel 9 of image 0: an exact tie between classes 2 and 1 -> 1 (lowest id).
    sp[0] = torch.where(sp[0] == 9, 0, sp[0])
    sp[0, 0, :4] = 9
    labels[0, 0, :4] = torch.tensor([2, 1, 1, 2])
    # Superpixel 8 of image 1: only ignored pixels -> -1.
    sp[1] = torch.where(sp[1] == 8, 0, sp[1])
    sp[1, 5, :2] = 8
    labels[1, 5, :2] = 255
    out = oreal.dominant_labels(labels.to(device), sp.to(device), 10, 3)
    expected = ref.dominant_labels(labels.numpy(), sp.numpy(), 10, 3)
    assert out.cpu().tolist() == expected.tolist()
    assert out[0, 9] == 1 and out[1, 8] == -1


def test_label_counts_match_reference():
    g = torch.Generator().manual_seed(6)
    labels = torch.randint(0, 4, (2, 5, 5), generator=g)
    labels[0, 0] = 255
    sp = random_sp_map(2, 5, 5, 6, seed=6)
    out = oreal.superpixel_label_counts(labels, sp, 6, 4)
    for i in range(2):
        for k in range(6):
            for c in range(4):
                assert out[i, k, c] == int(((sp[i] == k) & (labels[i] == c)).sum())


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), s=st.integers(1, 12), reduce=st.sampled_from(REDUCTIONS))
def test_permuting_superpixel_ids_permutes_the_result(seed, s, reduce):
    score, _ = score_and_map(seed=seed)
    sp = random_sp_map(2, 6, 7, s, seed=seed)
    perm = torch.randperm(s, generator=torch.Generator().manual_seed(seed))
    relabeled = torch.where(sp >= 0, perm[sp.clamp_min(0)], -1)
    out, out_perm = oreal.aggregate(score, sp, s, reduce), oreal.aggregate(score, relabeled, s, reduce)
    # New id perm[k] holds what old id k held.
    torch.testing.assert_close(out_perm[:, perm], out, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_scores_are_reduced_in_float32(dtype):
    score, sp = score_and_map(seed=7)
    half = score.to(dtype)
    out = oreal.aggregate(half, sp, 9, "mean")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, oreal.aggregate(half.float(), sp, 9, "mean"), rtol=0, atol=0)


def test_inputs_not_modified():
    score, sp = score_and_map(classes=2, seed=8)
    s0, m0 = score.clone(), sp.clone()
    for r in REDUCTIONS:
        oreal.aggregate(score, sp, 9, r)
    assert torch.equal(score, s0) and torch.equal(sp, m0)


LAYOUTS = {"contiguous": lambda x: x, "channels_last": lambda x: x.contiguous(memory_format=torch.channels_last)}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("reduce", REDUCTIONS)
def test_channels_last_gives_the_bits_of_contiguous(reduce, dtype):
    """Classes innermost in memory (one scatter of all classes, buffers in that layout, half inputs upcast there): the
    same bits as the contiguous layout, empty superpixels and pixels outside superpixels included."""
    score, sp = score_and_map(n=3, h=9, w=11, classes=5, seed=4)
    score = score.to(dtype)
    assert torch.equal(oreal.aggregate(LAYOUTS["channels_last"](score), sp, 9, reduce),
                       oreal.aggregate(score, sp, 9, reduce))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("chunk", [1, 5, 8, 12, 37])
@pytest.mark.parametrize("reduce", REDUCTIONS)
def test_chunked_class_planes_match_reference(reduce, chunk, layout, monkeypatch):
    """Chunk boundaries (uneven last chunk included) never change the result; runs of 8 and 12 pixels are split into
    4 rows (partial results), the 2-pixel remainders of the 42-pixel images are not. With the classes innermost in
    memory (channels_last) all classes of a slab are reduced by one scatter."""
    monkeypatch.setattr(sys.modules["oreal.aggregate"], "CPU_CHUNK", chunk)
    score, sp = score_and_map(classes=3, seed=9)
    out = oreal.aggregate(LAYOUTS[layout](score), sp, 9, reduce)
    for c in range(3):
        expected = ref.aggregate(score[:, c].numpy(), sp.numpy(), 9, reduce)
        np.testing.assert_allclose(out[:, :, c].numpy(), expected, atol=1e-12)


def with_threads(counts, fn):
    """``[fn() for each torch thread count]``, the caller's thread count restored."""
    saved = torch.get_num_threads()
    try:
        out = []
        for threads in counts:
            torch.set_num_threads(threads)
            out.append(fn())
        return out
    finally:
        torch.set_num_threads(saved)


@pytest.mark.parametrize("reduce", REDUCTIONS)
def test_result_bits_do_not_depend_on_the_thread_count(reduce):
    """Two images of 32768 pixels: rows of one image (sums) or a quarter of one (max, min), 65536 values per scatter,
    which torch's scatter shares among its threads: the same bits with 1 to 4 threads, in both layouts (channels_last:
    one scatter of all classes), and the reference's values."""
    score, sp = score_and_map(n=2, h=128, w=256, s=40, seed=10, classes=3)
    score = score.float()
    outs = [out for make in LAYOUTS.values()
            for out in with_threads((1, 2, 3, 4), lambda: oreal.aggregate(make(score), sp, 40, reduce))]
    assert all(torch.equal(outs[0], out) for out in outs[1:])
    for c in range(3):
        expected = ref.aggregate(score[:, c].double().numpy(), sp.numpy(), 40, reduce)
        np.testing.assert_allclose(outs[0][:, :, c].numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("chunk", [None, 64, 1000])
@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_equal_values_in_any_position_give_equal_sums(reduce, chunk, layout, monkeypatch):
    """Superpixels holding the same values in the same order get the same sum to the last bit, wherever they lie and
    in whichever image: sums add in pixel order, not in groups that depend on the position (chunks of 64 pixels cut
    the two images into runs of 32 side by side, chunks of 1000 into runs of 500)."""
    if chunk:
        monkeypatch.setattr(sys.modules["oreal.aggregate"], "CPU_CHUNK", chunk)
    pos = torch.arange(8 * 64)
    sp = torch.where(pos < 510, pos // 6, -1).reshape(1, 8, 64).expand(2, 8, 64)  # runs of 6, across rows and chunks
    # 1 + 3e-8 rounds to 1 in float32 (half an ulp is 6e-8), but 1 + (3e-8 + 3e-8) does not: any grouping shows
    values = torch.tensor([1.0, 3e-8, 3e-8, 3e-8, 3e-8, 3e-8])
    score = values[pos % 6].reshape(1, 1, 8, 64).expand(2, 3, 8, 64).contiguous()
    out = oreal.aggregate(LAYOUTS[layout](score), sp, 85, reduce)
    assert torch.equal(out, out[:1, :1].expand_as(out))
