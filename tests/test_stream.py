"""oreal.stream: the streamed selection equals the in-memory one (oreal.select / oreal.strategies.query) for
any batching and order, on one process and merged over 2 gloo processes; every bad input raises clearly."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import oreal
from oreal import strategies
from oreal.stream import StreamingSelector, class_mass, keyed_uniform, streamable
from oreal.strategies import MASS_BITS

# Bit-exact against the in-memory strategy for every batching. Not here: random (a keyed draw, not the generator's).
EXACT = [name for name in streamable() if name != "random"]


def make_pool(n, c, h, w, s, *, seed, k=3, dtype=torch.float32, sharp=2.0, empty_frac=0.15):
    g = torch.Generator().manual_seed(seed)
    logits = sharp * torch.randn(n, c, h, w, generator=g)
    # Coarse logits make exact ties between superpixels common, so tie-breaking is exercised.
    if seed % 2:
        logits = torch.round(logits)
    sp = torch.randint(0, s, (n, h, w), generator=g)
    sp = torch.where(torch.rand(n, h, w, generator=g) < empty_frac, -1, sp)
    return {
        "logits": logits.to(dtype),
        "probs": logits.softmax(1).to(dtype),
        "mc_probs": (sharp * torch.randn(n, k, c, h, w, generator=g)).softmax(2).to(dtype),
        "images": torch.rand(n, 3, h, w, generator=g),
        "sp_map": sp,
        "exclude": torch.rand(n, s, generator=g) < 0.2,
        "pixel_exclude": torch.rand(n, h, w, generator=g) < 0.1,
        "counts": torch.randint(0, 6, (c,), generator=g),
    }


def in_memory(name, pool, s, budget, allow_partial=False, **kw):
    exclude = pool["pixel_exclude"] if name == "balent_pixel" else pool["exclude"]
    return strategies.query(name, probs=pool["probs"], logits=pool["logits"], mc_probs=pool["mc_probs"],
                            images=pool["images"], sp_map=pool["sp_map"], num_superpixels=s, budget=budget,
                            labeled_counts=pool["counts"], exclude=exclude, allow_partial=allow_partial, **kw)


def streamed(name, pool, s, budget, batches, allow_partial=False, **kw):
    sel = StreamingSelector(name, num_superpixels=s, budget=budget, labeled_counts=pool["counts"],
                            seed=7 if name == "random" else None, **kw)
    exclude = pool["pixel_exclude"] if name == "balent_pixel" else pool["exclude"]
    for p in range(sel.num_passes):
        if p:
            sel.next_pass()
            batches = batches[::-1]  # the second pass may come in another order
        for ids in batches:
            sel.update(probs=pool["probs"][ids], logits=pool["logits"][ids], mc_probs=pool["mc_probs"][ids],
                       images=pool["images"][ids], sp_map=pool["sp_map"][ids], exclude=exclude[ids],
                       image_ids=ids)
    return sel.compute(allow_partial=allow_partial)


def assert_same(a, b):
    for field, x, y in zip(oreal.Selection._fields, a, b):
        assert x.dtype == y.dtype, (field, x.dtype, y.dtype)
        assert torch.equal(x, y), (field, x, y)


def outcome(fn):
    try:
        return fn()
    except ValueError as err:
        return str(err)


@st.composite
def pools(draw):
    n = draw(st.integers(1, 6))
    c = draw(st.integers(2, 5))
    h, w = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    s = draw(st.integers(1, 5))
    budget = draw(st.integers(0, n * s + 2))
    seed = draw(st.integers(0, 2 ** 16))
    order = draw(st.permutations(range(n)))
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=n - 1))) if n > 1 else []
    bounds = [0] + cuts + [n]
    batches = [torch.tensor(order[a:b], dtype=torch.long) for a, b in zip(bounds[:-1], bounds[1:])]
    return n, c, h, w, s, budget, seed, batches


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pools(), st.sampled_from(EXACT), st.booleans(), st.sampled_from([None, "max", "mean"]))
def test_stream_equals_in_memory(case, name, allow_partial, aggregation):
    """Random pools split into random batches in random order: the same picks, classes, scores, order (or the
    same error) as the whole pool at once."""
    n, c, h, w, s, budget, seed, batches = case
    pool = make_pool(n, c, h, w, s, seed=seed)
    if name == "balent_pixel" or (name == "oreal_mean" and aggregation == "max"):
        aggregation = None
    kw = {} if aggregation is None else {"aggregation": aggregation}
    expected = outcome(lambda: in_memory(name, pool, s, budget, allow_partial, **kw))
    got = outcome(lambda: streamed(name, pool, s, budget, batches, allow_partial, **kw))
    if isinstance(expected, str):
        assert got == expected
    else:
        assert_same(got, expected)


@settings(max_examples=15, deadline=None)
@given(pools(), st.booleans())
def test_oreal_stream_equals_select(case, half):
    """OREAL against oreal.select itself, float16 inputs included."""
    n, c, h, w, s, budget, seed, batches = case
    pool = make_pool(n, c, h, w, s, seed=seed, dtype=torch.float16 if half else torch.float32)
    expected = outcome(lambda: oreal.select(pool["probs"], pool["sp_map"], pool["counts"], budget, num_superpixels=s,
                                            exclude=pool["exclude"]))
    got = outcome(lambda: streamed("oreal", pool, s, budget, batches))
    if isinstance(expected, str):
        assert got == expected
    else:
        assert_same(got, expected)


def test_stream_large_budget_and_big_batches():
    """Budgets above and below the batch size, pruning and lazy merging all exercised on a bigger pool."""
    pool = make_pool(40, 6, 12, 12, 20, seed=3)
    order = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    for budget in (1, 15, 130, 600):
        batches = list(order.split(7))
        for name in ("oreal", "entropy", "revisiting_sp"):
            assert_same(streamed(name, pool, 20, budget, batches), in_memory(name, pool, 20, budget))


def test_chunked_reductions_match():
    """Images big enough that the in-memory reduction works in pixel chunks that a small batch does not use."""
    pool = make_pool(24, 4, 48, 48, 20, seed=12, k=2)
    batches = list(torch.randperm(24, generator=torch.Generator().manual_seed(2)).split(5))
    for name, agg in (("oreal_mean", None), ("cbal", "mean"), ("entropy", "mean"), ("revisiting_sp", "mean"),
                      ("oreal", "max"), ("bald", "mean")):
        kw = {} if agg is None else {"aggregation": agg}
        assert_same(streamed(name, pool, 20, 30, batches, **kw), in_memory(name, pool, 20, 30, **kw))


def test_class_mask_and_options():
    pool = make_pool(8, 4, 6, 6, 5, seed=11)
    batches = list(torch.arange(8).split(3))
    mask = torch.tensor([True, False, True, True])
    for name, kw in (("oreal", {"class_mask": mask}), ("cbal", {"lam": 0.5, "class_mask": mask})):
        assert_same(streamed(name, pool, 5, 9, batches, **kw), in_memory(name, pool, 5, 9, **kw))
    for name, kw in (("edge_entropy", {"alpha": 3.0}), ("edge_entropy_class", {"class_mask": mask})):
        assert_same(streamed(name, pool, 5, 9, batches, **kw), in_memory(name, pool, 5, 9, **kw))


def test_image_ids_define_ties_not_batch_order():
    """All-equal scores: picks follow the global index g = image_id * S + s, whatever the batch order."""
    probs = torch.full((4, 3, 2, 2), 1 / 3)
    sp = torch.zeros(4, 2, 2, dtype=torch.long)
    sel = StreamingSelector("oreal", num_superpixels=1, budget=3, labeled_counts=torch.zeros(3, dtype=torch.long))
    for ids in ([30, 10], [20], [40]):  # ids need not be contiguous
        sel.update(probs=probs[: len(ids)], sp_map=sp[: len(ids)], image_ids=ids)
    out = sel.compute()
    assert out.image.tolist() == [10, 20, 30] and out.cls.tolist() == [0, 1, 2]


def test_pixelbal_matches_query_and_is_batch_invariant():
    """pixelbal's pool mean is an exact fixed-point sum in stream and query alike: the same for every batching."""
    pool = make_pool(12, 5, 9, 9, 7, seed=5, sharp=1.0)
    order = torch.randperm(12, generator=torch.Generator().manual_seed(1))
    ref = in_memory("pixelbal", pool, 7, 10)
    one = streamed("pixelbal", pool, 7, 10, [torch.arange(12)])
    for batches in (list(order.split(5)), list(order.split(1))):
        assert_same(streamed("pixelbal", pool, 7, 10, batches), one)
    assert_same(one, ref)
    # class_mass holds the softmax mass as exact integer limbs, hi * 2^-24 + lo * 2^-48
    q = torch.softmax(pool["logits"].float() / 0.1, 1).double()
    valid = (pool["sp_map"] >= 0).unsqueeze(1)
    float_mass = torch.where(valid, q, 0).sum((0, 2, 3))
    mass = class_mass(pool["logits"], pool["sp_map"], 0.1)
    assert mass.dtype == torch.long and mass.shape == (2, 5)
    limbs = mass[0].double() / 2 ** MASS_BITS + mass[1].double() / 2 ** (2 * MASS_BITS)
    torch.testing.assert_close(limbs, float_mass, rtol=0, atol=4e-15 * valid.sum().item())


@given(st.sampled_from([torch.float16, torch.float32, torch.float64]), st.floats(0.01, 10.0),
       st.integers(0, 2 ** 31 - 1), st.booleans())
@settings(max_examples=40, deadline=None)
def test_class_mass_limbs_are_the_float64_integers(dtype, temperature, seed, holes):
    """The in-place limbs against the obvious float64 computation of every pixel's ``hi = floor(q 2^24)`` and
    ``lo = round((q 2^24 - hi) 2^24)``, summed as Python integers; tiny, saturated and exactly 0 masses included;
    with and without pixels outside every superpixel (``holes``)."""
    g = torch.Generator().manual_seed(seed)
    logits = (20 * torch.randn(3, 4, 5, 6, generator=g)).to(dtype)
    sp_map = torch.randint(-1 if holes else 0, 3, (3, 5, 6), generator=g)
    q = torch.softmax(logits.to(torch.float32 if dtype == torch.float16 else dtype) / temperature, 1).double()
    scaled = q * 2.0 ** MASS_BITS
    hi, valid = scaled.floor(), (sp_map >= 0).unsqueeze(1)
    lo = torch.round((scaled - hi) * 2.0 ** MASS_BITS)
    want = [[int(sum(int(v) for v in torch.where(valid, part, 0)[:, k].reshape(-1).tolist())) for k in range(4)]
            for part in (hi, lo)]
    assert class_mass(logits, sp_map, temperature).tolist() == want


@pytest.mark.parametrize("shape", [(0, 3, 2, 2), (2, 0, 2, 2), (2, 3, 0, 2)])
def test_class_mass_of_an_empty_pool_is_zero(shape):
    """No images, no classes or no pixels: zero limbs, one column per class (what adds to other batches' mass)."""
    logits = torch.zeros(shape)
    sp_map = torch.zeros(shape[0], *shape[2:], dtype=torch.long)
    assert class_mass(logits, sp_map, 1.0).tolist() == [[0] * shape[1]] * 2


def test_random_is_keyed_and_batch_invariant():
    pool = make_pool(10, 3, 4, 4, 6, seed=2)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(3))
    a = streamed("random", pool, 6, 12, [torch.arange(10)])
    b = streamed("random", pool, 6, 12, list(order.split(3)))
    assert_same(a, b)
    cand = oreal.candidates(pool["sp_map"], 6, pool["exclude"]).reshape(-1)
    keys = keyed_uniform(torch.arange(60), 7)
    idx, val = oreal.topk(keys, 12, candidates=cand)
    assert torch.equal(a.image * 6 + a.superpixel, idx) and torch.equal(a.score, val)
    assert a.score.dtype == torch.float64 and bool(((a.score >= 0) & (a.score < 1)).all())
    # keys are roughly uniform
    k = keyed_uniform(torch.arange(20000), 1)
    assert abs(float(k.mean()) - 0.5) < 0.01 and not torch.equal(k, keyed_uniform(torch.arange(20000), 2))


def test_state_dict_resumes():
    pool = make_pool(9, 4, 5, 5, 6, seed=4)
    batches = list(torch.arange(9).split(2))
    ref = in_memory("oreal", pool, 6, 8)
    a = StreamingSelector("oreal", num_superpixels=6, budget=8, labeled_counts=pool["counts"])
    for ids in batches[:3]:
        a.update(probs=pool["probs"][ids], sp_map=pool["sp_map"][ids], image_ids=ids, exclude=pool["exclude"][ids])
    b = StreamingSelector("oreal", num_superpixels=6, budget=8, labeled_counts=pool["counts"])
    b.load_state_dict(a.state_dict())
    for ids in batches[3:]:
        b.update(probs=pool["probs"][ids], sp_map=pool["sp_map"][ids], image_ids=ids, exclude=pool["exclude"][ids])
    assert_same(b.compute(), ref)
    with pytest.raises(ValueError, match="same strategy"):
        StreamingSelector("oreal", num_superpixels=6, budget=9, labeled_counts=pool["counts"]).load_state_dict(
            a.state_dict())
    with pytest.raises(ValueError, match="already given"):  # ids seen before the checkpoint are remembered
        b.update(probs=pool["probs"][:1], sp_map=pool["sp_map"][:1], image_ids=[0])


def test_memory_is_bounded_by_budget():
    """The kept candidates never exceed P * 2 * max(B, 1024) slots, however many batches come."""
    pool = make_pool(4, 5, 8, 8, 16, seed=9)
    sel = StreamingSelector("oreal", num_superpixels=16, budget=3, labeled_counts=pool["counts"])
    columns = int(sel.columns.numel())
    for start in range(0, 400, 4):
        ids = torch.arange(start, start + 4)
        sel.update(probs=pool["probs"], sp_map=pool["sp_map"], image_ids=ids)
        kept = sum(p[0].numel() for p in sel.pending) + (sel.buffer[0].numel() if sel.buffer is not None else 0)
        assert kept <= columns * 2 * 1024
    sel._flush(force=True)
    assert sel.buffer[0].shape == (columns, 3)
    assert len(sel.seen.starts) == 1  # 400 consecutive ids are one run


def _probs_batch(n=2, c=3, h=4, w=4, s=4):
    pool = make_pool(n, c, h, w, s, seed=0)
    return pool["probs"], pool["sp_map"], pool["counts"]


BAD_INIT = [
    (dict(strategy="nope"), ValueError, "strategy"),
    (dict(strategy="cbal_milp"), ValueError, "cannot be streamed"),
    (dict(budget=-1), ValueError, "budget"),
    (dict(budget=1.5), TypeError, "budget"),
    (dict(num_superpixels=0), ValueError, "num_superpixels"),
    (dict(labeled_counts=None), ValueError, "labeled_counts"),
    (dict(labeled_counts=torch.tensor([1.0, 2.0, 3.0])), TypeError, "labeled_counts"),
    (dict(labeled_counts=torch.tensor([1, -2, 3])), ValueError, "non-negative"),
    (dict(aggregation="median"), ValueError, "aggregation"),
    (dict(strategy="oreal_mean", aggregation="max"), ValueError, "aggregation"),
    (dict(strategy="random"), ValueError, "seed"),
    (dict(strategy="random", seed=1, aggregation="max"), ValueError, "no aggregation"),
    (dict(lam=1.0), ValueError, "Unknown option"),
    (dict(class_mask=torch.tensor([True, False])), ValueError, "class_mask"),
    (dict(distributed=True), RuntimeError, "init_process_group"),
]


@pytest.mark.parametrize("kwargs, err, match", BAD_INIT)
def test_bad_constructor_arguments(kwargs, err, match):
    args = dict(strategy="oreal", num_superpixels=4, budget=2, labeled_counts=torch.tensor([1, 2, 3]))
    args.update(kwargs)
    with pytest.raises(err, match=match):
        StreamingSelector(args.pop("strategy"), **args)


def _bad_updates():
    probs, sp, _ = _probs_batch()
    return [
        ("missing probs", dict(sp_map=sp, image_ids=[0, 1]), ValueError, "needs `probs`"),
        ("ids length", dict(probs=probs, sp_map=sp, image_ids=[0]), ValueError, r"image_ids.*\(2,\)"),
        ("ids negative", dict(probs=probs, sp_map=sp, image_ids=[-1, 0]), ValueError, "non-negative"),
        ("ids float", dict(probs=probs, sp_map=sp, image_ids=torch.tensor([0.0, 1.0])), TypeError, "integer"),
        ("ids type", dict(probs=probs, sp_map=sp, image_ids=object()), TypeError, "image_ids"),
        ("ids too big", dict(probs=probs, sp_map=sp, image_ids=[0, 2 ** 62]), ValueError, "fit in int64"),
        ("ids repeated", dict(probs=probs, sp_map=sp, image_ids=[3, 3]), ValueError, "more than once"),
        ("probs shape", dict(probs=probs[:, :, :3], sp_map=sp, image_ids=[0, 1]), ValueError, "N, H, W"),
        ("probs int", dict(probs=sp.unsqueeze(1).repeat(1, 3, 1, 1), sp_map=sp, image_ids=[0, 1]), TypeError,
         "floating"),
        ("classes", dict(probs=probs[:, :2].softmax(1), sp_map=sp, image_ids=[0, 1]), ValueError, "3 classes"),
        ("not probs", dict(probs=probs * 3, sp_map=sp, image_ids=[0, 1]), ValueError, "probabilities"),
        ("sp range", dict(probs=probs, sp_map=sp + 5, image_ids=[0, 1]), ValueError, "superpixel ids"),
        ("sp float", dict(probs=probs, sp_map=sp.float(), image_ids=[0, 1]), TypeError, "sp_map"),
        ("exclude shape", dict(probs=probs, sp_map=sp, image_ids=[0, 1], exclude=torch.zeros(2, 3, dtype=torch.bool)),
         ValueError, "exclude"),
        ("exclude dtype", dict(probs=probs, sp_map=sp, image_ids=[0, 1], exclude=torch.zeros(2, 4)), TypeError,
         "exclude"),
        ("exclude device", dict(probs=probs, sp_map=sp, image_ids=[0, 1],
                                exclude=torch.zeros(2, 4, dtype=torch.bool, device="meta")), ValueError, "same device"),
        ("probs device", dict(probs=probs.to("meta"), sp_map=sp, image_ids=[0, 1]), ValueError, "same device"),
    ]


@pytest.mark.parametrize("case", _bad_updates(), ids=lambda c: c[0])
def test_bad_update_arguments(case):
    _, kwargs, err, match = case
    sel = StreamingSelector("oreal", num_superpixels=4, budget=2, labeled_counts=torch.tensor([1, 2, 3]))
    with pytest.raises(err, match=match):
        sel.update(**kwargs)


def test_bad_sequences_of_calls():
    probs, sp, counts = _probs_batch()
    sel = StreamingSelector("oreal", num_superpixels=4, budget=2, labeled_counts=counts)
    sel.update(probs=probs, sp_map=sp, image_ids=[0, 1])
    with pytest.raises(ValueError, match="already given in an earlier batch"):
        sel.update(probs=probs, sp_map=sp, image_ids=[1, 2])
    with pytest.raises(ValueError, match="float32 like the first batch"):
        sel.update(probs=probs.double(), sp_map=sp, image_ids=[5, 6])
    unchecked = StreamingSelector("oreal", num_superpixels=4, budget=2, labeled_counts=counts, validate_args=False)
    unchecked.update(probs=probs, sp_map=sp, image_ids=[0, 1])
    with pytest.raises(ValueError, match="the first batch's device"):
        unchecked.update(probs=probs.to("meta"), sp_map=sp.to("meta"), image_ids=[2, 3])
    with pytest.raises(ValueError, match="budget"):  # too few candidates: the in-memory error
        StreamingSelector("oreal", num_superpixels=4, budget=99, labeled_counts=counts).compute()
    with pytest.raises(RuntimeError, match="one pass"):
        sel.next_pass()
    two = StreamingSelector("revisiting_sp", num_superpixels=4, budget=2)
    two.update(probs=probs, sp_map=sp, image_ids=[0, 1])
    with pytest.raises(RuntimeError, match="two passes"):
        two.compute()
    two.next_pass()
    with pytest.raises(RuntimeError, match="already called"):
        two.next_pass()
    two.update(probs=probs[:1], sp_map=sp[:1], image_ids=[0])
    with pytest.raises(ValueError, match="same images as the first"):
        two.compute()
    # a batch that failed validation is not half-added: it can be given again
    sel.reset()
    with pytest.raises(ValueError):
        sel.update(probs=probs * 3, sp_map=sp, image_ids=[0, 1])
    sel.update(probs=probs, sp_map=sp, image_ids=[0, 1])
    assert sel.compute().image.numel() == 2


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_stream_on_cuda_equals_cpu():
    pool = make_pool(10, 5, 8, 8, 6, seed=8)
    gpu = {k: v.cuda() for k, v in pool.items()}
    batches = list(torch.arange(10).split(3))
    for name in ("oreal", "entropy", "revisiting_sp"):
        got = streamed(name, gpu, 6, 7, [b.cuda() for b in batches])
        ref = in_memory(name, gpu, 6, 7)
        assert got.image.device.type == "cuda"
        assert torch.equal(got.image, ref.image) and torch.equal(got.superpixel, ref.superpixel)


# ------------------------------------------------------------------------------------------------ distributed

_WORKER = textwrap.dedent('''
    import os, sys, torch, torch.distributed as dist
    sys.path.insert(0, os.environ["TEST_DIR"])
    from test_stream import make_pool, streamed
    from oreal.stream import StreamingSelector
    dist.init_process_group("gloo", timeout=__import__("datetime").timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    pool = make_pool(11, 4, 6, 6, 5, seed=21)
    order = torch.randperm(11, generator=torch.Generator().manual_seed(5))
    shard = order[rank::world]                      # global ids, any order, uneven shards
    out = {}
    for name, budget in (("oreal", 9), ("entropy", 6), ("revisiting_sp", 7), ("pixelbal", 5), ("random", 8),
                         ("balent_pixel", 10), ("cbal", 6)):
        out[name] = tuple(streamed(name, pool, 5, budget, list(shard.split(2)), distributed=True))
    # a rank without any image still takes part
    empty = torch.arange(11) if rank == 0 else shard[:0]
    for name in ("oreal", "revisiting_sp", "pixelbal"):  # two-pass ones: the empty rank's statistics are neutral
        out[name + "_one_rank"] = tuple(streamed(name, pool, 5, 9, [empty], distributed=True))
    try:
        streamed("oreal", pool, 5, 60, [shard], distributed=True)
    except ValueError as err:
        out["too_few"] = str(err)
    try:  # image 0 on both ranks
        streamed("entropy", pool, 5, 40, [torch.arange(11) if rank == 0 else torch.tensor([0])], distributed=True)
    except ValueError as err:
        out["duplicate"] = str(err)
    try:  # ranks built with different budgets
        StreamingSelector("entropy", num_superpixels=5, budget=3 + rank, distributed=True).compute()
    except ValueError as err:
        out["mismatch"] = str(err)
    torch.save(out, os.path.join(os.environ["OUT_DIR"], f"rank{rank}.pt"))
    dist.destroy_process_group()
''')


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_gloo(worker, tmp_path):
    """Run ``worker`` (a script's text) in two gloo processes; they find the tests in TEST_DIR and the repository
    in REPO_DIR, and save what each rank returns as OUT_DIR/rank{r}.pt. Returns the two ranks' saved objects."""
    script = tmp_path / "worker.py"
    script.write_text(worker)
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="2",
               TEST_DIR=os.path.dirname(__file__), OUT_DIR=str(tmp_path), OMP_NUM_THREADS="1",
               REPO_DIR=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    procs = [subprocess.Popen([sys.executable, str(script)], env=dict(env, RANK=str(r)), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) for r in range(2)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=80)[0].decode())
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]


def test_distributed_gloo_two_processes(tmp_path):
    """Two gloo processes, each streaming its shard with global ids: every rank gets the single-process result."""
    results = run_gloo(_WORKER, tmp_path)
    pool = make_pool(11, 4, 6, 6, 5, seed=21)
    everything = [torch.arange(11)]
    for name, budget in (("oreal", 9), ("entropy", 6), ("revisiting_sp", 7), ("pixelbal", 5), ("random", 8),
                         ("balent_pixel", 10), ("cbal", 6)):
        single = streamed(name, pool, 5, budget, everything)
        if name != "random":
            assert_same(single, in_memory(name, pool, 5, budget))
        for out in results:
            assert_same(oreal.Selection(*out[name]), single)
    for out in results:
        for name in ("oreal", "revisiting_sp", "pixelbal"):
            assert_same(oreal.Selection(*out[name + "_one_rank"]), in_memory(name, pool, 5, 9))
        assert out["too_few"] == outcome(lambda: in_memory("oreal", pool, 5, 60))
        assert "more than one rank" in out["duplicate"]
        assert "same strategy, budget" in out["mismatch"]


@pytest.mark.parametrize("options, error, match", [
    ({"temperature": 0.0}, ValueError, r"`temperature` to be a finite number > 0, but got 0.0"),
    ({"mu": "6"}, TypeError, r"`mu` to be a number, but got str"),
])
def test_bad_option_values_are_rejected_at_construction(options, error, match):
    with pytest.raises(error, match=match):
        StreamingSelector("pixelbal", num_superpixels=4, budget=2, **options)


def test_stream_keeps_tiny_probabilities_of_a_rare_class():
    # Class 1: p = 1e-12 in image 0, 1e-9 in image 1 (float32); the second is the more uncertain.
    p1 = torch.tensor([1e-12, 1e-9]).reshape(2, 1, 1, 1)
    probs = torch.cat([1 - p1, p1], 1)
    sel = StreamingSelector("oreal", num_superpixels=1, budget=1, labeled_counts=torch.tensor([5, 0]))
    for i in range(2):
        sel.update(probs=probs[i:i + 1], sp_map=torch.zeros(1, 1, 1, dtype=torch.long), image_ids=[i])
    out = sel.compute()
    assert (out.image.tolist(), out.cls.tolist()) == ([1], [1])
    assert out.score.item() == oreal.binary_entropy(p1[1].double()).float().item() > 0  # h in float64, rounded


@pytest.mark.parametrize("name", ["entropy", "oreal", "balent_pixel", "pixelbal"])
def test_a_refused_batch_fixes_nothing(name):
    """A first batch refused for its values (logits given as probabilities, in float64, with other classes and,
    for a pixel strategy, another H, W) or for an image id given twice fixes neither the stream's dtype, classes
    nor shape: the corrected batches are taken and the picks are those of the pool in memory."""
    pool = make_pool(4, 3, 5, 5, 4, seed=3)
    counts = pool["counts"] if name == "oreal" else None  # oreal needs them (and takes its classes from them)
    sel = StreamingSelector(name, num_superpixels=4, budget=3, labeled_counts=counts)
    # values refused: "probabilities" outside [0, 1], NaN logits
    wrong = {k: 3 * torch.randn(*pool[k].shape[:-3], 4, 6, 6, dtype=torch.float64) for k in pool if "probs" in k}
    wrong["logits"] = torch.full((4, 4, 6, 6), float("nan"), dtype=torch.float64)
    for p in range(sel.num_passes):
        if p:
            sel.next_pass()
        if p == 0:
            with pytest.raises(ValueError, match="Expected"):
                sel.update(sp_map=torch.zeros(4, 6, 6, dtype=torch.long), image_ids=range(4), **wrong)
            twice = {k: pool[k].double() for k in ("probs", "logits", "mc_probs")}
            with pytest.raises(ValueError, match="more than once"):
                sel.update(sp_map=pool["sp_map"], image_ids=[0, 1, 2, 0], **twice)
        sel.update(probs=pool["probs"], logits=pool["logits"], mc_probs=pool["mc_probs"], sp_map=pool["sp_map"],
                   image_ids=range(4))
    want = strategies.query(name, probs=pool["probs"], logits=pool["logits"], mc_probs=pool["mc_probs"],
                            sp_map=pool["sp_map"], num_superpixels=4, budget=3, labeled_counts=counts)
    assert all(torch.equal(a, b) for a, b in zip(sel.compute(), want))


@pytest.mark.parametrize("name", ["entropy", "oreal", "balent_pixel", "pixelbal"])
def test_an_empty_batch_sets_nothing(name):
    """A batch without pixels in another dtype (and, for a pixel strategy, another H, W) does not fix the stream's
    dtype or shape: the batches after it are taken and the picks are those of the pool in memory."""
    pool = make_pool(4, 3, 5, 5, 4, seed=2)
    sel = StreamingSelector(name, num_superpixels=4, budget=3, labeled_counts=pool["counts"])
    empty = {k: pool[k][:0, ..., :2, :2].double() for k in ("probs", "logits", "mc_probs")}
    for p in range(sel.num_passes):
        if p:
            sel.next_pass()
        sel.update(sp_map=pool["sp_map"][:0, :2, :2], image_ids=[], **empty)
        sel.update(probs=pool["probs"], logits=pool["logits"], mc_probs=pool["mc_probs"], sp_map=pool["sp_map"],
                   image_ids=range(4))
    want = strategies.query(name, probs=pool["probs"], logits=pool["logits"], mc_probs=pool["mc_probs"],
                            sp_map=pool["sp_map"], num_superpixels=4, budget=3, labeled_counts=pool["counts"])
    assert all(torch.equal(a, b) for a, b in zip(sel.compute(), want))
