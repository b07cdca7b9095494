"""A strategy registered from outside the library streams exactly, with nothing in oreal.stream taught about it:
toy strategies of every stream kind (defined here, registered with oreal.strategies.register and removed again)
give the in-memory result for random batchings and orders, across a checkpoint, and merged over 2 gloo processes
with an empty rank. Also: the registry is the only place that names strategies, and bad declarations raise."""

from __future__ import annotations

import ast
import contextlib
import os
import textwrap

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import oreal
from oreal import strategies
from oreal.strategies import Stream
from oreal.stream import StreamingSelector, streamable
from tests.test_stream import assert_same, make_pool, outcome, pools, run_gloo

# ------------------------------------------------------------------------------------------- the toy strategies
# Each toy's in-memory function (what query runs on the whole pool) is written from public oreal functions; the
# stream only gets the registry entry.


def _selection(index, value, unit, cls=None):
    return oreal.Selection(index // unit, index % unit, torch.full_like(index, -1) if cls is None else cls, value)


def _top_score(pool, aggregation):
    """Per-image: 1 - max probability, aggregated over the superpixel, (n, S)."""
    return oreal.aggregate(1 - pool.probs.max(1).values, pool.sp_map, pool.num_superpixels, aggregation,
                           validate_args=False)


def _top(pool, aggregation):
    index, value = oreal.topk(_top_score(pool, aggregation).reshape(-1), pool.budget, candidates=pool.candidates(),
                              allow_partial=pool.allow_partial, validate_args=False)
    return _selection(index, value, pool.num_superpixels)


def _class_columns(pool, aggregation, class_mask):
    """Per-image: p_c (1 - p_c) aggregated over the superpixel, one column per class, (n, S, C)."""
    p = pool.probs
    return torch.stack([oreal.aggregate(p[:, c] * (1 - p[:, c]), pool.sp_map, pool.num_superpixels, aggregation,
                                        validate_args=False) for c in range(p.shape[1])], -1)


def _class(pool, aggregation, class_mask):
    c = pool.probs.shape[1]
    scores = _class_columns(pool, aggregation, class_mask).reshape(-1, c)
    debt = oreal.class_debt(pool.labeled_counts, pool.budget, class_mask=class_mask, validate_args=False)
    index, cls, value = oreal.greedy_per_class(scores, debt, pool.labeled_counts, candidates=pool.candidates(),
                                               allow_partial=pool.allow_partial, validate_args=False)
    return _selection(index, value, pool.num_superpixels, cls)


def _pixel_candidates(pool):
    cand = pool.sp_map >= 0
    return cand if pool.exclude is None else cand & ~pool.exclude


def _pixel_stats(pool, aggregation, weight):
    """Pool statistics of single pixels: min and max of the top probability over the candidate pixels, integer
    counts of their predicted classes and of the candidates."""
    top, pred = pool.probs.max(1)
    cand = _pixel_candidates(pool)
    inf = torch.tensor(float("inf"), dtype=top.dtype)
    return {"lo": torch.where(cand, top, inf).amin(), "hi": torch.where(cand, top, -inf).amax(),
            "counts": torch.bincount(pred[cand], minlength=pool.probs.shape[1]), "total": cand.sum()}


def _pixel_neutral(num_classes, dtype):
    return {"lo": torch.tensor(float("inf"), dtype=dtype), "hi": torch.tensor(float("-inf"), dtype=dtype),
            "counts": torch.zeros(num_classes, dtype=torch.long), "total": torch.zeros((), dtype=torch.long)}


def _pixel_score(pool, aggregation, stats, weight):
    """(hi - p1) / (hi - lo) (1 where the pool's span is 0) x (1 - weight * frequency of the predicted class), per
    pixel, (n, H * W)."""
    top, pred = pool.probs.max(1)
    lo, hi = stats["lo"], stats["hi"]
    span = hi - lo
    u = torch.where(span > 0, (hi - top) / torch.where(span > 0, span, 1), 1)
    freq = stats["counts"].to(top.dtype) / stats["total"].clamp_min(1)
    return (u * (1 - weight * freq[pred])).reshape(top.shape[0], -1)


def _pixel(pool, aggregation, weight):
    score = _pixel_score(pool, aggregation, _pixel_stats(pool, aggregation, weight), weight).reshape(-1)
    index, value = oreal.topk(score, pool.budget, candidates=_pixel_candidates(pool).reshape(-1),
                              allow_partial=pool.allow_partial, validate_args=False)
    return _selection(index, value, pool.sp_map.shape[1] * pool.sp_map.shape[2])


_PIXEL_STATS = Stream("pool_stats", score=_pixel_score, stats=_pixel_stats, neutral=_pixel_neutral,
                      reduce={"lo": "min", "hi": "max", "counts": "sum", "total": "sum"})

TOYS = {  # name -> register() arguments
    "toy_top": dict(fn=_top, requires=("probs",), stream=Stream("top_b", score=_top_score)),
    "toy_top_by_fn": dict(fn=_top, requires=("probs",), stream=Stream("top_b")),
    "toy_class": dict(fn=_class, requires=("probs", "labeled_counts"), options={"class_mask": None},
                      stream=Stream("per_class", score=_class_columns)),
    "toy_class_by_fn": dict(fn=_class, requires=("probs", "labeled_counts"), options={"class_mask": None},
                            stream=Stream("per_class")),
    "toy_pixel_stats": dict(fn=_pixel, requires=("probs",), aggregations=(), options={"weight": 0.5},
                            pixels=True, stream=_PIXEL_STATS),
}


@contextlib.contextmanager
def registered():
    """The toys registered for the duration of the block, and removed again whatever happens."""
    try:
        for name, kw in TOYS.items():
            strategies.register(name, summary=f"test toy {name}", **kw)
        yield
    finally:
        for name in TOYS:
            if name in strategies.available():
                strategies.unregister(name)
    assert not set(TOYS) & set(strategies.available())


@pytest.fixture(scope="module")
def toys():
    with registered():
        yield


def run_query(name, pool, s, budget, allow_partial=False, **kw):
    exclude = pool["pixel_exclude"] if strategies.requirements(name)["pixels"] else pool["exclude"]
    return strategies.query(name, probs=pool["probs"], sp_map=pool["sp_map"], num_superpixels=s, budget=budget,
                            labeled_counts=pool["counts"], exclude=exclude, allow_partial=allow_partial, **kw)


def run_stream(name, pool, s, budget, batches, allow_partial=False, checkpoint=False, **kw):
    def make():
        return StreamingSelector(name, num_superpixels=s, budget=budget, labeled_counts=pool["counts"], **kw)

    exclude = pool["pixel_exclude"] if strategies.requirements(name)["pixels"] else pool["exclude"]
    sel = make()
    for p in range(sel.num_passes):
        if p:
            sel.next_pass()
            batches = batches[::-1]
        for i, ids in enumerate(batches):
            if checkpoint and i == len(batches) // 2:  # go on in a new selector from a checkpoint
                state = sel.state_dict()
                sel = make()
                sel.load_state_dict(state)
            sel.update(probs=pool["probs"][ids], sp_map=pool["sp_map"][ids], exclude=exclude[ids], image_ids=ids)
    return sel.compute(allow_partial=allow_partial)


# ----------------------------------------------------------------------------------------------------- tests


def test_toys_are_listed_only_while_registered(toys):
    how = streamable()
    assert how["toy_top"] == how["entropy"] and how["toy_class"] == how["oreal"]
    assert how["toy_pixel_stats"] == how["revisiting_sp"]
    assert strategies.requirements("toy_pixel_stats") == {"inputs": ("probs",), "aggregations": (),
                                                          "options": {"weight": 0.5}, "pixels": True}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pools(), st.sampled_from(sorted(TOYS)), st.booleans(), st.sampled_from([None, "max", "mean"]),
       st.booleans())
def test_toy_streams_equal_in_memory(toys, case, name, allow_partial, aggregation, checkpoint):
    """Random pools in random batches and orders (and a checkpoint half-way): the streamed toy gives exactly what
    query gives on the whole pool, or the same error."""
    n, c, h, w, s, budget, seed, batches = case
    pool = make_pool(n, c, h, w, s, seed=seed)
    kw = {} if aggregation is None or not strategies.requirements(name)["aggregations"] else \
        {"aggregation": aggregation}
    expected = outcome(lambda: run_query(name, pool, s, budget, allow_partial, **kw))
    got = outcome(lambda: run_stream(name, pool, s, budget, batches, allow_partial, checkpoint, **kw))
    if isinstance(expected, str):
        assert got == expected
    else:
        assert_same(got, expected)


def test_toy_pixel_stats_against_a_loop(toys):
    """The pixel-level toy's picks against a plain float64 loop over the pixels (its formula, written out)."""
    pool = make_pool(5, 3, 4, 6, 4, seed=3, sharp=1.0)
    got = run_stream("toy_pixel_stats", pool, 4, 7, [torch.tensor([3, 1]), torch.tensor([0, 4, 2])], weight=0.25)
    probs, cand = pool["probs"].double(), (pool["sp_map"] >= 0) & ~pool["pixel_exclude"]
    entries = [(n, y * 6 + x) for n in range(5) for y in range(4) for x in range(6) if cand[n, y, x]]
    top = {e: float(probs[e[0], :, e[1] // 6, e[1] % 6].max()) for e in entries}
    pred = {e: int(probs[e[0], :, e[1] // 6, e[1] % 6].argmax()) for e in entries}
    lo, hi = min(top.values()), max(top.values())
    freq = [sum(pred[e] == k for e in entries) / len(entries) for k in range(3)]
    score = {e: (hi - top[e]) / (hi - lo) * (1 - 0.25 * freq[pred[e]]) for e in entries}
    want = sorted(entries, key=lambda e: (-score[e], e))[:7]
    assert list(zip(got.image.tolist(), got.superpixel.tolist())) == want
    torch.testing.assert_close(got.score.double(), torch.tensor([score[e] for e in want], dtype=torch.float64),
                               rtol=1e-5, atol=1e-6)


def test_stream_module_names_no_strategy():
    """oreal/stream.py holds no strategy name outside its docstrings: how a strategy streams is its registry
    entry's business."""
    path = os.path.join(os.path.dirname(oreal.__file__), "stream.py")
    tree = ast.parse(open(path).read())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    names = set(strategies.available())
    found = sorted({node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
                    and id(node) not in docstrings and isinstance(node.value, str)
                    and (node.value in names or any(f"'{n}'" in node.value for n in names))})
    assert not found


def test_not_streamed_entries_say_why(toys):
    try:
        strategies.register("toy_whole_pool", _top, summary="needs the whole pool", requires=("probs",),
                            stream="it looks at the whole pool at once")
        strategies.register("toy_undeclared", _top, summary="no stream", requires=("probs",))
        assert "toy_whole_pool" not in streamable() and "toy_whole_pool" in strategies.available()
        with pytest.raises(ValueError, match="cannot be streamed: it looks at the whole pool at once"):
            StreamingSelector("toy_whole_pool", num_superpixels=4, budget=2)
        with pytest.raises(ValueError, match="cannot be streamed: its registry entry declares no stream"):
            StreamingSelector("toy_undeclared", num_superpixels=4, budget=2)
    finally:
        for name in ("toy_whole_pool", "toy_undeclared"):
            if name in strategies.available():
                strategies.unregister(name)


_STATS = dict(score=_pixel_score, stats=_pixel_stats, neutral=_pixel_neutral)
BAD_REGISTRATIONS = [
    (dict(name="entropy"), ValueError, "already registered"),
    (dict(name=""), TypeError, "non-empty str"),
    (dict(fn=None), TypeError, "callable"),
    (dict(requires=("probs", "labels")), ValueError, r"subset of .*\['labels'\]"),
    (dict(aggregations=("median",)), ValueError, "aggregations"),
    (dict(aggregations=("max", "max")), ValueError, "aggregations"),
    (dict(pixels=True), ValueError, "pixel-level strategy has no aggregation"),
    (dict(stream=Stream("top_k")), ValueError, "Stream.kind"),
    (dict(stream=Stream("per_class")), ValueError, "labeled_counts"),
    (dict(requires=("probs", "labeled_counts"), stream=Stream("per_class")), ValueError, "class_mask"),
    (dict(requires=("probs", "labeled_counts"), aggregations=(), pixels=True, options={"class_mask": None},
          stream=Stream("per_class")), ValueError, "cannot stream per class"),
    (dict(stream=Stream("pool_stats", score=_pixel_score)), ValueError, r"\['stats', 'reduce', 'neutral'\]"),
    (dict(stream=Stream("pool_stats", reduce={"lo": "mean"}, **_STATS)), ValueError, "Stream.reduce"),
    (dict(stream=3), TypeError, "Stream"),
    (dict(min_classes=0), ValueError, "min_classes"),
    (dict(min_samples=1.5), TypeError, "min_samples"),
]


@pytest.mark.parametrize("kwargs, err, match", BAD_REGISTRATIONS)
def test_bad_registrations_raise_and_leave_the_registry_alone(kwargs, err, match):
    before = strategies.available()
    args = dict(name="toy_bad", fn=_top, summary="bad", requires=("probs",))
    args.update(kwargs)
    with pytest.raises(err, match=match):
        strategies.register(args.pop("name"), args.pop("fn"), **args)
    assert strategies.available() == before


def test_unregister_only_what_was_registered():
    with pytest.raises(ValueError, match="built in"):
        strategies.unregister("oreal")
    with pytest.raises(ValueError, match="Unknown strategy"):
        strategies.unregister("toy_never_registered")
    assert "oreal" in strategies.available()


@pytest.mark.parametrize("stats, err, match", [
    ({"lo": "min", "hi": "max", "counts": "sum"}, ValueError, r"keys of Stream.reduce .* but got \['counts', 'hi'"),
    ({"lo": "sum", "hi": "max", "counts": "sum", "total": "sum"}, TypeError, "statistic 'lo' is summed"),
])
def test_statistics_that_break_the_contract_raise(stats, err, match):
    """Stats whose keys are not the declared ones, or a float statistic declared as a sum (its value would depend
    on the batching), raise at the first batch instead of streaming a wrong answer."""
    pool = make_pool(3, 3, 4, 4, 4, seed=1)
    strategies.register("toy_broken", _pixel, summary="broken", requires=("probs",), aggregations=(),
                        options={"weight": 0.5}, pixels=True, stream=_PIXEL_STATS._replace(reduce=stats))
    try:
        sel = StreamingSelector("toy_broken", num_superpixels=4, budget=2)
        with pytest.raises(err, match=match):
            sel.update(probs=pool["probs"], sp_map=pool["sp_map"], image_ids=[0, 1, 2])
    finally:
        strategies.unregister("toy_broken")


# ------------------------------------------------------------------------------------------------ distributed

_WORKER = textwrap.dedent('''
    import os, sys, torch, torch.distributed as dist
    sys.path.insert(0, os.environ["REPO_DIR"])
    from tests.test_stream import make_pool
    from tests.test_stream_registry import TOYS, registered, run_stream
    dist.init_process_group("gloo", timeout=__import__("datetime").timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    pool = make_pool(9, 4, 5, 6, 5, seed=31)
    shard = torch.randperm(9, generator=torch.Generator().manual_seed(2))[rank::world]
    out = {}
    with registered():
        for name in sorted(TOYS):
            out[name] = tuple(run_stream(name, pool, 5, 7, list(shard.split(2)), distributed=True))
            everything = torch.arange(9) if rank == 0 else shard[:0]  # rank 1 has no image
            out[name + "_one_rank"] = tuple(run_stream(name, pool, 5, 7, [everything], distributed=True))
    torch.save(out, os.path.join(os.environ["OUT_DIR"], f"rank{rank}.pt"))
    dist.destroy_process_group()
''')


def test_toys_distributed_gloo_with_an_empty_rank(tmp_path, toys):
    """Two gloo processes register the toys themselves; sharded, and with all images on one rank (the other's
    statistics are its entry's neutral ones), every rank gets the in-memory result."""
    results = run_gloo(_WORKER, tmp_path)
    pool = make_pool(9, 4, 5, 6, 5, seed=31)
    for out in results:
        for name in TOYS:
            ref = run_query(name, pool, 5, 7)
            assert_same(oreal.Selection(*out[name]), ref)
            assert_same(oreal.Selection(*out[name + "_one_rank"]), ref)


@pytest.mark.parametrize("name", sorted(n for n in streamable() if not strategies.requirements(n)["pixels"]))
def test_images_without_pixels_add_nothing(name):
    """A batch of images with H * W = 0 adds its ids and no candidate: the result is that of the other images.
    (Pixel-level strategies need one H, W for every batch.)"""
    pool = make_pool(3, 3, 4, 4, 5, seed=6)
    empty = make_pool(2, 3, 0, 4, 5, seed=6)
    kw = {"seed": 1} if name == "random" else {}
    sel = StreamingSelector(name, num_superpixels=5, budget=4, labeled_counts=pool["counts"], **kw)
    keys = ("probs", "logits", "mc_probs", "images", "sp_map")
    for p in range(sel.num_passes):
        if p:
            sel.next_pass()
        sel.update(**{k: empty[k] for k in keys}, image_ids=[3, 4])
        sel.update(**{k: pool[k] for k in keys}, image_ids=[0, 1, 2])
    with pytest.raises(ValueError, match="already given"):
        sel.update(**{k: empty[k][:1] for k in keys}, image_ids=[4])
    if name == "random":  # the keyed draw: the top keys of the candidates
        cand = oreal.candidates(pool["sp_map"], 5).reshape(-1)
        index, value = oreal.topk(oreal.stream.keyed_uniform(torch.arange(15), 1), 4, candidates=cand)
        ref = oreal.Selection(index // 5, index % 5, torch.full_like(index, -1), value)
    else:
        ref = strategies.query(name, **{k: pool[k] for k in keys}, num_superpixels=5, budget=4,
                               labeled_counts=pool["counts"])
    assert_same(sel.compute(), ref)


def test_declared_minimum_classes_are_checked_by_query_and_stream():
    """An entry's min_classes is enforced on `probs` by query and by every stream update alike."""
    probs = torch.ones(2, 1, 3, 3)
    sp = torch.zeros(2, 3, 3, dtype=torch.long)
    strategies.register("toy_two_classes", _top, summary="needs 2 classes", requires=("probs",), min_classes=2,
                        stream=Stream("top_b"))
    try:
        message = r"Strategy 'toy_two_classes' needs at least 2 classes, but `probs` has shape \(2, 1, 3, 3\)"
        with pytest.raises(ValueError, match=message):
            strategies.query("toy_two_classes", probs=probs, sp_map=sp, num_superpixels=1, budget=1)
        with pytest.raises(ValueError, match=message):
            StreamingSelector("toy_two_classes", num_superpixels=1, budget=1).update(probs=probs, sp_map=sp,
                                                                                      image_ids=[0, 1])
        assert strategies.query("toy_two_classes", probs=torch.full((2, 2, 3, 3), 0.5), sp_map=sp,
                                num_superpixels=1, budget=1).image.numel() == 1
    finally:
        strategies.unregister("toy_two_classes")


def _mc_class(pool, aggregation):
    """Per-class scores from the MC mean: the classes come from `mc_probs` alone."""
    scores = oreal.superpixel_ovr_entropy(pool.mc_probs.mean(1), pool.sp_map, pool.num_superpixels, aggregation)
    index, cls, value = oreal.greedy_per_class(scores.reshape(-1, scores.shape[-1]),
                                               oreal.class_debt(pool.labeled_counts, pool.budget),
                                               pool.labeled_counts, candidates=pool.candidates())
    s = pool.num_superpixels
    return oreal.Selection(index // s, index % s, cls, value)


def test_classes_come_from_any_class_input():
    """`labeled_counts` is checked against the classes of whichever input a strategy reads (here `mc_probs`, whose
    classes are dim 2), and inputs with different class counts are refused."""
    mc = torch.randn(2, 3, 4, 3, 3, generator=torch.Generator().manual_seed(0)).softmax(2)
    sp = torch.arange(9).reshape(3, 3).expand(2, 3, 3) % 2
    strategies.register("toy_mc_class", _mc_class, summary="classes from mc_probs",
                        requires=("mc_probs", "labeled_counts"), aggregations=("max",))
    strategies.register("toy_both", _top, summary="reads probs and logits", requires=("probs", "logits"))
    try:
        counts = torch.tensor([3, 0, 1, 2])
        sel = strategies.query("toy_mc_class", mc_probs=mc, sp_map=sp, num_superpixels=2, budget=2,
                               labeled_counts=counts)
        assert sel.cls.tolist() == [1, 1]  # the rarest class takes the whole debt
        with pytest.raises(ValueError, match=r"`labeled_counts` must have shape \(4,\) = \(C,\)"):
            strategies.query("toy_mc_class", mc_probs=mc, sp_map=sp, num_superpixels=2, budget=2,
                             labeled_counts=counts[:3])
        with pytest.raises(ValueError, match=r"`logits` has 5 classes \(shape \(2, 5, 3, 3\)\) but `probs` has 4"):
            strategies.query("toy_both", probs=mc[:, 0], logits=torch.zeros(2, 5, 3, 3), sp_map=sp,
                             num_superpixels=2, budget=2)
    finally:
        strategies.unregister("toy_mc_class")
        strategies.unregister("toy_both")
