"""Selection over pools of any size: constant-memory streaming and distributed merging.

A pool's probabilities rarely fit in memory (Cityscapes: 2975 x 19 x 1024 x 2048 floats is over 400 GB), but no
strategy needs them all at once. :class:`StreamingSelector` takes the pool batch by batch, keeps only the
candidates that can still be picked, and after the last batch returns **exactly** what
:func:`oreal.select` / :func:`oreal.strategies.query` return on the whole pool at once: the same images,
superpixels, classes and scores, in the same order. It also raises the same error when the pool has fewer
candidates than the budget (or honours ``allow_partial`` the same way)::

    sel = StreamingSelector("oreal", num_superpixels=S, budget=B, labeled_counts=counts)
    for batch in loader:                       # any order, any batch sizes
        sel.update(probs=model(batch.x).softmax(1), sp_map=batch.sp, image_ids=batch.idx, exclude=batch.labeled)
    picks = sel.compute()                      # == oreal.select(all probs, all sp maps, counts, B, ...)

Each strategy's registry entry (:func:`oreal.strategies.register`, :class:`oreal.strategies.Stream`) says how it
streams; the selector itself knows no strategy by name. Why it is exact, and what it keeps (memory is
``O(C * B)`` plus the current batch, never ``O(pool)``):

- **Top-B** (kind ``"top_b"``): every unit's score depends on its own image only, so the pool's top ``B`` under
  the total order *(score descending, global index ascending)* is the top ``B`` of the union of each batch's top
  ``B``. The batch is scored by the strategy's own function (or its ``Stream.score``), so the scores are the same
  floats.
- **Per class** (kind ``"per_class"``, OREAL's greedy): the class debt ``d`` depends only on ``labeled_counts``
  and ``B``, known up front. Class ``c`` is visited after classes that take ``D = sum of their debts`` picks in
  all, so it takes its ``d_c`` picks from the top ``D + d_c <= B`` entries of its own column; keeping the top
  ``B`` of every column with positive debt is therefore enough, and the per-class greedy
  (:func:`oreal.greedy_per_class`) run on the union of the kept candidates makes the same picks in the same order.
- **Pool statistics** (kind ``"pool_stats"``): **two passes** over the pool. The first accumulates statistics
  that are exact under any batching, order or sharding (minima, maxima and integer sums, e.g. the class mass of
  :func:`class_mass` as int64 fixed-point limbs); the second scores against them and keeps the top ``B``. Call
  :meth:`StreamingSelector.next_pass` between the passes.
- A seeded entry (``Stream(seeded=True)``, the streamed ``random``) ranks by a keyed hash of ``(seed, g)``
  (:func:`keyed_uniform`): a uniformly random ``B``-subset, the same for every batching and sharding, but not the
  generator's draw of the in-memory strategy (which depends on the pool's size and order).
- :func:`streamable` lists the strategies and how each one streams; the others raise, saying why.
- ``mean`` aggregations on CUDA add with atomics, so there the in-memory result itself varies in the last bits.

Ties: the global index is ``g = image_id * S + s`` (``image_id * H * W + h * W + w`` for pixel-level strategies), so
the ``image_ids`` given with each batch define the order; with ids ``0 .. N-1`` in pool order the result equals the
in-memory one on the stacked pool. Ids must be unique over the pool; a repeated id raises.

Distributed (``distributed=True``, ``torch.distributed`` initialised, gloo on CPU or NCCL on GPU): each rank
streams its own shard with **global** image ids; :meth:`~StreamingSelector.compute` (and ``next_pass``) are
collectives that every rank must call. They all-gather fixed-size candidate buffers (``all_gather`` of padded
tensors, no objects) and reduce the statistics, and **every rank** gets the same selection, equal to one process
streaming the whole pool. Do not use a sampler that pads shards with repeated images (``DistributedSampler`` does
unless the pool divides evenly): a repeated image found in two ranks' candidates raises.
"""

from __future__ import annotations

import numbers
import zlib
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from oreal import strategies as _strategies
from oreal.strategies import (
    STREAM_KINDS,
    Stream,
    check_options,
    check_pool_input,
    class_mass,
    class_mean,
    keyed_uniform,
    resolve_options,
)
from oreal._checks import (
    check_bool_tensor,
    check_choice,
    check_flag,
    check_int,
    check_int_tensor,
    check_real,
    check_same_device,
    check_shape,
    compute_dtype,
    validate_nonnegative,
)
from oreal.aggregate import check_sp_map
from oreal.balance import class_debt
from oreal.select import Selection, candidates, greedy_per_class, topk

__all__ = ["StreamingSelector", "streamable", "class_mass", "class_mean", "keyed_uniform"]

_SENTINEL = torch.iinfo(torch.int64).max  # the global index of an empty buffer slot; sorts after every real one


def streamable() -> Dict[str, str]:
    """Strategies :class:`StreamingSelector` runs, with how each one is streamed: those whose registry entry has a
    :class:`oreal.strategies.Stream`.

    Example:
        >>> sorted(streamable())[:3]
        ['bald', 'balent', 'balent_pixel']
    """
    how = {}
    for name, entry in _strategies._REGISTRY.items():
        if isinstance(entry.stream, Stream):
            how[name] = STREAM_KINDS[entry.stream.kind] + (f"; {entry.stream.note}" if entry.stream.note else "")
    return how


def _prune(scores: Tensor, g: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """Keep the first ``k`` entries of every row under (score descending, g ascending); rows stay sorted."""
    order = g.sort(dim=1, stable=True).indices
    scores, g = scores.gather(1, order), g.gather(1, order)
    order = scores.sort(dim=1, descending=True, stable=True).indices[:, :k]
    return scores.gather(1, order), g.gather(1, order)


def _pad(scores: Tensor, g: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """Pad rows to exactly ``k`` entries with empty slots (-inf, sentinel)."""
    missing = k - scores.shape[1]
    if missing <= 0:
        return scores, g
    rows = scores.shape[0]
    return (torch.cat([scores, scores.new_full((rows, missing), float("-inf"))], 1),
            torch.cat([g, g.new_full((rows, missing), _SENTINEL)], 1))


class _IdSet:
    """A set of non-negative int64 ids stored as sorted, disjoint, non-adjacent closed intervals (on the CPU).

    Ids that arrive in runs (a sequential DataLoader) take two numbers per run, so checking a pool for repeated
    ids costs O(1) memory in the common case (O(N) only for ids that never form runs).
    """

    def __init__(self) -> None:
        self.starts = torch.zeros(0, dtype=torch.long)
        self.ends = torch.zeros(0, dtype=torch.long)

    def __len__(self) -> int:
        return int((self.ends - self.starts + 1).sum())

    def check(self, ids: Tensor) -> Tensor:
        """Raise ``ValueError`` naming the first of ``ids`` (CPU int64, 1-D) that repeats or is already present;
        return them sorted."""
        u = ids.sort().values
        dup = u[1:][u[1:] == u[:-1]]
        if dup.numel():
            raise ValueError(f"Expected unique `image_ids`, but image id {int(dup[0])} appears more than once in "
                             f"this batch")
        if self.starts.numel() and u.numel():
            at = torch.searchsorted(self.starts, u, right=True) - 1
            hit = (at >= 0) & (u <= self.ends[at.clamp_min(0)])
            if bool(hit.any()):
                raise ValueError(f"Expected each image once per pass, but image id {int(u[hit][0])} was already "
                                 f"given in an earlier batch")
        return u

    def add(self, ids: Tensor) -> None:
        """Add ``ids`` after :meth:`check`."""
        u = self.check(ids)
        if not u.numel():
            return
        run_start = torch.ones_like(u, dtype=torch.bool)
        run_start[1:] = u[1:] != u[:-1] + 1
        run_end = torch.ones_like(run_start)
        run_end[:-1] = run_start[1:]
        starts = torch.cat([self.starts, u[run_start]])
        ends = torch.cat([self.ends, u[run_end]])
        order = starts.sort().indices
        starts, ends = starts[order], ends[order]
        new = torch.ones_like(starts, dtype=torch.bool)
        new[1:] = starts[1:] != ends[:-1] + 1
        last = torch.ones_like(new)
        last[:-1] = new[1:]
        self.starts, self.ends = starts[new], ends[last]

    def state(self) -> Tensor:
        return torch.stack([self.starts, self.ends])

    def load(self, state: Tensor) -> None:
        self.starts, self.ends = state[0].clone(), state[1].clone()


class StreamingSelector:
    """Exact acquisition over a pool given batch by batch, in memory bounded by the classes times the budget.

    After the last :meth:`update` (and, for the strategies with pool statistics, after a :meth:`next_pass` and a
    second identical pass), :meth:`compute` returns exactly the :class:`oreal.Selection` that
    :func:`oreal.strategies.query` (``oreal``: :func:`oreal.select`) returns on the whole pool at once, with the
    pool's image ``n`` replaced by the global image id given with the batch. See the module docstring for why each
    kind of strategy is exact, and :func:`streamable` for the list.

    Memory: fewer than ``P * (2 * B + max(B, 1024))`` kept candidates (``P`` = classes with positive debt for the
    per-class strategies, 1 otherwise; each a score and an int64 index) plus the current batch's scores, plus the
    set of ids seen (two integers per run of consecutive ids). Time: the strategy's own scoring of each batch plus amortised sorts of the kept candidates.

    Args:
        strategy: a name of :func:`streamable` (the names of :func:`oreal.strategies.query`).
        num_superpixels: ``S``, superpixel ids per image.
        budget: ``B >= 0`` picks.
        labeled_counts (Tensor[C], optional): int64 ``n_c``; required by the strategies that require it in
            :func:`oreal.strategies.requirements` (the class-balanced ones).
        aggregation: ``"max"`` / ``"mean"``; ``None`` = the strategy's default (as in ``query``).
        seed: key of the seeded strategies (the streamed ``random``; required by them, ignored by the others).
        distributed: merge with the other ranks of ``group`` in :meth:`next_pass` and :meth:`compute`
            (collectives: every rank must call them). Every rank gets the result.
        group: the ``torch.distributed`` process group (default: the world).
        validate_args: check each batch's values (probabilities, ids; host syncs).
        **options: the strategy's options, as in :func:`oreal.strategies.query` (``class_mask``, ``lam``,
            ``temperature``, ``mu``, ``alpha``, the CRF options of ``sp_crf`` and ``sp_crf_class``).

    Example:
        >>> g = torch.Generator().manual_seed(42)
        >>> probs = torch.randn(6, 3, 8, 8, generator=g).softmax(dim=1)
        >>> sp_map = torch.arange(4).repeat_interleave(2).repeat(6, 8, 1)  # 4 vertical strips per image
        >>> counts = torch.tensor([10, 0, 3])
        >>> stream = StreamingSelector("oreal", num_superpixels=4, budget=5, labeled_counts=counts)
        >>> for start in (0, 2, 4):  # three batches of two images
        ...     ids = torch.arange(start, start + 2)
        ...     stream.update(probs=probs[ids], sp_map=sp_map[ids], image_ids=ids)
        >>> import oreal
        >>> all(torch.equal(a, b) for a, b in zip(stream.compute(), oreal.select(probs, sp_map, counts, 5,
        ...                                                                        num_superpixels=4)))
        True
    """

    def __init__(self, strategy: str = _strategies.DEFAULT, *, num_superpixels: int, budget: int,
                 labeled_counts: Optional[Tensor] = None, aggregation: Optional[str] = None,
                 seed: Optional[int] = None, distributed: bool = False, group: Any = None,
                 validate_args: bool = True, **options: Any) -> None:
        entry = _strategies._REGISTRY.get(strategy) if isinstance(strategy, str) else None
        if entry is not None and not isinstance(entry.stream, Stream):
            why = entry.stream or "its registry entry declares no stream (oreal.strategies.register(stream=...))"
            raise ValueError(f"Strategy {strategy!r} cannot be streamed: {why}")
        check_choice(strategy, "strategy", list(streamable()))
        self.strategy = strategy
        self.spec: Stream = entry.stream
        self.pixels = entry.pixels
        self._fn = entry.fn
        self.num_superpixels = check_int(num_superpixels, "num_superpixels", minimum=1)
        self.budget = check_int(budget, "budget", minimum=0)
        self.validate_args = bool(validate_args)
        self.distributed = bool(distributed)
        self.group = group
        if self.distributed:
            import torch.distributed as dist

            if not (dist.is_available() and dist.is_initialized()):
                raise RuntimeError("distributed=True needs torch.distributed to be initialised "
                                   "(torch.distributed.init_process_group) before the selector is made")

        self.aggregation, self.options = resolve_options(strategy, aggregation, options)
        self.seed = None
        if self.spec.seeded:
            if seed is None:
                raise ValueError(f"The streamed {strategy!r} strategy needs an integer `seed=` (its keys are a hash "
                                 f"of (seed, g), the same for every batching; see oreal.stream)")
            self.seed = check_int(seed, "seed", minimum=0)
        check_options(self.options)
        self.inputs = tuple(x for x in entry.requires if x not in ("labeled_counts", "generator"))
        needs_counts = "labeled_counts" in entry.requires
        if needs_counts and labeled_counts is None:
            raise ValueError(f"Strategy {strategy!r} needs `labeled_counts` (Tensor[C] int64 labeled superpixels "
                             f"per class), but got None")

        self.labeled_counts = None
        self.num_classes: Optional[int] = None
        if needs_counts:
            check_int_tensor(labeled_counts, "labeled_counts", ndim=1)
            if labeled_counts.shape[0] == 0:
                raise ValueError("Expected `labeled_counts` to have at least one class, but got shape (0,)")
            if validate_args:
                validate_nonnegative(labeled_counts, "labeled_counts")
            self.labeled_counts = labeled_counts.clone()
            self.num_classes = int(labeled_counts.shape[0])
        class_mask = self.options.get("class_mask")
        if class_mask is not None:
            check_bool_tensor(class_mask, "class_mask", (self.num_classes,))
            check_same_device(class_mask, "class_mask", self.labeled_counts, "labeled_counts")

        # Columns kept: classes with positive debt (per-class strategies), or the one score column.
        if self.spec.kind == "per_class":
            self.debt = class_debt(self.labeled_counts, self.budget, class_mask=class_mask, validate_args=False)
            self.columns = self.debt.nonzero().squeeze(1)
        else:
            self.debt = None
            self.columns = torch.zeros(1, dtype=torch.long)
        self.num_passes = 2 if self.spec.kind == "pool_stats" else 1
        self.reset()

    # ------------------------------------------------------------------------------------------------ state

    def reset(self) -> None:
        """Forget every batch (start a new round with the same settings)."""
        self.pass_index = 0
        self.device: Optional[torch.device] = None
        self.dtype: Optional[torch.dtype] = None
        self.unit: Optional[int] = None  # indices per image: S, or H * W for a pixel-level strategy
        self.spatial: Optional[Tuple[int, int]] = None
        self.seen = _IdSet()
        self.first_pass_ids: Optional[_IdSet] = None
        self.num_candidates = torch.zeros((), dtype=torch.long)
        self.buffer: Optional[Tuple[Tensor, Tensor]] = None
        self.pending: List[Tuple[Tensor, Tensor]] = []
        self.pending_size = 0
        self.stats: Dict[str, Tensor] = {}

    @property
    def capacity(self) -> int:
        """Candidates kept per column: the budget."""
        return self.budget

    def _config_crc(self) -> int:
        counts = None if self.labeled_counts is None else self.labeled_counts.tolist()
        mask = self.options.get("class_mask")
        opts = {k: (v.tolist() if isinstance(v, Tensor) else v) for k, v in sorted(self.options.items())}
        if mask is not None:
            opts["class_mask"] = mask.tolist()
        text = repr((self.strategy, self.num_superpixels, self.budget, counts, self.aggregation, self.seed, opts,
                     self.num_passes))
        return zlib.crc32(text.encode())

    def state_dict(self) -> Dict[str, Any]:
        """A checkpoint of the stream (kept candidates, statistics, ids seen); load it into a selector made with
        the same arguments to go on after a restart. Small: ``O(P * B)`` numbers plus the id runs."""
        self._flush(force=True)
        return {"config": self._config_crc(), "pass_index": self.pass_index, "device": self.device,
                "dtype": self.dtype, "unit": self.unit, "spatial": self.spatial, "seen": self.seen.state(),
                "first_pass_ids": None if self.first_pass_ids is None else self.first_pass_ids.state(),
                "num_candidates": self.num_candidates.clone(), "num_classes": self.num_classes,
                "buffer": None if self.buffer is None else tuple(t.clone() for t in self.buffer),
                "stats": {k: v.clone() for k, v in self.stats.items()}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; raises if the selector was made with different arguments."""
        if state.get("config") != self._config_crc():
            raise ValueError("Expected a state_dict from a StreamingSelector with the same strategy, budget, "
                             "num_superpixels, labeled_counts, aggregation, seed and options")
        self.reset()
        self.pass_index, self.device, self.dtype = state["pass_index"], state["device"], state["dtype"]
        self.unit, self.spatial, self.num_classes = state["unit"], state["spatial"], state["num_classes"]
        self.seen.load(state["seen"])
        if state["first_pass_ids"] is not None:
            self.first_pass_ids = _IdSet()
            self.first_pass_ids.load(state["first_pass_ids"])
        self.num_candidates = state["num_candidates"].clone()
        self.buffer = None if state["buffer"] is None else tuple(t.clone() for t in state["buffer"])
        self.stats = {k: v.clone() for k, v in state["stats"].items()}

    # ------------------------------------------------------------------------------------------------ update

    @torch.no_grad()  # acquisition never needs gradients (as in query and select)
    def update(self, probs: Optional[Tensor] = None, *, sp_map: Tensor,
               image_ids: Union[Tensor, Sequence[int]], logits: Optional[Tensor] = None,
               mc_probs: Optional[Tensor] = None, images: Optional[Tensor] = None,
               exclude: Optional[Tensor] = None) -> None:
        """Add one batch of the pool.

        Args:
            probs (Tensor[n, C, H, W], optional): softmax probabilities (the strategies that use ``probs``).
            sp_map (Tensor[n, H, W]): integer superpixel ids in ``[0, S)``, ``-1`` for no superpixel.
            image_ids (Tensor[n] or sequence of int): global, unique, non-negative image ids; they define the
                tie order ``g = image_id * S + s`` and come back in ``Selection.image``.
            logits (Tensor[n, C, H, W], optional): raw logits (the strategies that use ``logits``).
            mc_probs (Tensor[n, K, C, H, W], optional): MC-dropout probabilities (the strategies that use
                ``mc_probs``).
            images (Tensor[n, channels, H, W] or Tensor[n, H, W], optional): the images (edge strategies;
                for ``sp_crf`` and ``sp_crf_class`` uint8 0-255 or floats in ``[0, 1]``).
            exclude (Tensor[n, S] bool, optional): already-labeled superpixels (``Tensor[n, H, W]`` pixels for
                a pixel-level strategy).
        """
        given = {"probs": probs, "logits": logits, "mc_probs": mc_probs, "images": images}
        for need in self.inputs:
            if given[need] is None:
                raise ValueError(f"Strategy {self.strategy!r} needs `{need}` in every update (see "
                                 f"oreal.strategies.requirements({self.strategy!r})), but got None")
        num_superpixels = check_sp_map(sp_map, self.num_superpixels, validate_args=self.validate_args)
        n, h, w = sp_map.shape
        unit = h * w if self.pixels else num_superpixels
        ids_cpu = self._check_ids(image_ids, n, unit)
        for name in self.inputs:
            check_pool_input(given[name], name, (n, h, w), sp_map, self.strategy, validate_args=False)
        if exclude is not None:
            shape = (n, h, w) if self.pixels else (n, num_superpixels)
            check_bool_tensor(exclude, "exclude", shape)
            check_same_device(exclude, "exclude", sp_map, "sp_map")
        first = self._check_consistent(sp_map, given, h, w)
        check_real(sp_map, "sp_map")
        self.seen.check(ids_cpu)
        if n == 0:
            return
        if self.validate_args:  # the values, as query checks them
            for name in self.inputs:
                check_pool_input(given[name], name, (n, h, w), sp_map, self.strategy, validate_args=True)
        if sp_map.numel() == 0:  # images without pixels: no candidates, no statistics, nothing to score
            self.seen.add(ids_cpu)
            return
        self._adopt(sp_map.device, first)  # only now: a batch refused above fixes nothing
        given = {name: given[name] for name in self.inputs}
        ids = ids_cpu.to(sp_map.device)
        if self.spec.kind == "per_class":
            self._update_per_class(given, sp_map, ids, exclude)
        elif self.spec.kind == "pool_stats" and self.pass_index == 0:
            self._update_stats(given, sp_map, ids, exclude)
        else:
            self._update_top_b(given, sp_map, ids, exclude)
        self.seen.add(ids_cpu)  # only once the batch is in: a batch that raised can be given again

    def _check_ids(self, image_ids: Union[Tensor, Sequence[int]], n: int, unit: int) -> Tensor:
        if not isinstance(image_ids, Tensor):
            try:
                values = list(image_ids)
            except TypeError as err:
                raise TypeError(f"Expected `image_ids` to be a Tensor[n] or a sequence of ints, but got "
                                f"{type(image_ids).__name__}") from err
            # Integers only: floats, bools and float arrays are refused, not truncated.
            for v in values:
                if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                    raise TypeError(f"Expected `image_ids` to be integers, but got {type(v).__name__} {v!r}")
            if values and max(abs(int(v)) for v in values) > _SENTINEL:
                raise ValueError(f"Expected `image_ids` to fit in int64, but got {max(values, key=abs)}")
            image_ids = torch.as_tensor(values, dtype=torch.long)
        check_int_tensor(image_ids, "image_ids", ndim=1)
        check_shape(image_ids, "image_ids", (n,), "= (n,) to match sp_map")
        ids = image_ids.long().cpu()  # the duplicate check runs on the host anyway
        if ids.numel():
            lo, hi = int(ids.min()), int(ids.max())
            limit = (_SENTINEL - 1) // max(unit, 1) - 1
            if lo < 0:
                raise ValueError(f"Expected `image_ids` to be non-negative, but found {lo}")
            if hi > limit:
                raise ValueError(f"Expected `image_ids` <= {limit} (image_id * {unit} must fit in int64), "
                                 f"but found {hi}")
        return ids

    def _check_consistent(self, sp_map: Tensor, given: Dict[str, Optional[Tensor]], h: int,
                          w: int) -> Optional[Tuple[torch.device, torch.dtype, Optional[int], Tuple[int, int]]]:
        """Same device, dtype, classes (and H, W for a pixel-level strategy) as the batches before. Changes nothing:
        for the first batch with pixels, returns the settings it fixes once it has passed every check
        (:meth:`_adopt`); None otherwise."""
        main = next((given[x] for x in ("probs", "logits", "mc_probs") if x in self.inputs), None)
        device = sp_map.device
        dtype = self.spec.dtype if main is None else compute_dtype(main)
        classes = None
        if main is not None:
            classes = main.shape[2] if main.ndim == 5 else main.shape[1]
        if self.num_classes is not None and classes is not None and classes != self.num_classes:
            what = "labeled_counts" if self.labeled_counts is not None else "the earlier batches"
            raise ValueError(f"Expected {self.num_classes} classes (from {what}), but this batch has {classes} "
                             f"(shape {tuple(main.shape)})")
        if not sp_map.numel():  # no pixels to score: the batch sets neither device, dtype, classes nor H, W
            return None
        if self.device is None:
            return device, dtype, classes, (h, w)
        if device != self.device:
            raise ValueError(f"Expected every batch on {self.device} (the first batch's device), but got {device}")
        if dtype != self.dtype:
            raise ValueError(f"Expected every batch to be computed in {self.dtype} like the first batch, but this "
                             f"batch gives {dtype}; convert the batches to one dtype")
        if self.pixels and (h, w) != self.spatial:
            raise ValueError(f"Strategy {self.strategy!r} indexes pixels as h * W + w, so every batch needs the same "
                             f"H, W = {self.spatial}, but got {(h, w)}")
        return None

    def _adopt(self, device: torch.device, first: Optional[Tuple[torch.device, torch.dtype, Optional[int],
                                                                  Tuple[int, int]]]) -> None:
        """Moves the class counts to the batches' ``device``; ``first`` (from :meth:`_check_consistent`) fixes the
        stream's device, dtype, classes and H, W."""
        if self.labeled_counts is not None and self.labeled_counts.device != device:
            self.labeled_counts = self.labeled_counts.to(device)
            mask = self.options.get("class_mask")
            if mask is not None:
                self.options["class_mask"] = mask.to(device)
            if self.debt is not None:
                self.debt, self.columns = self.debt.to(device), self.columns.to(device)
        if first is not None:
            self.device, self.dtype, classes, self.spatial = first
            self.num_classes = classes if self.num_classes is None else self.num_classes
            self.unit = self.spatial[0] * self.spatial[1] if self.pixels else self.num_superpixels
            self.columns = self.columns.to(device)

    def _push(self, scores: Tensor, g: Tensor) -> None:
        """Add candidate columns ``(P, m)`` (empty slots: -inf and the sentinel)."""
        if self.budget == 0 or scores.shape[0] == 0:
            return
        if scores.shape[1] > self.capacity:  # a big batch: cut it first, it cannot add more than B per column
            scores, g = _prune(scores, g, self.capacity)
        self.pending.append((scores, g))
        self.pending_size += scores.shape[1]
        self._flush()

    def _flush(self, force: bool = False) -> None:
        if not self.pending or (not force and self.pending_size < max(self.capacity, 1024)):
            return
        parts = ([self.buffer] if self.buffer is not None else []) + self.pending
        self.buffer = _prune(torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1),
                             self.capacity)
        self.pending, self.pending_size = [], 0

    def _global(self, ids: Tensor, image: Tensor, local: Tensor) -> Tensor:
        return ids[image] * self.unit + local

    def _every_superpixel(self, ids: Tensor) -> Tensor:
        """Global indices ``(1, n * S)`` of every superpixel of the batch's images, in image-then-id order."""
        s = self.num_superpixels
        return (ids[:, None] * s + torch.arange(s, device=ids.device)).reshape(1, -1)

    def _count(self, cand: Tensor) -> None:
        """Add a batch's candidates to the pool's count (the too-few-candidates error needs the total)."""
        self.num_candidates = self.num_candidates.to(cand.device) + cand.sum()

    def _pool(self, given: Dict[str, Optional[Tensor]], sp_map: Tensor, ids: Tensor,
              exclude: Optional[Tensor]) -> _strategies.Pool:
        """The batch as the inputs of the strategy's functions."""
        return _strategies.Pool(sp_map, self.num_superpixels, self.budget, given.get("probs"), given.get("logits"),
                                given.get("mc_probs"), given.get("images"), self.labeled_counts, exclude, None, True,
                                ids, self.seed)

    def _candidates(self, sp_map: Tensor, exclude: Optional[Tensor]) -> Tensor:
        """``(n, U)`` bool: the batch's units that can be picked (non-empty superpixels, or pixels with an id)."""
        if self.pixels:
            cand = sp_map >= 0
            return (cand if exclude is None else cand & ~exclude).reshape(sp_map.shape[0], -1)
        return candidates(sp_map, self.num_superpixels, exclude, validate_args=False)

    def _update_per_class(self, given: Dict[str, Optional[Tensor]], sp_map: Tensor, ids: Tensor,
                          exclude: Optional[Tensor]) -> None:
        if self.spec.score is None:
            return self._update_per_class_by_fn(given, sp_map, ids, exclude)
        s = self.num_superpixels
        scores = self.spec.score(self._pool(given, sp_map, ids, exclude), self.aggregation, **self.options)
        cand = candidates(sp_map, s, exclude, validate_args=False)
        self._count(cand)
        n = sp_map.shape[0]
        g = self._every_superpixel(ids)
        cols = scores.reshape(n * s, -1)[:, self.columns].t()  # (P, n * S)
        cand = cand.reshape(1, -1)
        self._push(torch.where(cand, cols, float("-inf")), torch.where(cand, g, _SENTINEL).expand_as(cols))

    def _update_per_class_by_fn(self, given: Dict[str, Optional[Tensor]], sp_map: Tensor, ids: Tensor,
                                exclude: Optional[Tensor]) -> None:
        """Top B of each positive-debt column from the strategy itself: with a class mask that leaves only class
        ``c``, its debt is the whole budget and the greedy returns column ``c``'s top B (ties to the lower g).
        Exact, but it scores the batch once per kept column."""
        given, sp_map, ids, exclude = self._sorted_batch(given, sp_map, ids, exclude)
        pool = self._pool(given, sp_map, ids, exclude)
        opts = dict(self.options)
        eye = torch.eye(self.num_classes, dtype=torch.bool, device=sp_map.device)
        scores, gs = [], []
        for c in self.columns.tolist():
            opts["class_mask"] = eye[c]
            sel = self._fn(pool, self.aggregation, **opts)
            scores.append(sel.score)
            gs.append(self._global(ids, sel.image, sel.superpixel))
        self._count(candidates(sp_map, self.num_superpixels, exclude, validate_args=False))
        if scores:  # every column returns min(B, candidates of the batch) picks
            self._push(torch.stack(scores), torch.stack(gs))

    def _sorted_batch(self, given: Dict[str, Optional[Tensor]], sp_map: Tensor, ids: Tensor,
                      exclude: Optional[Tensor]):
        """The batch reordered by image id, so that ties inside it break like the global index."""
        if ids.numel() < 2 or bool((ids[1:] > ids[:-1]).all()):
            return given, sp_map, ids, exclude
        order = ids.sort().indices
        given = {k: (v.index_select(0, order) if v is not None else None) for k, v in given.items()}
        return given, sp_map.index_select(0, order), ids[order], (
            exclude.index_select(0, order) if exclude is not None else None)

    def _update_top_b(self, given: Dict[str, Optional[Tensor]], sp_map: Tensor, ids: Tensor,
                      exclude: Optional[Tensor]) -> None:
        """Keep the batch's top B: scored by ``Stream.score`` (against the pool statistics in the second pass of
        a ``"pool_stats"`` stream) or picked by the strategy's own function; the same floats as in memory."""
        given, sp_map, ids, exclude = self._sorted_batch(given, sp_map, ids, exclude)
        pool = self._pool(given, sp_map, ids, exclude)
        cand = self._candidates(sp_map, exclude)
        if self.spec.score is not None:
            extra = (self.stats,) if self.spec.kind == "pool_stats" else ()
            score = self.spec.score(pool, self.aggregation, *extra, **self.options).reshape(-1)
            index, value = topk(score, self.budget, candidates=cand.reshape(-1), allow_partial=True,
                                validate_args=False)
            image, local = index // self.unit, index % self.unit
        else:
            sel = self._fn(pool, self.aggregation, **self.options)
            image, local, value = sel.image, sel.superpixel, sel.score
        self._count(cand)
        g = self._global(ids, image, local)
        self._push(value.reshape(1, -1), g.reshape(1, -1))

    # ----------------------------------------------------------------------------------- pool statistics

    def _update_stats(self, given: Dict[str, Optional[Tensor]], sp_map: Tensor, ids: Tensor,
                      exclude: Optional[Tensor]) -> None:
        batch = self._checked(self.spec.stats(self._pool(given, sp_map, ids, exclude), self.aggregation,
                                              **self.options), "stats")
        st = self.stats
        if not st:
            st.update(batch)
        else:
            st.update({key: _MERGE[self.spec.reduce[key]](st[key], value) for key, value in batch.items()})

    def _checked(self, stats: Dict[str, Tensor], source: str) -> Dict[str, Tensor]:
        """The statistics a strategy's ``Stream.stats`` or ``Stream.neutral`` returned, checked against its
        ``Stream.reduce``: the same keys, and integer dtypes where they are summed."""
        reduce = self.spec.reduce
        if not isinstance(stats, dict) or set(stats) != set(reduce):
            got = sorted(stats) if isinstance(stats, dict) else type(stats).__name__
            raise ValueError(f"Strategy {self.strategy!r}: expected its Stream.{source} to return a dict with the "
                             f"keys of Stream.reduce {sorted(reduce)}, but got {got}")
        for key, value in stats.items():
            if reduce[key] == "sum" and (value.is_floating_point() or value.is_complex()):
                raise TypeError(f"Strategy {self.strategy!r}: statistic {key!r} is summed but has dtype "
                                f"{value.dtype}; a float sum depends on the batching, so the stream would not be "
                                f"exact: sum integers (e.g. fixed-point limbs, see oreal.strategies.class_mass)")
        return stats

    def next_pass(self) -> None:
        """End the first pass of a strategy with pool statistics (kind ``"pool_stats"``): fix the statistics
        (reduced over the ranks when distributed; a collective) and start the second pass, which must give the
        same images again (any batching and order)."""
        if self.num_passes == 1:
            two = [n for n, e in _strategies._REGISTRY.items()
                   if isinstance(e.stream, Stream) and e.stream.kind == "pool_stats"]
            raise RuntimeError(f"Strategy {self.strategy!r} streams in one pass; call compute() after the last "
                               f"update (next_pass() is for the strategies with pool statistics: {two})")
        if self.pass_index != 0:
            raise RuntimeError("next_pass() was already called; the second pass is running, call compute() after it")
        if self.distributed:
            self._reduce_stats()
        self.pass_index = 1
        self.first_pass_ids, self.seen = self.seen, _IdSet()

    # ------------------------------------------------------------------------------------------------ compute

    @torch.no_grad()
    def compute(self, *, allow_partial: bool = False) -> Selection:
        """The selection over every batch given so far (a collective when ``distributed``).

        Returns:
            Selection: ``image`` holds the global image ids; otherwise exactly what
            :func:`oreal.strategies.query` returns on the whole pool (same picks, classes, scores and order),
            on the batches' device. Raises the same ``ValueError`` when the pool has fewer candidates than the
            budget, unless ``allow_partial=True``.
        """
        check_flag(allow_partial, "allow_partial")
        if self.num_passes == 2 and self.pass_index == 0:
            raise RuntimeError(f"Strategy {self.strategy!r} needs two passes over the pool: call next_pass() after "
                               f"the first and update() with the same images again before compute()")
        if self.first_pass_ids is not None:
            first, second = self.first_pass_ids.state(), self.seen.state()
            if not torch.equal(first, second):
                raise ValueError(f"Expected the second pass to give the same images as the first, but the first had "
                                 f"{len(self.first_pass_ids)} image ids and the second {len(self.seen)} "
                                 f"(or different ids)")
        self._flush(force=True)
        device = self.device if self.device is not None else torch.device("cpu")
        dtype = self.dtype if self.dtype is not None else self.spec.dtype
        p = int(self.columns.numel()) if self.budget > 0 else 0
        if self.buffer is None:
            scores = torch.empty(p, 0, dtype=dtype, device=device)
            g = torch.empty(p, 0, dtype=torch.long, device=device)
        else:
            scores, g = self.buffer
        total = self.num_candidates
        if self.distributed:
            scores, g, total, dtype = self._gather(scores, g, dtype)
            device = scores.device
        total = int(total)
        budget = self.budget
        if self.spec.kind == "per_class":
            return self._finish_per_class(scores, g, total, allow_partial, dtype, device)
        valid = g[0] != _SENTINEL if g.shape[0] else torch.zeros(0, dtype=torch.bool, device=device)
        kept_scores = scores[0][valid] if g.shape[0] else scores.new_zeros(0)
        kept = g[0][valid] if g.shape[0] else g.new_zeros(0)
        if total < budget and not allow_partial:
            # The in-memory error: with fewer candidates than B every candidate is kept, so topk sees them all.
            topk(kept_scores, budget, candidates=torch.ones_like(kept, dtype=torch.bool), validate_args=False)
        index, value = topk(kept_scores, min(budget, kept.numel()),
                            candidates=torch.ones_like(kept, dtype=torch.bool), validate_args=False)
        g_pick = kept[index]
        return Selection(g_pick // self.unit_or_s, g_pick % self.unit_or_s, torch.full_like(g_pick, -1), value)

    @property
    def unit_or_s(self) -> int:
        return self.unit if self.unit is not None else self.num_superpixels

    def _finish_per_class(self, scores: Tensor, g: Tensor, total: int, allow_partial: bool, dtype: torch.dtype,
                          device: torch.device) -> Selection:
        s, c = self.num_superpixels, self.num_classes
        valid = g != _SENTINEL
        kept = torch.unique(g[valid])  # sorted: restricted index order == global index order
        table = torch.full((kept.numel(), c), float("-inf"), dtype=dtype, device=device)
        rows = torch.searchsorted(kept, g[valid])
        cols = self.columns.to(device)[:, None].expand_as(g)[valid]
        table[rows, cols] = scores[valid].to(dtype)
        # Every kept candidate is available; a class only reaches entries of its own column (its top B), never
        # the -inf fillers, whenever the pool has >= B candidates. With fewer, every candidate is kept in every
        # column and the greedy (and its error) is the in-memory one.
        index, cls, value = greedy_per_class(table, self.debt.to(device), self.labeled_counts.to(device),
                                             candidates=torch.ones(kept.numel(), dtype=torch.bool, device=device),
                                             allow_partial=allow_partial, validate_args=False)
        g_pick = kept[index]
        return Selection(g_pick // s, g_pick % s, cls, value)

    # -------------------------------------------------------------------------------------------- distributed

    def _comm_device(self) -> torch.device:
        import torch.distributed as dist

        if "nccl" in str(dist.get_backend(self.group)) and torch.cuda.is_available():  # also "cpu:gloo,cuda:nccl"
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def _all_gather(self, t: Tensor) -> List[Tensor]:
        import torch.distributed as dist

        world = dist.get_world_size(self.group)
        out = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(out, t.contiguous(), group=self.group)
        return out

    def _meta(self) -> List[Tensor]:
        """All ranks' (config, images, has data, dtype, unit); raises on every rank if they disagree."""
        dtype_code = -1 if self.dtype is None else _DTYPES.index(self.dtype)
        meta = torch.tensor([self._config_crc(), len(self.seen), int(self.device is not None), dtype_code,
                             -1 if self.unit is None else self.unit, self.pass_index], dtype=torch.long,
                            device=self._comm_device())
        metas = [m.cpu() for m in self._all_gather(meta)]
        if any(m[0] != metas[0][0] for m in metas):
            raise ValueError("Expected every rank's StreamingSelector to have the same strategy, budget, "
                             "num_superpixels, labeled_counts, aggregation, seed and options, but they differ")
        if any(m[5] != metas[0][5] for m in metas):
            raise RuntimeError("Expected every rank to be in the same pass (call next_pass() on every rank)")
        codes = {int(m[3]) for m in metas if m[2]}
        if len(codes) > 1:
            raise ValueError(f"Expected every rank to compute in one dtype, but got "
                             f"{sorted(str(_DTYPES[k]) for k in codes)}")
        units = {int(m[4]) for m in metas if m[2]}
        if len(units) > 1:
            raise ValueError(f"Expected every rank's batches to have the same H, W (strategy {self.strategy!r} "
                             f"indexes pixels as h * W + w)")
        return metas

    def _reduce_stats(self) -> None:
        import torch.distributed as dist

        metas = self._meta()
        comm = self._comm_device()
        codes = [int(m[3]) for m in metas if m[2]]
        dtype = _DTYPES[codes[0]] if codes else torch.float32
        st = self.stats
        if not st:  # a rank without data contributes neutral statistics
            c = self.num_classes if self.num_classes is not None else 0
            classes = [int(m) for m in self._all_gather(torch.tensor([c], device=comm))]
            c = max(classes)
            self.num_classes = c
            st.update(self._checked(self.spec.neutral(c, dtype), "neutral"))
        else:
            self._all_gather(torch.tensor([self.num_classes], device=comm))
        ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
        for key in sorted(st):
            t = st[key].to(comm).clone()
            dist.all_reduce(t, op=ops[self.spec.reduce[key]], group=self.group)
            st[key] = t.to(self.device if self.device is not None else "cpu")

    def _gather(self, scores: Tensor, g: Tensor, dtype: torch.dtype) -> Tuple[Tensor, Tensor, Tensor, torch.dtype]:
        metas = self._meta()
        codes = [int(m[3]) for m in metas if m[2]]
        dtype = _DTYPES[codes[0]] if codes else dtype
        units = [int(m[4]) for m in metas if m[2]]
        if units and self.unit is None:
            self.unit = units[0]
        comm = self._comm_device()
        local_device = self.device if self.device is not None else comm
        k = self.capacity
        scores, g = _pad(scores.to(comm, dtype), g.to(comm), k)
        total = sum(self._all_gather(self.num_candidates.reshape(1).to(comm))).cpu()[0]
        all_scores = torch.cat(self._all_gather(scores), 1)
        all_g = torch.cat(self._all_gather(g), 1)
        if all_g.numel():
            srt = all_g.sort(dim=1).values
            dup = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] != _SENTINEL)
            if bool(dup.any()):
                image = int(srt[:, 1:][dup][0]) // (self.unit or self.num_superpixels)
                raise ValueError(f"Expected each image on one rank only, but image id {image} was streamed by more "
                                 f"than one rank (a DistributedSampler pads shards with repeated images unless "
                                 f"the pool divides evenly; shard with range(rank, N, world_size) instead)")
        scores, g = _prune(all_scores, all_g, k)
        return scores.to(local_device), g.to(local_device), total, dtype


_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]

# How a statistic of a "pool_stats" stream combines over batches (over ranks: the all-reduce of the same name).
_MERGE = {"sum": torch.add, "min": torch.minimum, "max": torch.maximum}
