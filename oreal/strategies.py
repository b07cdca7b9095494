"""Every acquisition method of the seed papers behind one call (SPEC sections 1, 4 and 5).

An active-learning loop switches method by name::

    sel = oreal.strategies.query("oreal", probs=probs, sp_map=sp_map, num_superpixels=S, budget=B,
                                 labeled_counts=counts, exclude=labeled)

:func:`available` lists the names with one-line summaries; ``docs/strategies.md`` has the table of formulas,
inputs, source papers and costs. Every strategy returns an :class:`oreal.Selection` in pick order, on
``sp_map``'s device, and:

- picks exactly ``budget`` candidates (non-empty superpixels not in ``exclude``), or raises a ``ValueError``
  naming both numbers when there are fewer, unless ``allow_partial=True``;
- never picks a superpixel twice and never modifies its inputs;
- breaks score ties towards the lower global index ``g = n * S + s`` (``h * W + w`` within an image and then
  by image for the pixel-level ``balent_pixel``);
- is deterministic; the only random one, ``random``, draws only from the explicit ``generator``.

Each strategy uses only the inputs it lists (:func:`requirements`); others that are passed are ignored, so a loop
can pass everything it has and switch by name. Missing inputs, unknown names, unsupported aggregations and
unknown options raise errors that say what was expected.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from oreal._checks import (
    check_bool_tensor,
    check_flag,
    check_float,
    check_images,
    check_int,
    check_int_tensor,
    check_number,
    check_real,
    check_same_device,
    check_shape,
    compute_dtype,
    validate_finite,
    validate_nonnegative,
    validate_probabilities,
)
from oreal.aggregate import aggregate, check_sp_map, dominant_labels, flat_index, per_class, scatter_rows
from oreal.balance import class_counts, class_debt
from oreal.crf import CRF_DEFAULTS, check_crf_images, check_crf_options, crf_refine
from oreal.select import (
    Selection,
    candidates,
    empty_selection,
    greedy_per_class,
    select,
    superpixel_ovr_entropy,
    topk,
)
from oreal.uncertainty import _binary_entropy_into, _mean, _top2, bald, balent, bvsb, entropy, margin

__all__ = ["available", "requirements", "query", "register", "unregister", "Stream", "Pool", "class_mass",
           "class_mean"]

# Pixel scores are computed on blocks of whole images of at most this many input elements, so the temporaries
# of a score (e.g. ``p ln p`` of a block) never reach the size of the whole pool.
_BLOCK_ELEMENTS = 1 << 24

_INPUT_SHAPES = {
    "probs": "Tensor[N, C, H, W] softmax probabilities",
    "logits": "Tensor[N, C, H, W] raw logits",
    "mc_probs": "Tensor[N, K, C, H, W] softmax probabilities of K MC-dropout passes",
    "images": "Tensor[N, channels, H, W] or Tensor[N, H, W] images",
    "labeled_counts": "Tensor[C] int64 labeled superpixels per class",
    "generator": "torch.Generator",
}


class _Pool(NamedTuple):
    """The validated inputs of one :func:`query` call, or of one batch of :class:`oreal.stream.StreamingSelector`
    (then ``budget`` is the stream's, ``allow_partial`` is True, and ``image_ids`` (``Tensor[N]`` int64, ascending)
    and ``seed`` are set). A strategy's functions (:func:`register`) read the inputs they require from it."""

    sp_map: Tensor
    num_superpixels: int
    budget: int
    probs: Optional[Tensor]
    logits: Optional[Tensor]
    mc_probs: Optional[Tensor]
    images: Optional[Tensor]
    labeled_counts: Optional[Tensor]
    exclude: Optional[Tensor]
    generator: Optional[torch.Generator]
    allow_partial: bool
    image_ids: Optional[Tensor] = None
    seed: Optional[int] = None

    @property
    def index(self) -> Tensor:
        return flat_index(self.sp_map, self.num_superpixels)

    def candidates(self) -> Tensor:
        """Flat ``(N * S,)`` bool: non-empty and not excluded."""
        return candidates(self.sp_map, self.num_superpixels, self.exclude, validate_args=False).reshape(-1)


#: The public name of the inputs a strategy's functions get (fields: ``sp_map``, ``num_superpixels``, ``budget``,
#: ``probs``, ``logits``, ``mc_probs``, ``images``, ``labeled_counts``, ``exclude``, ``generator``,
#: ``allow_partial``, ``image_ids``, ``seed``; ``index`` and ``candidates()`` as above).
Pool = _Pool


# ----------------------------------------------------------------------------------------------------- helpers


def _by_images(fn: Callable[..., Tensor], x: Tensor) -> Tensor:
    """``fn(x)`` computed on blocks of whole images (dim 0) and concatenated (each output, when ``fn`` returns a
    tuple), to bound the temporaries."""
    per_image = max(1, x[0].numel()) if x.shape[0] else 1
    block = max(1, _BLOCK_ELEMENTS // per_image)
    if block >= x.shape[0]:
        return fn(x)
    outs = [fn(part) for part in x.split(block)]
    return tuple(map(torch.cat, zip(*outs))) if isinstance(outs[0], tuple) else torch.cat(outs)


def _pixel_score(fn: Callable[..., Tensor], x: Tensor) -> Tensor:
    """A score of :mod:`oreal.uncertainty` per pixel, ``(N, H, W)``, inputs already validated."""
    return _by_images(lambda part: fn(part, validate_args=False), x)


def _reduce(pool: _Pool, score: Tensor, aggregation: str) -> Tensor:
    """``(N, H, W)`` pixel score -> flat ``(N * S,)`` superpixel score (empty superpixels 0)."""
    src = score.reshape(score.shape[0], -1)
    return scatter_rows(src, pool.index, pool.num_superpixels, aggregation).reshape(-1)


def _top(pool: _Pool, scores: Tensor, cand: Optional[Tensor] = None) -> Selection:
    """Class-agnostic top-B of flat superpixel scores, ties to the lower ``g``."""
    cand = pool.candidates() if cand is None else cand
    index, score = topk(scores, pool.budget, candidates=cand, allow_partial=pool.allow_partial, validate_args=False)
    s = pool.num_superpixels
    return Selection(index // s, index % s, torch.full_like(index, -1), score)


def _greedy(pool: _Pool, scores: Tensor, class_mask: Optional[Tensor]) -> Selection:
    """OREAL's class debt + per-class greedy on flat ``(N * S, C)`` scores."""
    counts = pool.labeled_counts
    debt = class_debt(counts, pool.budget, class_mask=class_mask, validate_args=False)
    index, cls, score = greedy_per_class(scores, debt, counts, candidates=pool.candidates(),
                                         allow_partial=pool.allow_partial, validate_args=False)
    s = pool.num_superpixels
    return Selection(index // s, index % s, cls, score)


def _num_classes(pool: _Pool) -> int:
    for x in (pool.probs, pool.logits):
        if x is not None:
            return x.shape[1]
    assert pool.mc_probs is not None
    return pool.mc_probs.shape[2]


def _check_class_mask(class_mask: Optional[Tensor], pool: _Pool) -> Optional[Tensor]:
    if class_mask is not None:
        c = _num_classes(pool)
        check_bool_tensor(class_mask, "class_mask", (c,))
        check_same_device(class_mask, "class_mask", pool.sp_map, "sp_map")
    return class_mask


def _edge_weight(images: Tensor, alpha: float) -> Tensor:
    """``w(x) = 1 + alpha * e(x)``, ``e`` = Sobel gradient magnitude of the channel-mean image, divided by its
    per-image maximum (``e = 0`` on a flat image); replicate padding at the border. ``(N, H, W)`` float32."""
    x = images.float() if not images.is_floating_point() else images.to(compute_dtype(images))
    gray = (_mean(x, 1) if x.ndim == 4 else x).unsqueeze(1)  # channel mean in index order: any layout
    # Each image scaled by the power of two that brings its largest |value| into [0.5, 1): exact, so e keeps its
    # bits, and gx^2 + gy^2 can neither overflow (values of 1e20) nor vanish (values of 1e-25).
    _, exponent = torch.frexp(gray.abs().amax(dim=(1, 2, 3), keepdim=True))
    gray = gray * torch.pow(torch.tensor(2.0, dtype=gray.dtype, device=gray.device), -exponent.to(gray.dtype))
    # Sobel by slicing, not conv2d: conv2d's rounding depends on how many images it runs on, slices give the
    # same floats for an image whatever the batch (so oreal.stream reproduces the in-memory scores exactly).
    p = F.pad(gray, (1, 1, 1, 1), mode="replicate")[:, 0]
    gx = (p[:, :-2, 2:] - p[:, :-2, :-2]) + 2 * (p[:, 1:-1, 2:] - p[:, 1:-1, :-2]) + (p[:, 2:, 2:] - p[:, 2:, :-2])
    gy = (p[:, 2:, :-2] - p[:, :-2, :-2]) + 2 * (p[:, 2:, 1:-1] - p[:, :-2, 1:-1]) + (p[:, 2:, 2:] - p[:, :-2, 2:])
    mag = (gx.square() + gy.square()).sqrt()  # (N, H, W)
    top = mag.amax(dim=(1, 2), keepdim=True)
    e = torch.where(top > 0, mag / torch.where(top > 0, top, 1), 0)
    return 1 + alpha * e


#: Bits per limb of :func:`class_mass`: each softmax value is held as ``hi * 2^-24 + lo * 2^-48``.
MASS_BITS = 24


def class_mass(logits: Tensor, sp_map: Tensor, temperature: float) -> Tensor:
    """PixelBal's class mass ``sum_x softmax(logits(x) / T)`` over the pixels in a superpixel, as exact integers.

    Each value of ``softmax(logits / T)`` (in the compute dtype, float32 for half inputs) is rounded to a multiple
    of ``2^-48`` and split into two 24-bit limbs, ``hi * 2^-24 + lo * 2^-48``; each limb is summed exactly (its
    float64 partial sums are integers below ``2^53``) and returned as int64. Integer sums do not depend on the
    order of the additions, so the pool mass, and with it :func:`class_mean`, is bit-for-bit the same for any
    blocking, batching (:mod:`oreal.stream`) or sharding, and within ``4e-15`` of the float sum per pixel. Pixels
    with ``sp_map == -1`` do not count. The limbs are computed in the compute dtype, in place, one class plane at a
    time: scaling by a power of two, ``floor``, the fraction and ``round`` are exact there, so they are the integers a
    float64 computation gives.

    Args:
        logits (Tensor[N, C, H, W]): raw logits.
        sp_map (Tensor[N, H, W]): superpixel ids, ``-1`` for no superpixel.
        temperature: ``T > 0``; a ``ValueError`` where ``logits / T`` overflows (finite logits are assumed).

    Returns:
        Tensor[2, C]: int64 limb sums (``hi``, ``lo``); add those of several batches, then :func:`class_mean`.

    Example:
        >>> class_mass(torch.zeros(1, 2, 1, 2), torch.tensor([[[0, -1]]]), 0.1)  # one pixel at (0.5, 0.5)
        tensor([[8388608, 8388608],
                [      0,       0]])
    """
    n, c = logits.shape[:2]
    if not c:
        return torch.zeros(2, 0, dtype=torch.long, device=logits.device)
    pixels = logits.shape[-2] * logits.shape[-1]  # not -1: N may be 0
    q = torch.softmax(logits.to(compute_dtype(logits)).reshape(n, c, pixels) / temperature, dim=1)
    valid = sp_map >= 0
    if not bool(valid.all()):
        q.mul_(valid.reshape(n, 1, pixels))  # pixels outside every superpixel weigh 0
    scale = float(1 << MASS_BITS)
    sums = []
    hi = torch.empty_like(q[:, 0])
    for k in range(c):
        lo = q[:, k].mul_(scale)  # q * 2^24: exact
        torch.floor(lo, out=hi)
        lo.sub_(hi).mul_(scale).round_()  # the fraction, times 2^24: exact; then rounded to an integer
        # integer partial sums below 2^53: exact in float64 in any order
        sums += [hi.sum(dtype=torch.float64), lo.sum(dtype=torch.float64)]
    total = torch.stack(sums)
    if not bool(torch.isfinite(total).all()):  # finite logits give NaN only where logits / T overflows
        raise ValueError(f"Expected `logits / temperature` to be finite in {q.dtype}, but it overflows at "
                         f"temperature={temperature:g} (the largest |logit| is "
                         f"{float(logits.detach().abs().max()):.4g}); use a larger temperature")
    return total.reshape(c, 2).t().long()


def class_mean(mass: Tensor, pixels: Tensor, dtype: torch.dtype) -> Tensor:
    """PixelBal's pool mean ``p_bar`` from the exact :func:`class_mass` (summed over the pool) and the pool's pixel
    count, computed in float64 from the integers and rounded once to ``dtype``.

    Example:
        >>> class_mean(torch.tensor([[8388608, 8388608], [0, 0]]), torch.tensor(1), torch.float32)
        tensor([0.5000, 0.5000])
    """
    scale = float(1 << MASS_BITS)
    total = mass[0].double() / scale + mass[1].double() / (scale * scale)
    return (total / pixels.clamp_min(1).double()).to(dtype)


def keyed_uniform(g: Tensor, seed: int) -> Tensor:
    """A uniform key in ``[0, 1)`` (float64, 53 bits) for each global index ``g``: SplitMix64 of ``g`` mixed with
    ``seed``. Deterministic on every device; the streamed ``random`` strategy ranks candidates by it.

    Example:
        >>> k = keyed_uniform(torch.arange(4), seed=0)
        >>> bool(((k >= 0) & (k < 1)).all()), torch.equal(k, keyed_uniform(torch.arange(4), seed=0))
        (True, True)
    """

    def shr(x: Tensor, k: int) -> Tensor:  # logical shift right of int64 bit patterns
        return (x >> k) & ((1 << (64 - k)) - 1)

    def signed(u: int) -> int:
        return u - (1 << 64) if u >= (1 << 63) else u

    x = g.long() ^ signed((seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % (1 << 64))
    x = x + signed(0x9E3779B97F4A7C15)
    x = (x ^ shr(x, 30)) * signed(0xBF58476D1CE4E5B9)
    x = (x ^ shr(x, 27)) * signed(0x94D049BB133111EB)
    x = x ^ shr(x, 31)
    return shr(x, 11).double() * 2.0 ** -53


def _random_keys(pool: _Pool, aggregation: Optional[str]) -> Tensor:
    """The streamed ``random``: :func:`keyed_uniform` of every superpixel's global index, ``(n, S)`` float64."""
    s = pool.num_superpixels
    return keyed_uniform(pool.image_ids[:, None] * s + torch.arange(s, device=pool.image_ids.device), pool.seed)


def _random(pool: _Pool, aggregation: Optional[str]) -> Selection:
    gen = pool.generator
    n, s = pool.sp_map.shape[0], pool.num_superpixels
    # One uniform key per superpixel (all N * S of them, so the generator advances the same whatever is
    # excluded); the top-B keys among the candidates are a uniformly random B-subset of them. float32 keys
    # whatever torch's default dtype (which would change the draws); 24 bits, so ties at the cut are possible
    # (about n / 2^24 for n candidates) and go, like every tie, to the lower index.
    keys = torch.rand(n * s, generator=gen, device=gen.device, dtype=torch.float32).to(pool.sp_map.device)
    return _top(pool, keys)


def _uncertainty(fn: Callable[..., Tensor]) -> Callable[..., Selection]:
    def strategy(pool: _Pool, aggregation: str) -> Selection:
        return _top(pool, _reduce(pool, _pixel_score(fn, pool.probs), aggregation))

    return strategy


def _bvsb_and_argmax(probs: Tensor) -> Tuple[Tensor, Tensor]:
    """:func:`oreal.bvsb` (the same bits) and the predicted class (``argmax``, first maximum) of each pixel, from one
    running top-2."""
    first, second, index = _top2(probs.to(compute_dtype(probs)), labels=torch.arange(probs.shape[1]))
    return second / first, index


def revisiting_terms(probs: Tensor, sp_map: Tensor, num_superpixels: int, aggregation: str) -> Tuple[Tensor, Tensor]:
    """Revisiting SP's per-superpixel terms: ``u`` = BvSB ratio aggregated over the superpixel and the dominant
    predicted class (ties to the lower class, ``-1`` for empty superpixels), both ``(N, S)``. Inputs validated.
    Every value depends on its own image only, so :mod:`oreal.stream` computes it batch by batch."""
    ratio, pred = _by_images(_bvsb_and_argmax, probs)  # (N, H, W) each
    u = aggregate(ratio, sp_map, num_superpixels, aggregation, validate_args=False)
    dom = dominant_labels(pred, sp_map, num_superpixels, probs.shape[1], ignore_index=-1, validate_args=False)
    return u, dom


def revisiting_stats(u: Tensor, dom: Tensor, cand: Tensor, num_classes: int) -> Dict[str, Tensor]:
    """Pool statistics of Revisiting SP over the candidates: min and max of ``u``, the count of candidates per
    dominant class and the number of candidates. Min, max and integer counts combine exactly across batches."""
    inf = torch.tensor(float("inf"), dtype=u.dtype, device=u.device)
    return {"lo": torch.where(cand, u, inf).amin(), "hi": torch.where(cand, u, -inf).amax(),
            "counts": class_counts(torch.where(cand, dom, -1), num_classes, validate_args=False),
            "cand": cand.sum()}


def revisiting_score(u: Tensor, dom: Tensor, stats: Dict[str, Tensor]) -> Tensor:
    """``U~ * exp(-pi_c)``: ``u`` min-max normalised by the pool's ``lo``/``hi`` (a pool of equal uncertainties
    normalises to 1 **(ours)**, so the class rarity factor still ranks it) times ``exp`` of minus the pool
    frequency of the dominant predicted class."""
    lo, hi = stats["lo"].to(u.device), stats["hi"].to(u.device)
    span = hi - lo
    u_norm = torch.where(span > 0, (u - lo) / torch.where(span > 0, span, 1), 1)
    freq = stats["counts"].to(u.device).to(u.dtype) / stats["cand"].to(u.device).clamp_min(1)
    return u_norm * torch.exp(-freq[dom.clamp_min(0)])


def _revisiting_stream_stats(pool: _Pool, aggregation: str) -> Dict[str, Tensor]:
    u, dom = revisiting_terms(pool.probs, pool.sp_map, pool.num_superpixels, aggregation)
    cand = candidates(pool.sp_map, pool.num_superpixels, pool.exclude, validate_args=False)
    return revisiting_stats(u, dom, cand, pool.probs.shape[1])


def _revisiting_stream_score(pool: _Pool, aggregation: str, stats: Dict[str, Tensor]) -> Tensor:
    u, dom = revisiting_terms(pool.probs, pool.sp_map, pool.num_superpixels, aggregation)
    return revisiting_score(u, dom, stats)


def _revisiting_neutral(num_classes: int, dtype: torch.dtype) -> Dict[str, Tensor]:
    return {"lo": torch.tensor(float("inf"), dtype=dtype), "hi": torch.tensor(float("-inf"), dtype=dtype),
            "counts": torch.zeros(num_classes, dtype=torch.long), "cand": torch.zeros((), dtype=torch.long)}


def _revisiting_sp(pool: _Pool, aggregation: str) -> Selection:
    u, dom = revisiting_terms(pool.probs, pool.sp_map, pool.num_superpixels, aggregation)
    cand = pool.candidates().reshape(u.shape)
    score = revisiting_score(u, dom, revisiting_stats(u, dom, cand, pool.probs.shape[1]))
    return _top(pool, score.reshape(-1), cand.reshape(-1))


def pixelbal_weight(mass: Tensor, pixels: Tensor, mu: float, dtype: torch.dtype) -> Tensor:
    """PixelBal's class weights ``w_c = (1 + mu * p_bar_c)^-2`` from the exact pool mass (:func:`class_mass`)."""
    return (1 + mu * class_mean(mass, pixels, dtype)).pow(-2)


def pixelbal_pixel_score(logits: Tensor, weight: Tensor) -> Tensor:
    """``r(x) * w_{argmax(x)}`` per pixel, ``(N, H, W)``: the BvSB ratio of ``softmax(logits)`` (temperature 1,
    computed as ``exp(z_(2) - z_(1))`` without the softmax) weighted by the predicted class's weight."""
    first, second, w = _top2(logits.to(weight.dtype), labels=weight)
    return torch.exp(second - first).mul_(w)


def _pixelbal(pool: _Pool, aggregation: str, temperature: float, mu: float) -> Selection:
    logits, sp_map = pool.logits, pool.sp_map
    block = max(1, _BLOCK_ELEMENTS // max(1, logits[0].numel())) if logits.shape[0] else 1
    # Exact integer mass: the same p_bar for any blocking, batching (oreal.stream) or sharding.
    mass = sum(class_mass(part, sp, temperature) for part, sp in zip(logits.split(block), sp_map.split(block)))
    weight = pixelbal_weight(mass, (sp_map >= 0).sum(), mu, compute_dtype(logits))
    pixel = _by_images(lambda part: pixelbal_pixel_score(part, weight), logits)
    return _top(pool, _reduce(pool, pixel, aggregation))


def _pixelbal_stream_stats(pool: _Pool, aggregation: str, temperature: float, mu: float) -> Dict[str, Tensor]:
    return {"mass": class_mass(pool.logits, pool.sp_map, temperature), "pixels": (pool.sp_map >= 0).sum()}


def _pixelbal_stream_score(pool: _Pool, aggregation: str, stats: Dict[str, Tensor], temperature: float,
                           mu: float) -> Tensor:
    logits = pool.logits
    weight = pixelbal_weight(stats["mass"].to(logits.device), stats["pixels"].to(logits.device), mu,
                             compute_dtype(logits))
    pixel = pixelbal_pixel_score(logits, weight)
    return aggregate(pixel, pool.sp_map, pool.num_superpixels, aggregation, validate_args=False)


def _pixelbal_neutral(num_classes: int, dtype: torch.dtype) -> Dict[str, Tensor]:
    # the (hi, lo) limb sums of class_mass
    return {"mass": torch.zeros(2, num_classes, dtype=torch.long), "pixels": torch.zeros((), dtype=torch.long)}


def _cbal_terms(pool: _Pool, aggregation: str, class_mask: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
    """Flat superpixel entropy ``(G,)``, mean class probabilities ``(G, C)`` and the class debt ``(C,)``."""
    probs = pool.probs
    c = probs.shape[1]
    ent = _reduce(pool, _pixel_score(entropy, probs), aggregation)
    mean_p = per_class(probs, pool.index, pool.num_superpixels, "mean").reshape(-1, c)
    debt = class_debt(pool.labeled_counts, pool.budget, class_mask=class_mask, validate_args=False)
    return ent, mean_p, debt


def _cbal(pool: _Pool, aggregation: str, lam: float, class_mask: Optional[Tensor]) -> Selection:
    ent, mean_p, debt = _cbal_terms(pool, aggregation, _check_class_mask(class_mask, pool))
    target = debt.to(mean_p.dtype) / debt.sum().clamp_min(1)
    score = ent - lam * (mean_p - target).abs().sum(1)
    return _top(pool, score)


def _cbal_milp(pool: _Pool, aggregation: str, lam: float, class_mask: Optional[Tensor], max_candidates: int,
               time_limit: Optional[float]) -> Selection:
    try:
        import numpy as np
        from scipy.optimize import Bounds, LinearConstraint, milp
    except ImportError as err:  # pragma: no cover - scipy is a test dependency
        raise ImportError("strategy 'cbal_milp' needs scipy (scipy.optimize.milp); install it with "
                          "`pip install \"oreal[milp]\"`, or use the greedy surrogate 'cbal'") from err
    max_candidates = check_int(max_candidates, "max_candidates", minimum=1)
    ent, mean_p, debt = _cbal_terms(pool, aggregation, _check_class_mask(class_mask, pool))
    cand = pool.candidates()
    num_cand = int(cand.sum())
    take = min(pool.budget, num_cand) if pool.allow_partial else pool.budget
    # Solve only when a proper subset is chosen: with take == num_cand every candidate is taken, and with
    # take > num_cand the final top-B raises the usual "fewer candidates than budget" error.
    if 0 < take < num_cand:
        if num_cand > max_candidates:
            raise ValueError(f"strategy 'cbal_milp' solves an exact MIP and is limited to max_candidates = "
                             f"{max_candidates} candidate superpixels, but the pool has {num_cand}; use the greedy "
                             f"surrogate 'cbal', or raise max_candidates (the solve time grows quickly)")
        idx = cand.nonzero().squeeze(1)
        u = -ent[idx].double().cpu().numpy()  # U = negative entropy
        p = mean_p[idx].double().cpu().numpy()  # (G', C)
        omega = debt.double().cpu().numpy()
        g, c = p.shape
        # Variables [z (G'), t (C)]: min U.z + lam * sum t  s.t.  sum z = B,  |P^T z - Omega| <= t.
        cost = np.concatenate([u, np.full(c, float(lam))])
        eye = np.eye(c)
        rows = np.vstack([np.concatenate([np.ones(g), np.zeros(c)])[None],
                          np.hstack([p.T, -eye]), np.hstack([-p.T, -eye])])
        lower = np.concatenate([[take], np.full(c, -np.inf), np.full(c, -np.inf)])
        upper = np.concatenate([[take], omega, -omega])
        opts = {} if time_limit is None else {"time_limit": float(time_limit)}
        res = milp(cost, constraints=LinearConstraint(rows, lower, upper),
                   integrality=np.concatenate([np.ones(g), np.zeros(c)]),
                   bounds=Bounds(np.zeros(g + c), np.concatenate([np.ones(g), np.full(c, np.inf)])), options=opts)
        if res.status != 0 or res.x is None:
            raise RuntimeError(f"strategy 'cbal_milp': scipy.optimize.milp found no proven optimum "
                               f"(status {res.status}: {res.message}); raise time_limit or use 'cbal'")
        chosen = torch.from_numpy(res.x[:g] > 0.5).to(cand.device)
        cand = torch.zeros_like(cand).index_put_((idx,), chosen)
    # Picks come out by descending entropy (ties to the lower g); the score is the superpixel entropy.
    return _top(pool, ent, cand)


def _oreal(pool: _Pool, aggregation: str, class_mask: Optional[Tensor]) -> Selection:
    return select(pool.probs, pool.sp_map, pool.labeled_counts, pool.budget, num_superpixels=pool.num_superpixels,
                  exclude=pool.exclude, aggregation=aggregation, class_mask=_check_class_mask(class_mask, pool),
                  allow_partial=pool.allow_partial, validate_args=False)


def _oreal_columns(pool: _Pool, aggregation: str, class_mask: Optional[Tensor]) -> Tensor:
    """OREAL's one-vs-rest entropy ``(n, S, C)``, the scores :func:`oreal.select` ranks each class by."""
    return superpixel_ovr_entropy(pool.probs, pool.sp_map, pool.num_superpixels, aggregation, validate_args=False)


def _mc(fn: Callable[..., Tensor]) -> Callable[..., Selection]:
    def strategy(pool: _Pool, aggregation: str) -> Selection:
        return _top(pool, _reduce(pool, _pixel_score(fn, pool.mc_probs), aggregation))

    return strategy


def _balent_pixel(pool: _Pool, aggregation: Optional[str]) -> Selection:
    n, h, w = pool.sp_map.shape
    score = _pixel_score(balent, pool.mc_probs).reshape(-1)
    cand = (pool.sp_map >= 0).reshape(-1)
    if pool.exclude is not None:
        cand = cand & ~pool.exclude.reshape(-1)
    index, value = topk(score, pool.budget, candidates=cand, allow_partial=pool.allow_partial, validate_args=False)
    return Selection(index // (h * w), index % (h * w), torch.full_like(index, -1), value)


def _edge_weights(pool: _Pool, alpha: float) -> Tensor:
    return _by_images(lambda part: _edge_weight(part, alpha), pool.images)


def _edge_entropy(pool: _Pool, aggregation: str, alpha: float) -> Selection:
    weight = _edge_weights(pool, alpha)
    score = _pixel_score(entropy, pool.probs) * weight.to(compute_dtype(pool.probs))
    return _top(pool, _reduce(pool, score, aggregation))


def _edge_entropy_class(pool: _Pool, aggregation: str, alpha: float, class_mask: Optional[Tensor]) -> Selection:
    probs = pool.probs
    weight = _edge_weights(pool, alpha).to(compute_dtype(probs)).reshape(probs.shape[0], -1)
    scores = per_class(probs, pool.index, pool.num_superpixels, aggregation, scratch=3,
                       transform=lambda slab, b, where: _binary_entropy_into(slab, *b).mul_(weight[where].unsqueeze(1)))
    return _greedy(pool, scores.reshape(-1, probs.shape[1]), _check_class_mask(class_mask, pool))


def _crf_refined(pool: _Pool, options: Dict[str, Any]) -> Tensor:
    """``pool.probs`` refined by :func:`oreal.crf.crf_refine` with the strategy's CRF options. The colour range of
    ``images`` is always checked (one host sync, small next to the CRF): the bilateral kernel reads integer images as
    0-255 and floating point ones as ``[0, 1]``."""
    check_crf_images(pool.images, tuple(pool.sp_map.shape), pool.probs, validate_args=True)
    return crf_refine(pool.probs, pool.images, validate_args=False, **options)


def _sp_crf(pool: _Pool, aggregation: str, **crf: Any) -> Selection:
    probs = _crf_refined(pool, crf)
    return _top(pool, _reduce(pool, _pixel_score(entropy, probs), aggregation))


def _sp_crf_columns(pool: _Pool, aggregation: str, class_mask: Optional[Tensor], **crf: Any) -> Tensor:
    """One-vs-rest entropy of the CRF-refined probabilities per superpixel and class, ``(n, S, C)``."""
    return superpixel_ovr_entropy(_crf_refined(pool, crf), pool.sp_map, pool.num_superpixels, aggregation,
                                  validate_args=False)


def _sp_crf_class(pool: _Pool, aggregation: str, class_mask: Optional[Tensor], **crf: Any) -> Selection:
    scores = _sp_crf_columns(pool, aggregation, class_mask, **crf)
    return _greedy(pool, scores.reshape(-1, scores.shape[-1]), _check_class_mask(class_mask, pool))


def resolve_options(name: str, aggregation: Optional[str], options: Dict[str, Any]) -> Tuple[Optional[str],
                                                                                           Dict[str, Any]]:
    """The aggregation a strategy runs with (``None`` = its default; ``None`` for strategies without one) and its
    options merged over their defaults; unknown options and unsupported aggregations raise. Shared by
    :func:`query` and :class:`oreal.stream.StreamingSelector`."""
    spec = _lookup(name)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ValueError(f"Unknown option(s) {unknown} for strategy {name!r}; expected a subset of "
                         f"{sorted(spec.options)}")
    if aggregation is None:
        aggregation = spec.aggregations[0] if spec.aggregations else None
    elif not spec.aggregations:
        raise ValueError(f"Strategy {name!r} has no aggregation; expected aggregation=None, but got {aggregation!r}")
    elif aggregation not in spec.aggregations:
        raise ValueError(f"Expected `aggregation` for strategy {name!r} to be one of {list(spec.aggregations)}, "
                         f"but got {aggregation!r}")
    return aggregation, dict(spec.options, **options)


def check_options(options: Dict[str, Any]) -> None:
    """The strategies' option values, each in its range; shared by :func:`query` and
    :class:`oreal.stream.StreamingSelector`.

    ``lam``, ``mu``, ``alpha``: finite numbers ``>= 0`` (a negative weight inverts what the method ranks: balance
    for ``lam``, the rare-class preference for ``mu``, the edge preference for ``alpha``; ``0`` switches the term
    off). ``temperature``: a finite number ``> 0``. ``time_limit``: ``None`` (no limit) or a finite number of
    seconds ``> 0``. ``max_candidates``: an integer ``>= 1``. The CRF options of ``sp_crf`` and ``sp_crf_class``:
    as :func:`oreal.crf.crf_refine` checks them.
    """
    for key, positive in (("lam", False), ("mu", False), ("alpha", False), ("temperature", True),
                          ("time_limit", True)):
        if key not in options or (key == "time_limit" and options[key] is None):
            continue
        check_number(options[key], key, positive=positive, kind="option", none_ok=key == "time_limit")
    if "max_candidates" in options:
        check_int(options["max_candidates"], "max_candidates", minimum=1)
    if CRF_DEFAULTS.keys() <= options.keys():
        check_crf_options(*(options[key] for key in CRF_DEFAULTS))


# ----------------------------------------------------------------------------------------------------- registry


#: How each kind of :class:`Stream` is streamed (what :func:`oreal.stream.streamable` says).
STREAM_KINDS = {
    "top_b": "one pass, top-B candidates kept",
    "per_class": "one pass, top-B candidates per class with positive debt kept",
    "pool_stats": "two passes: exact pool statistics, then top-B candidates kept",
}
_REDUCE_OPS = ("sum", "min", "max")


class Stream(NamedTuple):
    """How a strategy streams in :class:`oreal.stream.StreamingSelector`: the ``stream=`` of its registry entry.

    The functions get the batch as a :data:`Pool` (image ids ascending), the aggregation and the strategy's options
    as keywords (``fn(pool, aggregation, **options)``), on inputs already validated. ``U`` below is ``S``, or
    ``H * W`` for a pixel-level strategy (``pixels=True`` in :func:`register`).

    - ``"top_b"``: every unit's score depends on its own image only. ``score`` (optional) returns the batch's
      scores ``Tensor[n, U]``; without it the strategy's own function runs on the batch and its picks (the batch's
      top ``B``, ``allow_partial=True``) are kept.
    - ``"per_class"``: OREAL's class debt and per-class greedy; needs ``labeled_counts``. ``score`` (optional)
      returns ``Tensor[n, S, C]``, the column each class is ranked by; without it each positive-debt column's top
      ``B`` comes from the strategy's own function with a ``class_mask`` option that leaves only that class
      (exact, but one run per column).
    - ``"pool_stats"``: two passes. ``stats(pool, aggregation, **options)`` returns the batch's statistics
      ``Dict[str, Tensor]``; ``reduce`` says how each key combines over batches and ranks (``"sum"``: integer
      tensors only, so the sum does not depend on the batching; ``"min"``, ``"max"``); ``neutral(num_classes,
      dtype)`` gives a rank without data its statistics (CPU tensors); ``score(pool, aggregation, stats,
      **options)`` returns ``Tensor[n, U]`` against the pool's statistics.

    ``seeded``: the stream needs ``seed=`` (``pool.seed``); ``dtype``: the score dtype of a strategy without a
    float input; ``note``: what :func:`oreal.stream.streamable` adds to the kind's description.
    """

    kind: str
    score: Optional[Callable[..., Tensor]] = None
    stats: Optional[Callable[..., Dict[str, Tensor]]] = None
    reduce: Optional[Dict[str, str]] = None
    neutral: Optional[Callable[[int, torch.dtype], Dict[str, Tensor]]] = None
    seeded: bool = False
    dtype: torch.dtype = torch.float32
    note: str = ""


class _Strategy(NamedTuple):
    fn: Callable[..., Selection]
    summary: str
    requires: Tuple[str, ...]
    aggregations: Tuple[str, ...]  # the first is the default; () = the method has no aggregation
    options: Dict[str, Any]  # option name -> default
    stream: Union[Stream, str, None] = None  # how it streams, or why it cannot (str); None: not declared
    pixels: bool = False  # picks single pixels (index h * W + w, exclude Tensor[N, H, W]) instead of superpixels
    min_classes: int = 1  # classes C that `probs` / `logits` must have
    min_samples: int = 1  # MC samples K that `mc_probs` must have


_MM = ("max", "mean")
_MEAN_FIRST = ("mean", "max")

# How the built-in strategies stream (see Stream). The top-B and by-function per-class streams need nothing but
# their kind: the strategy's own function scores each batch.
_TOP_B = Stream("top_b")
_RANDOM_KEYS = Stream("top_b", score=_random_keys, seeded=True, dtype=torch.float64,
                      note="keyed hash of (seed, g); not the generator draw of query('random')")
_OREAL_COLUMNS = Stream("per_class", score=_oreal_columns)
_REVISITING_STATS = Stream("pool_stats", score=_revisiting_stream_score, stats=_revisiting_stream_stats,
                           reduce={"lo": "min", "hi": "max", "counts": "sum", "cand": "sum"},
                           neutral=_revisiting_neutral)
_PIXELBAL_STATS = Stream("pool_stats", score=_pixelbal_stream_score, stats=_pixelbal_stream_stats,
                         reduce={"mass": "sum", "pixels": "sum"}, neutral=_pixelbal_neutral)

_REGISTRY: Dict[str, _Strategy] = {
    "random": _Strategy(_random, "uniformly random superpixels, drawn from the explicit `generator`",
                        ("generator",), (), {}, _RANDOM_KEYS),
    "entropy": _Strategy(_uncertainty(entropy), "top-B superpixel entropy -sum p ln p (max or mean over pixels)",
                         ("probs",), _MEAN_FIRST, {}, _TOP_B),
    "bvsb": _Strategy(_uncertainty(bvsb), "top-B superpixel best-versus-second-best ratio p2/p1",
                      ("probs",), _MEAN_FIRST, {}, _TOP_B, min_classes=2),
    "margin": _Strategy(_uncertainty(margin), "top-B superpixel flipped margin 1 - (p1 - p2)",
                        ("probs",), _MEAN_FIRST, {}, _TOP_B, min_classes=2),
    "revisiting_sp": _Strategy(_revisiting_sp, "Cai et al. 2021: pool-normalised BvSB x exp(-predicted class "
                               "frequency)", ("probs",), _MEAN_FIRST, {}, _REVISITING_STATS, min_classes=2),
    "pixelbal": _Strategy(_pixelbal, "Hwang et al. 2023: BvSB weighted by (1 + mu p_bar)^-2 of the pixel's "
                          "predicted class, p_bar = pool mean softmax(logits / T)", ("logits",), _MEAN_FIRST,
                          {"temperature": 0.1, "mu": 6.0}, _PIXELBAL_STATS, min_classes=2),
    "cbal": _Strategy(_cbal, "Bengar et al. 2022, greedy surrogate: entropy - lam |mean p - debt / B|_1",
                      ("probs", "labeled_counts"), _MEAN_FIRST, {"lam": 2.0, "class_mask": None}, _TOP_B),
    "cbal_milp": _Strategy(_cbal_milp, "Bengar et al. 2022, exact MIP (scipy milp): min z.U + lam |P^T z - debt|_1",
                           ("probs", "labeled_counts"), _MEAN_FIRST,
                           {"lam": 0.6, "class_mask": None, "max_candidates": 2000, "time_limit": 60.0},
                           "it solves one MIP over the whole pool; stream 'cbal', its greedy surrogate"),
    "oreal": _Strategy(_oreal, "OREAL: one-vs-rest entropy (max), class debt, per-class greedy",
                       ("probs", "labeled_counts"), _MM, {"class_mask": None}, _OREAL_COLUMNS),
    "oreal_mean": _Strategy(_oreal, "OREAL ablation with mean aggregation of the one-vs-rest entropy",
                            ("probs", "labeled_counts"), ("mean",), {"class_mask": None}, _OREAL_COLUMNS),
    "bald": _Strategy(_mc(bald), "top-B superpixel BALD mutual information from K MC-dropout samples",
                      ("mc_probs",), _MEAN_FIRST, {}, _TOP_B, min_samples=2),
    "balent": _Strategy(_mc(balent), "top-B superpixel Balanced Entropy (Woo 2023) from K MC-dropout samples",
                        ("mc_probs",), _MEAN_FIRST, {}, _TOP_B, min_samples=2),
    "balent_pixel": _Strategy(_balent_pixel, "Didari et al. 2024: top-B single pixels by Balanced Entropy "
                              "(superpixel = flat pixel index h*W+w)", ("mc_probs",), (), {}, _TOP_B, pixels=True,
                              min_samples=2),
    "edge_entropy": _Strategy(_edge_entropy, "Kasarla et al. 2019: entropy x (1 + alpha * normalised image "
                              "gradient)", ("probs", "images"), _MEAN_FIRST, {"alpha": 1.0}, _TOP_B),
    "edge_entropy_class": _Strategy(_edge_entropy_class, "class-specific edge entropy: edge-weighted one-vs-rest "
                                    "entropy, class debt, per-class greedy (ours)",
                                    ("probs", "images", "labeled_counts"), _MEAN_FIRST,
                                    {"alpha": 1.0, "class_mask": None}, Stream("per_class")),
    "sp_crf": _Strategy(_sp_crf, "Kasarla et al. 2019: superpixel entropy of CRF-refined predictions (oreal.crf)",
                        ("probs", "images"), _MEAN_FIRST, dict(CRF_DEFAULTS), _TOP_B),
    "sp_crf_class": _Strategy(_sp_crf_class, "class-specific SP + CRF: one-vs-rest entropy of CRF-refined "
                              "predictions, class debt, per-class greedy (ours)", ("probs", "images", "labeled_counts"),
                              _MEAN_FIRST, dict(CRF_DEFAULTS, class_mask=None),
                              Stream("per_class", score=_sp_crf_columns)),
}
_BUILT_IN = frozenset(_REGISTRY)
#: The strategy :class:`oreal.stream.StreamingSelector` runs when none is named.
DEFAULT = "oreal"


def register(name: str, fn: Callable[..., Selection], *, summary: str, requires: Sequence[str],
             aggregations: Sequence[str] = ("mean", "max"), options: Optional[Dict[str, Any]] = None,
             stream: Union[Stream, str, None] = None, pixels: bool = False, min_classes: int = 1,
             min_samples: int = 1) -> None:
    """Add strategy ``name``: :func:`query` runs it, and with ``stream`` :class:`oreal.stream.StreamingSelector`
    streams it; nothing else needs to know it. ``docs/streaming.md`` ("Adding a strategy") has the contract.

    Args:
        name: a new name (built-in and registered names raise).
        fn: ``fn(pool, aggregation, **options) -> Selection`` on the whole pool (a :data:`Pool` of validated inputs;
            ``aggregation`` is ``None`` when ``aggregations`` is empty), with the guarantees of :func:`query`.
        summary: the one line of :func:`available`.
        requires: the inputs ``fn`` reads, a subset of ``probs``, ``logits``, ``mc_probs``, ``images``,
            ``labeled_counts``, ``generator``.
        aggregations: the allowed aggregations, the default first; ``()`` for none.
        options: option name -> default (numeric ``lam``, ``mu``, ``alpha``, ``temperature`` are checked).
        stream: a :class:`Stream` saying how it streams; a string saying why it cannot; ``None``: not streamed.
        pixels: it picks single pixels (``superpixel`` = ``h * W + w``, ``exclude`` is ``Tensor[N, H, W]``); only
            without aggregations, and not with a ``"per_class"`` stream.
        min_classes: the classes ``C >= 1`` that ``probs`` / ``logits`` must have (e.g. 2 for a BvSB ratio).
        min_samples: the MC samples ``K >= 1`` that ``mc_probs`` must have.

    Example:
        >>> import oreal
        >>> def brightest(pool, aggregation):  # top-B superpixels by the mean of probs[:, 0]
        ...     score = oreal.aggregate(pool.probs[:, 0], pool.sp_map, pool.num_superpixels, aggregation)
        ...     index, value = oreal.topk(score.reshape(-1), pool.budget, candidates=pool.candidates(),
        ...                               allow_partial=pool.allow_partial)
        ...     s = pool.num_superpixels
        ...     return oreal.Selection(index // s, index % s, torch.full_like(index, -1), value)
        >>> register("brightest", brightest, summary="class-0 mass", requires=("probs",), aggregations=("mean",),
        ...          stream=Stream("top_b"))
        >>> "brightest" in oreal.stream.streamable()
        True
        >>> unregister("brightest")
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"Expected `name` to be a non-empty str, but got {name!r}")
    if name in _REGISTRY:
        raise ValueError(f"Strategy {name!r} is already registered; expected a new name (unregister it first)")
    if not callable(fn):
        raise TypeError(f"Expected `fn` to be callable, but got {type(fn).__name__}")
    requires, aggregations = tuple(requires), tuple(aggregations)
    unknown = sorted(set(requires) - set(_INPUT_SHAPES))
    if unknown:
        raise ValueError(f"Expected `requires` to be a subset of {sorted(_INPUT_SHAPES)}, but got {unknown}")
    if any(a not in ("max", "mean") for a in aggregations) or len(set(aggregations)) < len(aggregations):
        raise ValueError(f"Expected `aggregations` to be distinct values of ('max', 'mean'), but got {aggregations}")
    options = dict(options or {})
    min_classes = check_int(min_classes, "min_classes", minimum=1)
    min_samples = check_int(min_samples, "min_samples", minimum=1)
    if pixels and aggregations:
        raise ValueError(f"A pixel-level strategy has no aggregation; expected aggregations=(), but got "
                         f"{aggregations}")
    if isinstance(stream, Stream):
        _check_stream(stream, requires, options, bool(pixels))
    elif stream is not None and not isinstance(stream, str):
        raise TypeError(f"Expected `stream` to be an oreal.strategies.Stream, a str (why it cannot stream) or None, "
                        f"but got {type(stream).__name__}")
    _REGISTRY[name] = _Strategy(fn, str(summary), requires, aggregations, options, stream, bool(pixels), min_classes,
                                min_samples)


def _check_stream(stream: Stream, requires: Tuple[str, ...], options: Dict[str, Any], pixels: bool) -> None:
    if stream.kind not in STREAM_KINDS:
        raise ValueError(f"Expected `Stream.kind` to be one of {list(STREAM_KINDS)}, but got {stream.kind!r}")
    if stream.kind == "per_class":
        if "labeled_counts" not in requires:
            raise ValueError("A 'per_class' stream needs the class debt: expected 'labeled_counts' in `requires`")
        if stream.score is None and "class_mask" not in options:
            raise ValueError("A 'per_class' stream without `score` runs the strategy once per class with a "
                             "one-class `class_mask`: expected a 'class_mask' option (default None)")
        if pixels:
            raise ValueError("A pixel-level strategy cannot stream per class; expected kind 'top_b' or 'pool_stats'")
    if stream.kind == "pool_stats":
        missing = [f for f in ("score", "stats", "reduce", "neutral") if getattr(stream, f) is None]
        if missing:
            raise ValueError(f"A 'pool_stats' stream needs `score`, `stats`, `reduce` and `neutral`, but got None "
                             f"for {missing}")
        bad = {k: v for k, v in stream.reduce.items() if v not in _REDUCE_OPS}
        if bad:
            raise ValueError(f"Expected `Stream.reduce` values in {list(_REDUCE_OPS)}, but got {bad}")


def unregister(name: str) -> None:
    """Remove a strategy added by :func:`register` (built-in ones raise).

    Example:
        >>> unregister("entropy")
        Traceback (most recent call last):
        ...
        ValueError: Strategy 'entropy' is built in; only strategies added by register() can be removed
    """
    _lookup(name)
    if name in _BUILT_IN:
        raise ValueError(f"Strategy {name!r} is built in; only strategies added by register() can be removed")
    del _REGISTRY[name]


def available() -> Dict[str, str]:
    """Names of all strategies with a one-line summary each.

    Example:
        >>> names = available()
        >>> "oreal" in names and "random" in names
        True
    """
    return {name: spec.summary for name, spec in _REGISTRY.items()}


def requirements(name: str) -> Dict[str, Any]:
    """What strategy ``name`` needs: its required inputs, allowed aggregations (the first is the default; empty
    for none), its options with their defaults, and whether it picks single pixels (``pixels``: then ``exclude``
    is ``Tensor[N, H, W]`` and ``superpixel`` the flat pixel index).

    Example:
        >>> requirements("pixelbal")["inputs"]
        ('logits',)
        >>> requirements("oreal")["aggregations"]
        ('max', 'mean')
        >>> requirements("balent_pixel")["pixels"]
        True
    """
    spec = _lookup(name)
    return {"inputs": spec.requires, "aggregations": spec.aggregations, "options": dict(spec.options),
            "pixels": spec.pixels}


def _lookup(name: object) -> _Strategy:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"Unknown strategy {name!r}; expected one of {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def check_pool_input(x: Tensor, name: str, spatial: tuple, sp_map: Tensor, strategy: str,
                     validate_args: bool) -> None:
    """A strategy's input ``probs``/``logits`` (float ``(N, C, H, W)``), ``mc_probs`` (float ``(N, K, C, H, W)``) or
    ``images`` (numeric ``(N, channels, H, W)`` or ``(N, H, W)``): its N, H, W match ``sp_map``, it lives on its
    device, it has the classes (or MC samples) ``strategy`` needs, and, with ``validate_args``, valid values
    (host sync). Shared by :func:`query` and :class:`oreal.stream.StreamingSelector`."""
    if name == "images":
        check_images(x, spatial, sp_map, "sp_map")
    else:
        check_float(x, name, ndim=5 if name == "mc_probs" else 4)
        got = (x.shape[0],) + tuple(x.shape[-2:])
        if got != tuple(spatial):
            raise ValueError(f"`{name}` must have N, H, W = {tuple(spatial)} to match sp_map, got shape "
                             f"{tuple(x.shape)}")
        check_same_device(x, name, sp_map, "sp_map")
    spec = _lookup(strategy)
    if name in ("probs", "logits") and x.shape[1] < spec.min_classes:
        raise ValueError(f"Strategy {strategy!r} needs at least {spec.min_classes} classes, but `{name}` has shape "
                         f"{tuple(x.shape)}")
    if name == "mc_probs" and x.shape[1] < spec.min_samples:
        raise ValueError(f"Strategy {strategy!r} needs at least K = {spec.min_samples} MC samples in dim 1 of "
                         f"`mc_probs`, but got shape {tuple(x.shape)}")
    if validate_args:
        if name in ("probs", "mc_probs"):
            validate_probabilities(x, name, dim=2 if name == "mc_probs" else 1)
        else:
            validate_finite(x, name)


@torch.no_grad()  # acquisition never needs gradients: inputs that require grad are read as plain values
def query(name: str, *, sp_map: Tensor, num_superpixels: int, budget: int, probs: Optional[Tensor] = None,
          logits: Optional[Tensor] = None, mc_probs: Optional[Tensor] = None, images: Optional[Tensor] = None,
          labeled_counts: Optional[Tensor] = None, exclude: Optional[Tensor] = None,
          aggregation: Optional[str] = None, generator: Optional[torch.Generator] = None,
          allow_partial: bool = False, validate_args: bool = True, **options: Any) -> Selection:
    """Run acquisition strategy ``name`` on a pool and return its picks.

    All strategies share this signature; each uses only the inputs it needs (see :func:`requirements` and
    ``docs/strategies.md``) and ignores the others. Runs under ``torch.no_grad()`` (inputs that require grad give
    the same picks); an empty pool (``N = 0`` or ``H * W = 0``) has no candidates. Strategies (``aggregation`` default first):

    ============================  =================================================  ====================
    name                          inputs                                             aggregation
    ============================  =================================================  ====================
    random                        generator                                          none
    entropy, bvsb, margin         probs                                              mean, max
    revisiting_sp                 probs                                              mean, max
    pixelbal                      logits                                             mean, max
    cbal, cbal_milp               probs, labeled_counts                              mean, max
    oreal                         probs, labeled_counts                              max, mean
    oreal_mean                    probs, labeled_counts                              mean
    bald, balent                  mc_probs                                           mean, max
    balent_pixel                  mc_probs                                           none (pixels)
    edge_entropy                  probs, images                                      mean, max
    edge_entropy_class            probs, images, labeled_counts                      mean, max
    sp_crf                        probs, images                                      mean, max
    sp_crf_class                  probs, images, labeled_counts                      mean, max
    ============================  =================================================  ====================

    Options (keyword arguments, SPEC defaults; ranges in :func:`check_options`): pixelbal ``temperature=0.1,
    mu=6.0`` (12 for VOC); cbal ``lam=2.0``; cbal_milp ``lam=0.6, max_candidates=2000, time_limit=60.0``
    (seconds; ``None`` = no limit);
    oreal, oreal_mean, cbal, cbal_milp, edge_entropy_class and sp_crf_class ``class_mask=None`` (``Tensor[C]``
    bool, ``False`` leaves a class out of balancing); edge_entropy and edge_entropy_class ``alpha=1.0``; sp_crf
    and sp_crf_class the options of :func:`oreal.crf.crf_refine` (:data:`oreal.crf.CRF_DEFAULTS`).

    Args:
        name: a key of :func:`available`.
        sp_map (Tensor[N, H, W]): integer superpixel ids in ``[0, S)``, ``-1`` for no superpixel.
        num_superpixels: ``S``.
        budget: number of picks ``B >= 0``.
        probs (Tensor[N, C, H, W], optional): softmax probabilities (half precision is computed in float32).
        logits (Tensor[N, C, H, W], optional): raw logits, for ``pixelbal`` (never derived from ``probs``).
        mc_probs (Tensor[N, K, C, H, W], optional): softmax probabilities of ``K`` MC-dropout passes.
        images (Tensor[N, channels, H, W] or Tensor[N, H, W], optional): the pool images, for the edge
            strategies (any value scale: the gradient is normalised per image) and the CRF ones (integer images
            are 0-255 colours, floating point ones colours in ``[0, 1]``).
        labeled_counts (Tensor[C], optional): int64 labeled superpixels per (dominant) class, ``n_c``.
        exclude (Tensor[N, S] bool, optional): superpixels that must not be picked (already labeled). For
            ``balent_pixel`` it is a pixel mask, ``Tensor[N, H, W]`` bool.
        aggregation: ``"max"`` or ``"mean"`` over the pixels of a superpixel; ``None`` = the method's default.
        generator (torch.Generator, optional): the only source of randomness; required by ``random``.
        allow_partial: with fewer candidates than ``budget``, return them all instead of raising.
        validate_args: check probabilities, ids and counts (host syncs; turn off in tight loops).
        **options: method-specific options listed above; unknown ones raise.

    Returns:
        Selection: ``image``, ``superpixel`` (flat pixel index ``h * W + w`` for ``balent_pixel``), ``cls``
        (the class that took the pick for oreal, oreal_mean, edge_entropy_class and sp_crf_class; ``-1``
        otherwise) and the ``score`` it was ranked by, in pick order, on ``sp_map``'s device.

    Raises:
        ValueError: unknown ``name``, missing input, unsupported aggregation, unknown option, bad shapes or
            values, or fewer candidates than ``budget`` (without ``allow_partial``).

    Example:
        >>> g = torch.Generator().manual_seed(42)
        >>> probs = torch.randn(2, 3, 8, 8, generator=g).softmax(dim=1)
        >>> sp_map = torch.arange(4).repeat_interleave(2).repeat(2, 8, 1)  # 4 vertical strips per image
        >>> sel = query("entropy", probs=probs, sp_map=sp_map, num_superpixels=4, budget=3, aggregation="max")
        >>> len(sel.image), sel.cls.tolist()
        (3, [-1, -1, -1])
        >>> sel = query("random", sp_map=sp_map, num_superpixels=4, budget=2, generator=g)
        >>> len(set(zip(sel.image.tolist(), sel.superpixel.tolist())))
        2
    """
    spec = _lookup(name)
    aggregation, opts = resolve_options(name, aggregation, options)

    given = {"probs": probs, "logits": logits, "mc_probs": mc_probs, "images": images,
             "labeled_counts": labeled_counts, "generator": generator}
    for need in spec.requires:
        if given[need] is None:
            hint = ""
            if need == "logits" and probs is not None:
                hint = " (it is not computed from `probs`: pass the model's raw logits)"
            raise ValueError(f"Strategy {name!r} needs `{need}` ({_INPUT_SHAPES[need]}), but got None{hint}")
    use = set(spec.requires)

    num_superpixels = check_sp_map(sp_map, num_superpixels, validate_args=validate_args)
    budget = check_int(budget, "budget", minimum=0)
    n, h, w = sp_map.shape
    num_classes, first = None, None
    for key in ("probs", "logits", "mc_probs", "images"):
        if key in use:
            check_pool_input(given[key], key, (n, h, w), sp_map, name, validate_args)
            if key == "images":
                continue
            c = given[key].shape[2 if key == "mc_probs" else 1]
            if num_classes is not None and c != num_classes:
                raise ValueError(f"`{key}` has {c} classes (shape {tuple(given[key].shape)}) but `{first}` has "
                                 f"{num_classes}; every input of one pool has the same classes")
            num_classes, first = c, key
    if "labeled_counts" in use:
        check_int_tensor(labeled_counts, "labeled_counts", ndim=1)
        if num_classes is not None:  # a registered strategy may read labeled_counts alone
            check_shape(labeled_counts, "labeled_counts", (num_classes,), "= (C,) to match the class dimension")
        check_same_device(labeled_counts, "labeled_counts", sp_map, "sp_map")
        if validate_args:
            validate_nonnegative(labeled_counts, "labeled_counts")
    if "generator" in use and not isinstance(generator, torch.Generator):
        raise TypeError(f"Expected `generator` to be a torch.Generator, but got {type(generator).__name__}")
    if exclude is not None:
        shape = (n, h, w) if spec.pixels else (n, num_superpixels)
        check_bool_tensor(exclude, "exclude", shape)
        check_same_device(exclude, "exclude", sp_map, "sp_map")
    check_options(opts)

    check_real(sp_map, "sp_map")
    pool = _Pool(sp_map, num_superpixels, budget, probs, logits, mc_probs, images, labeled_counts, exclude,
                 generator, check_flag(allow_partial, "allow_partial"))
    if sp_map.numel() == 0:  # an empty pool (N = 0 or H * W = 0): no candidates, nothing to score
        _check_class_mask(opts.get("class_mask"), pool)
        main = next((given[k] for k in ("probs", "logits", "mc_probs") if k in use), None)
        dtype = compute_dtype(main) if main is not None else torch.get_default_dtype()
        return empty_selection(budget, pool.allow_partial, sp_map.device, dtype)
    if spec.aggregations:
        return spec.fn(pool, aggregation, **opts)
    return spec.fn(pool, None, **opts)
