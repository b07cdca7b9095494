"""oreal.crf: the windowed mean-field CRF against a slow dense reference, properties and bad input."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from oreal.crf import CRF_DEFAULTS, crf_refine
from tests.reference import crf_blurred as blurred_reference
from tests.reference import crf_dense as dense_reference


def _inputs(seed, n=2, c=3, h=4, w=5, float_images=False, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    probs = (torch.randn(n, c, h, w, generator=g, dtype=torch.float64) * 2).softmax(1).to(dtype)
    images = torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)
    if float_images:
        images = images.double() / 255
    return probs, images


@pytest.mark.parametrize("float_images", [False, True])
def test_window_covering_the_image_is_the_dense_crf(float_images):
    probs, images = _inputs(0, float_images=float_images)
    window = 2 * max(probs.shape[-2:]) - 1  # every pair of pixels is inside the window
    got = crf_refine(probs, images, iterations=4, window=window)
    want = dense_reference(probs, images, 4)
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), window=st.sampled_from([1, 3, 5, 9]), iterations=st.integers(0, 3),
       h=st.integers(1, 5), w=st.integers(1, 5), c=st.integers(1, 4))
def test_truncated_window_matches_the_reference_with_the_same_window(seed, window, iterations, h, w, c):
    probs, images = _inputs(seed, n=1, c=c, h=h, w=w)
    got = crf_refine(probs, images, iterations=iterations, window=window)
    want = dense_reference(probs, images, iterations, window=window)
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-12)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), window=st.sampled_from([1, 3, 5, 9]), blur=st.integers(2, 3),
       h=st.integers(1, 8), w=st.integers(1, 8))
def test_blurred_messages_match_the_reference(seed, window, blur, h, w):
    probs, images = _inputs(seed, n=1, c=3, h=h, w=w)
    got = crf_refine(probs, images, iterations=2, window=window, blur=blur)
    assert torch.allclose(got, blurred_reference(probs, images, 2, window, blur), rtol=1e-9, atol=1e-12)


def test_parameters_reach_the_kernels():
    probs, images = _inputs(3)
    kw = dict(spatial_weight=1.5, spatial_sigma=2.0, bilateral_weight=4.0, bilateral_sigma_xy=5.0,
              bilateral_sigma_color=30.0)
    got = crf_refine(probs, images, iterations=3, window=5, **kw)
    want = dense_reference(probs, images, 3, window=5, w_s=1.5, s_s=2.0, w_b=4.0, s_xy=5.0, s_c=30.0)
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-12)


def test_smooths_an_isolated_wrong_pixel_of_a_flat_region():
    probs = torch.full((1, 2, 9, 9), 0.2).index_fill_(1, torch.tensor([0]), 0.8)
    probs[0, :, 4, 4] = torch.tensor([0.4, 0.6])  # one pixel disagrees with its flat neighbourhood
    images = torch.full((1, 3, 9, 9), 100, dtype=torch.uint8)
    refined = crf_refine(probs, images)
    assert refined[0, 0, 4, 4] > 0.5 and probs[0, 0, 4, 4] < 0.5


def test_colour_edges_stop_the_smoothing():
    # Left half red, right half blue; the network is unsure at the right half. Without colour contrast the
    # confident left half pulls the right half over; the colour edge keeps it apart.
    probs = torch.empty(1, 2, 6, 6, dtype=torch.float64)
    probs[0, 0, :, :3], probs[0, 0, :, 3:] = 0.95, 0.45
    probs[0, 1] = 1 - probs[0, 0]
    flat = torch.full((1, 3, 6, 6), 128, dtype=torch.uint8)
    edge = flat.clone()
    edge[0, :, :, 3:] = torch.tensor([0, 0, 255], dtype=torch.uint8)[:, None, None]
    kw = dict(spatial_weight=0.0, bilateral_weight=2.0, window=5)
    assert crf_refine(probs, edge, **kw)[0, 0, :, 3:].max() < crf_refine(probs, flat, **kw)[0, 0, :, 3:].min()


def test_batching_does_not_change_an_image():
    probs, images = _inputs(5, n=4, c=3, h=7, w=6, dtype=torch.float32)
    for blur in (1, 2):
        whole = crf_refine(probs, images, blur=blur)
        parts = torch.cat([crf_refine(probs[i:i + 1], images[i:i + 1], blur=blur) for i in range(4)])
        assert torch.equal(whole, parts)


def test_inputs_untouched_and_dtypes():
    probs, images = _inputs(6, dtype=torch.float32)
    p0, i0 = probs.clone(), images.clone()
    out = crf_refine(probs, images)
    assert torch.equal(probs, p0) and torch.equal(images, i0) and out.dtype == torch.float32
    half = crf_refine(probs.half(), images)
    assert half.dtype == torch.float32
    assert torch.allclose(half, crf_refine(probs.half().float(), images), atol=1e-6)
    assert torch.allclose(out.sum(1), torch.ones(2, 4, 5), atol=1e-5)
    assert not crf_refine(probs, images, iterations=0).data_ptr() == probs.data_ptr()


def test_requires_grad_input_is_accepted():
    probs, images = _inputs(7, dtype=torch.float32)
    out = crf_refine(probs.requires_grad_(), images)
    assert not out.requires_grad


def test_grayscale_and_empty():
    probs, images = _inputs(8)
    gray = images[:, 0]
    assert torch.allclose(crf_refine(probs, gray, window=3), dense_reference(probs, gray, 5, window=3), atol=1e-12)
    empty = crf_refine(torch.empty(0, 3, 4, 5), torch.empty(0, 3, 4, 5, dtype=torch.uint8))
    assert empty.shape == (0, 3, 4, 5)


def test_defaults_are_documented():
    import inspect
    sig = inspect.signature(crf_refine)
    assert {k: sig.parameters[k].default for k in CRF_DEFAULTS} == CRF_DEFAULTS


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(window=4), ValueError, "odd"),
    (dict(window=0), ValueError, "window"),
    (dict(blur=0), ValueError, "blur"),
    (dict(iterations=-1), ValueError, "iterations"),
    (dict(iterations=1.5), TypeError, "iterations"),
    (dict(spatial_sigma=0.0), ValueError, "spatial_sigma"),
    (dict(bilateral_weight=-1.0), ValueError, "bilateral_weight"),
    (dict(bilateral_sigma_color=float("nan")), ValueError, "bilateral_sigma_color"),
    (dict(spatial_weight="3"), TypeError, "spatial_weight"),
])
def test_bad_options(kwargs, err, match):
    probs, images = _inputs(9)
    with pytest.raises(err, match=match):
        crf_refine(probs, images, **kwargs)


def test_bad_inputs():
    probs, images = _inputs(10)
    with pytest.raises(ValueError, match="N, H, W"):
        crf_refine(probs, images[:, :, :3])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        crf_refine(probs, images.double())  # 0-255 floats
    with pytest.raises(ValueError, match="sum to 1"):
        crf_refine(probs * 0.5, images)
    with pytest.raises(TypeError, match="bool"):
        crf_refine(probs, images > 0)
    with pytest.raises(ValueError, match="images"):
        crf_refine(probs, images[0, 0, 0])
    for wide in (images.int() * 257, images.int() - 1):  # 16-bit colours, negative values
        with pytest.raises(ValueError, match=r"integer `images` to hold colours in \[0, 255\], but got values in"):
            crf_refine(probs, wide)
    torch.testing.assert_close(crf_refine(probs, images.int()), crf_refine(probs, images))  # 0-255 in any int dtype


@pytest.mark.parametrize("name", ["sp_crf", "sp_crf_class"])
@pytest.mark.parametrize("kwargs, err, match", [
    (dict(window=4), ValueError, "odd"),
    (dict(blur=0), ValueError, "blur"),
    (dict(spatial_weight="3"), TypeError, "spatial_weight"),
])
def test_bad_crf_options_raise_when_the_stream_is_made_as_in_query(name, kwargs, err, match):
    from oreal import strategies
    from oreal.stream import StreamingSelector
    probs, images = _inputs(11)
    counts = torch.zeros(probs.shape[1], dtype=torch.long)
    sp_map = torch.zeros(probs.shape[0], *probs.shape[2:], dtype=torch.long)
    extra = dict(labeled_counts=counts) if name == "sp_crf_class" else {}
    with pytest.raises(err, match=match):
        strategies.query(name, probs=probs, images=images, sp_map=sp_map, num_superpixels=1, budget=1, **extra,
                         **kwargs)
    with pytest.raises(err, match=match):  # before any batch, like the strategies' other options
        StreamingSelector(name, num_superpixels=1, budget=1, **extra, **kwargs)
