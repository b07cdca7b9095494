"""Tests of the example loop's label schemes: sparse pixel labels (--unit pixel), weak multi-class labels
(--labels weak) and semi-supervised training (--semi pseudo|plar). Tiny synthetic runs end to end (seconds),
checked against plain-loop references built from the ground truth."""
from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

pytest.importorskip("cv2")
import cv2  # noqa: E402

if not hasattr(cv2, "ximgproc"):
    pytest.skip("opencv-contrib (cv2.ximgproc) not installed", allow_module_level=True)

import oreal  # noqa: E402
from examples import data as D  # noqa: E402
from examples.al_loop import (LoopConfig, check_scheme, fraction_to_reach, load_state, summarise,  # noqa: E402
                              format_table)
from examples.models import build_model, features  # noqa: E402
from examples.oracle import Oracle  # noqa: E402
from examples.superpixels import compute_superpixels  # noqa: E402
from examples.train import PixelTarget, TrainConfig, WeakTarget, predict_logits, predict_mc  # noqa: E402

from .test_examples_loop import _run_cli  # noqa: E402

SIZE, LIMITS = (32, 32), (8, 4, 4)
TINY = ["--size", "32x32", "--limits", "8,4,4", "--sp-count", "16", "--rounds", "2", "--seeds", "0",
        "--max-epochs", "2", "--patience", "1", "--width", "4", "--threads", "1", "--no-progress", "--no-plots"]


def _pool():
    ds = D.load_synthetic(size=SIZE, counts=LIMITS, seed=0)
    return ds, torch.from_numpy(ds.train.labels)


def _tiny(out, tmp_path, **kw):
    from examples.al_loop import Experiment

    cfg = LoopConfig(size=SIZE, limits=LIMITS, sp_count=16, width=4, threads=1, seeds=(0,),
                     train=asdict(TrainConfig(max_epochs=2, patience=1)), **kw)
    return Experiment(cfg, out, progress=False, cache_dir=tmp_path / "cache")


# ---------------------------------------------------------------------------------------------- pixel unit
def test_pixel_oracle_answers_each_pixels_class():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (3, 5, 6), generator=g)
    labels[0, 1, 2] = labels[2, 4, 5] = 255
    ident = torch.arange(30).reshape(1, 5, 6).expand(3, 5, 6)
    o = Oracle(labels, ident, 30, 4, pixels=True)
    for n in range(3):
        for h in range(5):
            for w in range(6):
                want = -1 if labels[n, h, w] == 255 else int(labels[n, h, w])
                assert int(o.dominant[n, h * 6 + w]) == want
    assert torch.equal(o.dominant, Oracle(labels, ident, 30, 4).dominant)  # the superpixel path agrees
    with pytest.raises(ValueError, match="identity map"):
        Oracle(labels, ident.flip(-1), 30, 4, pixels=True)


def _entropy_top(probs, labeled, budget):
    """Plain reference: per-pixel entropy in float64, top-B of the unlabeled pixels, ties to the lower index."""
    p = probs.double()
    score = -(p * p.clamp_min(1e-300).log()).sum(1).reshape(-1)
    order = sorted(range(score.numel()), key=lambda i: (-float(score[i]), i))
    free = [i for i in order if not bool(labeled.reshape(-1)[i])]
    return free[:budget]


def test_tiny_pixel_loop_end_to_end(tmp_path):
    budget = 40
    exp = _tiny(tmp_path / "run", tmp_path, unit="pixel", budget=budget, rounds=2,
                strategies=("balent_pixel", "bald:max", "entropy:max", "random"))
    res = exp.run()
    _, gt = _pool()
    H, W = SIZE
    assert exp.S == H * W and res["unit"] == "pixel" and res["pool_pixels"] == gt.numel()
    for spec, r in ((r["strategy"], r) for r in res["runs"].values()):
        assert [h["clicks"] for h in r["history"]] == [budget, 2 * budget, 3 * budget]  # one click per pixel
        px = {tuple(x) for x in r["labeled"]}
        assert len(px) == 3 * budget and all(0 <= p < H * W for _, p in px)
        # the training labels are the true classes of the picked pixels and nothing else
        st = load_state(exp.state_dir / f"{spec.replace(':', '-')}__seed0.pt", exp.fp,
                        exp.identity("run", 0, spec))
        y = exp.labels_of(st)
        want = torch.full_like(gt, 255)
        for n, p in px:
            want[n, p // W, p % W] = gt[n, p // W, p % W]
        assert torch.equal(y, want)
        assert "pool_fraction_95" in res["summary"][spec]
    # round 1 of entropy at pixel level: the plain top-B of unlabeled pixels by entropy
    init = load_state(exp.state_dir / "init__seed0.pt", exp.fp, exp.identity("init", 0))
    model = exp.new_model(0)
    model.load_state_dict(init["model"])
    probs = predict_logits(model, exp.pool).softmax(1)
    run = res["runs"]["entropy-max__seed0"]
    got = [n * H * W + p for n, p in zip(*run["picks"][1])]
    assert sorted(got) == sorted(_entropy_top(probs, init["labeled"], budget))
    # round 1 of balent_pixel: the library's pixel strategy with the pixel-grid exclusion mask
    mc = predict_mc(model, exp.pool, exp.cfg.mc_samples, 16, oreal_seed(0, 1))
    sel = oreal.strategies.query("balent_pixel", mc_probs=mc, sp_map=exp.sp_map, num_superpixels=exp.S,
                                 budget=budget, exclude=init["labeled"].reshape(exp.sp_map.shape))
    assert res["runs"]["balent_pixel__seed0"]["picks"][1] == [sel.image.tolist(), sel.superpixel.tolist()]
    assert "95 % of full supervision" in format_table(res)


def oreal_seed(seed, r):
    from examples.al_loop import _sub_seed

    return _sub_seed("mc", seed, r)


def test_fraction_to_reach_interpolates_the_first_crossing():
    assert fraction_to_reach([10, 20, 30], [0.2, 0.4, 0.8], 0.6, 100) == pytest.approx(0.25)  # 20 + 10 * 0.5
    assert fraction_to_reach([10, 20], [0.7, 0.9], 0.6, 100) == pytest.approx(0.1)
    assert fraction_to_reach([10, 20, 30], [0.2, 0.7, 0.5], 0.6, 100) == pytest.approx((10 + 10 * 0.8) / 100)
    assert fraction_to_reach([10, 20], [0.2, 0.3], 0.6, 100) is None


# ---------------------------------------------------------------------------------------------- weak labels
def _classes_present(gt, sp, n, s):
    vals = {int(v) for v in gt[n][sp[n] == s].tolist()} - {255}
    return vals


@pytest.mark.parametrize("stage2", ["last", "every"])
def test_tiny_weak_loop_end_to_end(tmp_path, stage2):
    out = tmp_path / "run"
    p = _run_cli(TINY + ["--budget", "6", "--strategies", "random,oreal:max,oreal:mean,pixelbal:max",
                         "--labels", "weak", "--weak-stage2", stage2, "--out", str(out)], tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["labels"] == "weak"
    ds, gt = _pool()
    sp, S = compute_superpixels(ds.train.images, method="seeds", num_superpixels=16, cache_dir=tmp_path / "cache")
    sp = torch.from_numpy(sp)
    for r in res["runs"].values():
        clicks, counts = 0, np.zeros(len(res["classes"]), dtype=int)
        for h, (imgs, sps) in zip(r["history"], r["picks"]):
            for n, s in zip(imgs, sps):  # one click per class present (plain loop over the ground truth) ...
                present = _classes_present(gt, sp, n, s)
                clicks += len(present) or 1  # ... and one for a superpixel of ignored pixels
                counts[sorted(present)] += 1
            assert h["clicks"] == clicks
            assert h["class_counts"] == counts.tolist()  # presence counts: once per class present
            has2 = "stage2_test_miou" in h
            assert has2 == (stage2 == "every" or h["round"] == 2)
            if has2:
                assert 0.0 <= h["stage2_test_miou"] <= 1.0 and 0.0 <= h["stage2_pseudo_acc"] <= 1.0
    e = res["summary"]["oreal:max"]
    assert ("aualc" in e["stage2"]) == (stage2 == "every")
    from examples.report import report

    md = report(res)
    assert "| oreal | " in md and "stage 2 mean" in md and "Weak labels, stage 2" in md


def test_a_superpixel_of_ignored_pixels_costs_one_weak_click():
    from examples.al_loop import weak_clicks

    rows = torch.tensor([[True, False, True], [False, False, False], [False, True, False], [False, False, False]])
    assert weak_clicks(rows) == 2 + 1 + 2  # classes named, plus one per superpixel that names none
    assert weak_clicks(rows[:0]) == 0


def test_weak_target_is_the_weak_loss_of_the_flipped_batch():
    g = torch.Generator().manual_seed(1)
    sp = torch.randint(0, 5, (3, 6, 7), generator=g)
    weak = torch.rand(3, 5, 4, generator=g) < 0.4
    model = torch.nn.Conv2d(3, 4, 1).double()
    x = torch.rand(2, 3, 6, 7, generator=g, dtype=torch.float64)
    pick, flip = torch.tensor([2, 0]), torch.tensor([True, False])
    got = WeakTarget(sp, weak, 5).loss(model, x, pick, flip)
    sp_b = torch.stack([sp[2].flip(-1), sp[0]])
    want = oreal.weak.weak_loss(model(x), sp_b, weak[pick], 5).total
    assert torch.allclose(got, want, rtol=0, atol=1e-12)
    assert WeakTarget(sp, torch.zeros_like(weak), 5).loss(model, x, pick, flip) is None


def test_pixel_target_adds_weighted_pseudo_labels_on_unlabeled_pixels_only():
    g = torch.Generator().manual_seed(2)
    labels = torch.full((2, 3, 4), 255)
    labels[0, 0, 1], labels[1, 2, 3] = 1, 0
    pseudo = torch.randint(0, 3, (2, 3, 4), generator=g)
    pseudo[0, 1, 1] = 255
    model = torch.nn.Conv2d(3, 3, 1).double()
    x = torch.rand(2, 3, 3, 4, generator=g, dtype=torch.float64)
    got = PixelTarget(labels, pseudo, 0.25).loss(model, x, torch.tensor([0, 1]), None)
    logp = model(x).log_softmax(1).detach()
    lab, pse = [], []
    for n in range(2):
        for h in range(3):
            for w in range(4):
                if labels[n, h, w] != 255:
                    lab.append(-float(logp[n, labels[n, h, w], h, w]))
                elif pseudo[n, h, w] != 255:
                    pse.append(-float(logp[n, pseudo[n, h, w], h, w]))
    assert float(got.detach()) == pytest.approx(np.mean(lab) + 0.25 * np.mean(pse), abs=1e-12)
    assert PixelTarget(torch.full_like(labels, 255)).loss(model, x, torch.tensor([0]), None) is None


@pytest.mark.parametrize("name", ["small", "lite0_fpn"])
def test_features_are_what_the_classifier_reads(name):
    torch.manual_seed(0)
    model = build_model(name, 5)
    x = torch.rand(2, 3, 32, 40)
    logits, f = features(model, x)
    with torch.no_grad():
        assert torch.allclose(logits, model(x), atol=1e-6)
        head = model.net.cls(f)
        if head.shape[-2:] != x.shape[-2:]:
            head = torch.nn.functional.interpolate(head, size=x.shape[-2:], mode="bilinear", align_corners=False)
        assert torch.allclose(head, logits, atol=1e-5)


def test_vit_features_are_laid_out_on_its_token_grid():
    model = build_model("vit", 4)
    _, f = features(model, torch.rand(1, 3, 32, 48))
    assert f.shape == (1, 96, 4, 6)


# ---------------------------------------------------------------------------------------------- semi-supervised
@pytest.mark.parametrize("semi", ["pseudo", "plar"])
def test_tiny_semi_loop_end_to_end(tmp_path, semi):
    out = tmp_path / "run"
    p = _run_cli(TINY + ["--budget", "6", "--strategies", "random,entropy:max,oreal:max", "--semi", semi,
                         "--semi-weight", "0.5", "--out", str(out)], tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr
    res = json.loads((out / "results.json").read_text())
    for r in res["runs"].values():
        assert [h["clicks"] for h in r["history"]] == [6, 12, 18]
        assert "pseudo_acc_before" not in r["history"][0]  # round 0 has no model to pseudo-label with
        for h in r["history"][1:]:
            assert 0.0 <= h["pseudo_acc_before"] <= 1.0
            assert ("pseudo_acc_after" in h) == (semi == "plar")
            if semi == "plar":
                assert 0.0 <= h["pseudo_acc_after"] <= 1.0 and 0.0 <= h["pseudo_coverage"] <= 1.0
    assert "Pseudo labels of the unlabeled pool pixels" in p.stdout


def test_pseudo_label_accuracy_against_a_plain_count(tmp_path):
    exp = _tiny(tmp_path / "run", tmp_path, semi="plar", budget=6, rounds=1, strategies=("random",))
    g = torch.Generator().manual_seed(3)
    N, (H, W) = len(exp.pool), SIZE
    probs = torch.randn(N, exp.C, H, W, generator=g).softmax(1)
    feats = torch.randn(N, 8, H, W, generator=g)
    st = exp._new_state("run", 0)
    st["labeled"][:, :3] = True
    st["sp_labels"] = exp.oracle.dominant.clone()
    y = exp.labels_of(st)
    gt = exp.pool_labels
    pseudo, stats = exp.pseudo_labels(st, probs, feats)
    ref = oreal.semi.refine(feats, probs, y)
    assert torch.equal(pseudo, ref.labels)
    ok = n = ok2 = n2 = 0
    pred = probs.argmax(1)
    for i, h, w in np.ndindex(N, H, W):
        if y[i, h, w] == 255 and gt[i, h, w] != 255:
            n += 1
            ok += int(pred[i, h, w] == gt[i, h, w])
            if not ref.undecided[i, h, w]:
                n2 += 1
                ok2 += int(ref.labels[i, h, w] == gt[i, h, w])
    assert stats["pseudo_acc_before"] == pytest.approx(ok / n)
    assert stats["pseudo_acc_after"] == pytest.approx(ok2 / n2)
    assert stats["pseudo_coverage"] == pytest.approx(n2 / n)


# ---------------------------------------------------------------------------------------------- configuration
@pytest.mark.parametrize("kw, msg", [
    (dict(unit="pixel", labels="weak"), "a pixel has one class"),
    (dict(labels="weak", semi="plar"), "not available with --labels weak"),
    (dict(strategies=("balent_pixel",)), "pass --unit pixel"),
    (dict(unit="pixel", semi="plar", strategies=("balent_pixel",)), "undecided regions"),
    (dict(labels="weak", weak_min_share=1.5), "--weak-min-share"),
    (dict(semi="pseudo", semi_weight=-1.0), "--semi-weight"),
    (dict(weak_stage2="every"), "--weak-stage2 only applies with --labels weak"),
    (dict(semi_weight=1.0), "--semi-weight only applies with --semi pseudo or plar"),
    (dict(weak_min_share=0.2, semi_weight=1.0),  # each option with its own scheme
     "--weak-min-share only applies with --labels weak; --semi-weight only applies with --semi pseudo or plar"),
])
def test_incompatible_schemes_are_clear_errors(kw, msg):
    with pytest.raises(ValueError, match=msg):
        check_scheme(LoopConfig(**kw))


def test_cli_refuses_a_pixel_strategy_on_superpixels(tmp_path):
    p = _run_cli(TINY + ["--strategies", "balent_pixel", "--out", str(tmp_path / "x")], tmp_path, timeout=120)
    assert p.returncode == 2 and "--unit pixel" in p.stderr


def test_default_schemes_leave_the_fingerprint_as_before():
    fp = LoopConfig().fingerprint()
    assert not {"unit", "labels", "semi", "weak_min_share", "weak_stage2", "semi_weight"} & set(fp)
    assert LoopConfig(unit="pixel").fingerprint()["unit"] == "pixel"


def test_report_compares_at_equal_clicks(tmp_path, capsys):
    from examples.report import at_clicks, main

    def res(clicks, miou):
        r = {"runs": {"a": {"strategy": "random", "seed": 0, "history": [
            {"round": i, "clicks": c, "test_miou": m, "class_counts": [1, 2]}
            for i, (c, m) in enumerate(zip(clicks, miou))]}},
            "seeds": [0]}
        summarise(r)
        return r

    rows = at_clicks(res([10, 20, 40], [0.1, 0.2, 0.3]), res([0, 20, 30], [0.0, 0.4, 0.6]))
    assert rows == [("random", [(10, 0.1, pytest.approx(0.2)), (20, 0.2, pytest.approx(0.4)), (40, 0.3, None)])]
    paths = []
    for i, r in enumerate([res([10, 20, 40], [0.1, 0.2, 0.3]), res([0, 20, 30], [0.0, 0.4, 0.6]),
                           dict(res([10, 40], [0.5, 0.8]), semi="plar")]):
        paths.append(tmp_path / f"r{i}.json")
        paths[-1].write_text(json.dumps(r))
    assert main([str(paths[0]), "--compare", str(paths[1]), "--compare", str(paths[2])]) == 0
    out = capsys.readouterr().out
    assert "- random: 10 clicks 10.0 / 20.0, 20 clicks 20.0 / 40.0, 40 clicks 30.0 / -" in out
    assert "- random: 10 clicks 10.0 / 50.0, 20 clicks 20.0 / 60.0, 40 clicks 30.0 / 80.0" in out
    assert "(superpixels, dominant labels, --semi plar)" in out


def test_report_refuses_files_that_are_not_results(tmp_path, capsys):
    from examples.report import main

    for name, text, why in [("list.json", "[1, 2]", "but got list"), ("other.json", '{"runs": {}}', "without one"),
                            ("bad.json", "{", "Expecting")]:
        (tmp_path / name).write_text(text)
        assert main([str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert f"error: cannot read a results file from {tmp_path / name}" in err and why in err
    assert main([str(tmp_path / "missing.json")]) == 2
