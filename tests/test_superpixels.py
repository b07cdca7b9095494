"""oreal.superpixels: maps ready for select, the same for every input form, cached, and lazy imports."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import oreal
from oreal import superpixels as SP

pytest.importorskip("cv2")
pytest.importorskip("skimage")


def images(n=3, h=30, w=40, seed=0):
    """Smooth random colour blobs (superpixel tools behave on them as on photos)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:h, 0:w]
    out = np.zeros((n, h, w, 3))
    for i in range(n):
        for _ in range(5):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(4, 12)
            out[i][(ys - cy) ** 2 + (xs - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
    return (out + rng.normal(0, 4, out.shape)).clip(0, 255).astype(np.uint8)


def relabel_reference(maps):
    """Per image, each id becomes its rank among the image's sorted ids (a plain loop)."""
    out = np.empty(maps.shape, dtype=np.int64)
    S = 0
    for i, m in enumerate(maps):
        ids = sorted(set(m.ravel().tolist()))
        rank = {v: r for r, v in enumerate(ids)}
        for y in range(m.shape[0]):
            for x in range(m.shape[1]):
                out[i, y, x] = rank[int(m[y, x])]
        S = max(S, len(ids))
    return out, S


@pytest.mark.parametrize("method", SP.METHODS)
def test_compute_is_the_relabelled_tool_output_and_feeds_select(method):
    ims = images()
    sp, S = SP.compute(ims, method=method, count=20)
    raw = np.stack([SP.compute_one(im, method=method, count=20) for im in ims])
    expected, S_ref = relabel_reference(raw)
    assert sp.dtype == torch.int64 and sp.shape == (3, 30, 40) and S == S_ref
    np.testing.assert_array_equal(sp.numpy(), expected)
    assert 5 <= S <= 60  # about `count` superpixels
    if method == "skimage_slic":
        assert raw.min() == 1  # the tool starts at 1; the relabelled map at 0
    probs = torch.full((3, 2, 30, 40), 0.5)
    sel = oreal.select(probs, sp, torch.zeros(2, dtype=torch.long), 4, num_superpixels=S)  # ids valid as they come
    assert len(sel.image) == 4


@pytest.mark.parametrize("method", SP.METHODS)
def test_numpy_uint8_tensor_and_float_tensor_give_the_same_map(method, device):
    ims = images(n=2, seed=1)
    before = ims.copy()
    sp, S = SP.compute(ims, method=method, count=16)
    t = torch.from_numpy(ims).permute(0, 3, 1, 2).to(device)
    sp_u8, S_u8 = SP.compute(t, method=method, count=16)
    sp_f, S_f = SP.compute(t.float() / 255, method=method, count=16)
    assert sp_u8.device.type == device.type and sp_f.device.type == device.type
    assert S == S_u8 == S_f and torch.equal(sp, sp_u8.cpu()) and torch.equal(sp, sp_f.cpu())
    np.testing.assert_array_equal(ims, before)


def test_options_reach_the_tool():
    ims = images(n=1, h=48, w=64)
    smooth, _ = SP.compute(ims, method="skimage_slic", count=30, compactness=100.0)
    ragged, _ = SP.compute(ims, method="skimage_slic", count=30, compactness=0.1)
    assert not torch.equal(smooth, ragged)
    one, _ = SP.compute(ims, method="seeds", count=30, levels=1)
    four, _ = SP.compute(ims, method="seeds", count=30, levels=4)
    assert not torch.equal(one, four)


@pytest.mark.parametrize("method", ["seeds", "skimage_slic"])
def test_cache_is_used_keyed_and_atomic(tmp_path, method):
    ims = images(n=3, seed=2)
    sp, S = SP.compute(ims, method=method, count=20, cache_dir=tmp_path)
    files = sorted(tmp_path.rglob("*.npy"))
    assert len(files) == 3 and not list(tmp_path.rglob("*.tmp"))
    umask = os.umask(0)
    os.umask(umask)
    assert all((f.stat().st_mode & 0o777) == (0o666 & ~umask) for f in files)  # not 0600
    # a hit: overwrite one entry, the overwritten map comes back (relabelled)
    np.save(files[0], np.full((30, 40), 7, np.int32))
    sp2, _ = SP.compute(ims, method=method, count=20, cache_dir=tmp_path)
    assert sum(bool((m == 0).all()) for m in sp2) == 1
    # another parameter: another key, nothing reused
    SP.compute(ims, method=method, count=30, cache_dir=tmp_path)
    assert len(list(tmp_path.rglob("*.npy"))) == 6
    # unreadable or wrongly shaped entries are recomputed and overwritten
    files[0].write_bytes(b"not a npy file")
    np.save(files[1], np.zeros((3, 3), np.int32))
    files[2].write_bytes(b"")
    sp3, S3 = SP.compute(ims, method=method, count=20, cache_dir=tmp_path)
    assert S3 == S and torch.equal(sp3, sp)
    # no cache by default
    SP.compute(ims[:1], method=method, count=12)
    assert len(list(tmp_path.rglob("*.npy"))) == 6


def test_cache_dir_expands_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    SP.compute(images(n=1), method="slic", count=12, cache_dir="~/sp-cache")
    assert len(list((tmp_path / "sp-cache").rglob("*.npy"))) == 1


def test_errors():
    ims = images(n=1)
    with pytest.raises(ValueError, match="`method` to be one of"):
        SP.compute(ims, method="quickshift")
    with pytest.raises(ValueError, match=r"Unknown option\(s\) \['ruler'\] for method 'seeds'"):
        SP.compute(ims, method="seeds", ruler=3)
    with pytest.raises(ValueError, match=r"`count` to be an integer >= 1, but got 0"):
        SP.compute(ims, count=0)
    with pytest.raises(TypeError, match=r"option `double_step` to be True or False, but got str 'no'"):
        SP.compute(ims, method="seeds", double_step="no")
    for method, option, value in [("slic", "ruler", float("nan")), ("slic", "ruler", -1.0),
                                  ("skimage_slic", "compactness", 0.0), ("skimage_slic", "sigma", -0.5)]:
        with pytest.raises(ValueError, match=f"option `{option}` to be a finite number"):
            SP.compute(ims, method=method, **{option: value})
    with pytest.raises(ValueError, match=r"shape \(N, H, W, 3\) \(channels last\)"):
        SP.compute(ims.transpose(0, 3, 1, 2))
    with pytest.raises(ValueError, match=r"Tensor\[N, 3, H, W\] \(channels first\)"):
        SP.compute(torch.from_numpy(ims))
    with pytest.raises(ValueError, match=r"in \[0, 1\].*before normalisation"):
        SP.compute((torch.from_numpy(ims).permute(0, 3, 1, 2).float() - 128) / 64)
    with pytest.raises(TypeError, match="uint8 or float"):
        SP.compute(torch.zeros(1, 3, 4, 4, dtype=torch.int32))
    for bad in (float("nan"), float("inf")):
        x = torch.from_numpy(ims).permute(0, 3, 1, 2).float() / 255
        x[0, 1, 2, 3] = bad
        with pytest.raises(ValueError, match="NaN or infinite values"):
            SP.compute(x)
    with pytest.raises(ValueError, match=r"uint8 RGB numpy array of shape \(H, W, 3\)"):
        SP.compute_one(ims[0].astype(np.float32))


def test_missing_dependency_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 raises ImportError
    with pytest.raises(ImportError, match=r'pip install "oreal\[superpixels\]"'):
        SP.compute(images(n=1), method="seeds")
    monkeypatch.setitem(sys.modules, "skimage.segmentation", None)
    with pytest.raises(ImportError, match=r'scikit-image.*pip install "oreal\[superpixels\]"'):
        SP.compute(images(n=1), method="skimage_slic")


def test_import_oreal_needs_neither_opencv_nor_scikit_image():
    code = "import sys, oreal; print(oreal.superpixels.METHODS, 'cv2' in sys.modules, 'skimage' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert out.stdout.split()[-2:] == ["False", "False"]


_SMALL = """
import json, sys
import numpy as np
from oreal.superpixels import compute_one
out = []
for h, w, method, count, levels in json.loads(sys.argv[1]):
    image = np.random.default_rng(h * 100 + w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    try:
        sp = compute_one(image, method=method, count=count, **({} if levels is None else {"levels": levels}))
        out.append(["map", list(sp.shape), int(np.unique(sp).size)])
    except ValueError as e:
        out.append(["error", str(e)])
print(json.dumps(out))
"""


def test_small_images_get_a_map_or_a_clear_error():
    """OpenCV's SEEDS and SLIC crash (SIGSEGV) or never return on images too small for their grid or region: these
    cases either give a map or a ValueError. Run in a child process, so a crash fails this test instead of pytest."""
    cases = [(16, 16, "seeds", 100, None), (8, 8, "seeds", 100, None), (5, 5, "seeds", 4, None),
             (11, 32, "seeds", 1, None), (19, 50, "seeds", 2, 4), (2, 2, "seeds", 1, None),
             (32, 32, "seeds", 100, None), (24, 32, "seeds", 12, 2),
             (1, 50, "slic", 4, None), (1, 1, "slic", 100, None), (8, 32, "slic", 1, None), (33, 8, "slic", 1, None)]
    import json
    p = subprocess.run([sys.executable, "-c", _SMALL, json.dumps(cases)], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert p.returncode == 0, f"the child process ended with {p.returncode}: {p.stderr[-500:]}"
    for (h, w, method, count, levels), got in zip(cases, json.loads(p.stdout)):
        if got[0] == "map":
            assert got[1] == [h, w] and got[2] >= 1
        elif method == "seeds":
            assert f"SEEDS cannot divide a {h}x{w} image into count={count} superpixels" in got[1]
        else:
            assert min(h, w) < 2 and f"OpenCV's SLIC needs an image of at least 2x2 pixels, but got {h}x{w}" in got[1]
    kinds = {case: g[0] for case, g in zip(cases, json.loads(p.stdout))}
    # grids and regions that fit give maps (a SLIC region larger than the short side is cut to it)
    assert all(kinds[c] == "map" for c in [(32, 32, "seeds", 100, None), (24, 32, "seeds", 12, 2),
                                           (8, 32, "slic", 1, None), (33, 8, "slic", 1, None)])
    assert kinds[(16, 16, "seeds", 100, None)] == kinds[(1, 50, "slic", 4, None)] == "error"
