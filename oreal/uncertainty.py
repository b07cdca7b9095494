"""Pixel uncertainty scores (SPEC section 1). Higher always means more uncertain.

Every function takes probabilities with the class dimension at position 1, ``(N, C, *)`` (``(N, K, C, *)`` for
the MC-sample scores), and returns one score per pixel, ``(N, *)``, except :func:`ovr_entropy`, which keeps a
column per class. Half-precision inputs are computed and returned in float32; float64 stays float64. Natural
logs with ``0 * ln 0 = 0`` throughout, so probabilities of exactly 0 or 1 never give NaN: ``t ln t`` is computed
as ``t * ln(max(t, tiny))`` with torch's vectorised logarithm (:func:`_xlogx`), 2 to 3 times faster on the CPU
than the scalar :func:`torch.special.xlogy` and within a few ulp of the exact value. All functions are deterministic
and never modify their input; sums over classes and samples add in index order, so equal values give bit-identical
scores whatever the memory layout (contiguous, channels_last, any strides) or batch size.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor

from oreal._checks import check_float, compute_dtype, validate_probabilities, validate_unit_interval

__all__ = ["entropy", "bvsb", "margin", "ovr_entropy", "binary_entropy", "bald", "balent"]


def _probs(probs: Tensor, name: str, validate_args: bool, *, min_classes: int = 1, dim: int = 1) -> Tensor:
    check_float(probs, name, min_ndim=dim + 1)
    if probs.shape[dim] < min_classes:
        raise ValueError(f"Expected `{name}` to have at least {min_classes} classes in dim {dim}, "
                         f"but got shape {tuple(probs.shape)}")
    if validate_args:
        validate_probabilities(probs, name, dim=dim)
    return probs.to(compute_dtype(probs))


def _sum(x: Tensor, dim: int, term: Optional[Callable[[Tensor], Tensor]] = None) -> Tensor:
    """Sum of ``term(slice)`` (default: the slice) over ``dim``, adding the slices one after the other in index order.

    ``Tensor.sum`` picks its addition order from the memory layout (a channels_last tensor reduces its class
    dimension as the innermost one, in vectorised partial sums), so the same values could give scores one ulp
    apart, and different picks, for different strides. Slice-by-slice addition is elementwise: the same floats
    for every layout, batch size and blocking. The input is made contiguous first (only a copy when it is not),
    which is where slices read fastest; ``term`` is applied one slice at a time, without a full-size temporary.
    """
    x = x.contiguous()
    first = x.select(dim, 0)
    out = first.clone() if term is None else term(first)
    for i in range(1, x.shape[dim]):
        out += x.select(dim, i) if term is None else term(x.select(dim, i))
    return out


def _mean(x: Tensor, dim: int) -> Tensor:
    """Mean over ``dim``, with :func:`_sum`'s layout-independent addition order."""
    return _sum(x, dim) / x.shape[dim]


def _xlogx(t: Tensor, out: Optional[Tensor] = None, times: Optional[Tensor] = None) -> Tensor:
    """``t ln t`` elementwise with ``0 ln 0 = 0`` (``times * ln t`` when ``times`` is given, e.g. ``-t``), into
    ``out`` when given (not ``t`` itself).

    ``ln(max(t, tiny))``: no mask and no NaN at 0, and only subnormal ``t`` (below ``1.2e-38`` in float32) are moved,
    by less than ``17 t`` in the product (``ln(2^23) < 16``, plus rounding). Every element goes through the
    same vectorised logarithm, whatever the layout, so equal inputs give equal bits.
    """
    out = torch.clamp_min(t, torch.finfo(t.dtype).tiny, out=out)
    if _tracks_grad(out):
        return out.log() * (t if times is None else times)
    return out.log_().mul_(t if times is None else times)


def _entropy(p: Tensor, dim: int) -> Tensor:
    return 0 - _sum(p, dim, _xlogx)  # 0 - x, not -x: no -0.0 for certain pixels


def _distance_from_certain(slab: Tensor, buffer: Tensor) -> Tensor:
    """``min(p, 1 - p)`` into ``buffer``, exact: ``1 - p`` is exact for ``p >= 0.5`` (Sterbenz) and not taken below."""
    if slab.dtype != buffer.dtype:  # half input: upcast first, the value is the same
        slab = buffer.copy_(slab)
        return torch.minimum(slab, 1 - slab, out=buffer)
    return torch.minimum(slab, torch.sub(1, slab, out=buffer), out=buffer)


def _binary_entropy_into(p: Tensor, plogp: Tensor, q: Tensor, qlogq: Tensor) -> Tensor:
    """``h(p) = -[p ln p + (1 - p) ln(1 - p)]`` into the buffer ``plogp`` (``q`` and ``qlogq``: same-shaped scratch).

    Evaluated at ``m = min(p, 1 - p)`` (``h`` is symmetric, and ``1 - p`` is exact for ``p >= 0.5``), so ``h(p)`` and
    ``h(1 - p)`` are the same bits and ``p = 1`` gives 0; ``(1 - m) ln(1 - m)`` is ``(1 - m) log1p(-m)`` (for tiny
    ``m``, ``1 - m`` rounds to 1 and ``ln(1 - m)`` would lose the term). A half ``p`` is computed in the buffers'
    dtype.
    """
    m = _distance_from_certain(p, q)
    neg = torch.neg(m, out=qlogq)
    _xlogx(m, out=plogp, times=neg)  # -m ln m
    neg.log1p_().mul_(torch.sub(1, m, out=m))  # (1 - m) ln(1 - m); m is now 1 - m
    return plogp.sub_(qlogq)  # -(a + b) as (-a) - b: the same bits, one pass fewer


def binary_entropy(p: Tensor, *, validate_args: bool = True) -> Tensor:
    """Binary entropy ``h(p) = -[p ln p + (1 - p) ln(1 - p)]``, elementwise, in ``[0, ln 2]``; ``h(p)`` and
    ``h(1 - p)`` are the same bits (it is evaluated at ``min(p, 1 - p)``).

    Args:
        p (Tensor[*]): probabilities in ``[0, 1]``.
        validate_args: check that ``p`` lies in ``[0, 1]`` (host sync).

    Example:
        >>> binary_entropy(torch.tensor([0.0, 0.5, 1.0]))
        tensor([0.0000, 0.6931, 0.0000])
    """
    p = check_float(p, "p")
    if validate_args:
        validate_unit_interval(p, "p")
    if _tracks_grad(p):  # the same operations without out= or in-place, which autograd cannot follow
        p = p.to(compute_dtype(p))
        m = torch.minimum(p, 1 - p)
        neg = -m
        return _xlogx(m, times=neg) - torch.log1p(neg) * (1 - m)
    out = torch.empty(p.shape, dtype=compute_dtype(p), device=p.device)
    return _binary_entropy_into(p, out, torch.empty_like(out), torch.empty_like(out))


def _tracks_grad(x: Tensor) -> bool:
    """Whether autograd records operations on ``x``: the scores then avoid ``out=`` and in-place buffers."""
    return x.requires_grad and torch.is_grad_enabled()


def entropy(probs: Tensor, *, validate_args: bool = True) -> Tensor:
    """Shannon entropy ``H(x) = -sum_c p_c ln p_c`` of each pixel, in ``[0, ln C]``.

    Args:
        probs (Tensor[N, C, *]): softmax probabilities, class dimension 1.
        validate_args: check that ``probs`` is finite, in ``[0, 1]`` and sums to 1 over ``C`` (host sync).

    Returns:
        Tensor[N, *]: float32 for half inputs, else the input dtype.

    Example:
        >>> g = torch.Generator().manual_seed(42)
        >>> probs = torch.randn(1, 3, 2, 2, generator=g).softmax(dim=1)
        >>> entropy(probs).shape
        torch.Size([1, 2, 2])
        >>> entropy(torch.tensor([[0.5, 0.5]]))
        tensor([0.6931])
    """
    return _entropy(_probs(probs, "probs", validate_args), 1)


def _top2(x: Tensor, labels: Optional[Tensor] = None):
    """The largest and second-largest values over dim 1 (``C >= 2``; a maximum two classes share is both), as
    ``x.topk(2, dim=1).values`` gives them for finite values, and with ``labels`` (``C`` finite numbers) also
    ``labels[argmax]``, the label of the first maximum (``argmax``'s): int64 for integer labels, else ``x``'s dtype.

    A running pair updated class plane by class plane with elementwise maximum and minimum: each plane is read once,
    where ``topk`` or ``argmax`` over the strided class dim costs 10x more on the CPU. The label is carried along
    without branches: ``lerp(label, labels[c], w)`` with ``w = (v > first)`` as 0.0 / 1.0 is exactly ``label`` or
    ``labels[c]`` (``masked_fill_`` and ``where`` branch per value on the CPU, 5 to 18 times slower here); integer
    labels ride as floats that hold them exactly."""
    a, b = x.select(1, 0), x.select(1, 1)
    first, second = torch.maximum(a, b), torch.minimum(a, b)
    if labels is not None:
        integer = not labels.is_floating_point()
        wide = x.dtype == torch.float64 or labels.numel() > 2 ** 24  # integers exact in float32 up to 2^24
        kind = (torch.float64 if wide else torch.float32) if integer else x.dtype
        values = labels.to(device=x.device, dtype=kind)
        take = torch.empty_like(first, dtype=kind)
        label = torch.empty_like(first, dtype=kind).copy_(values[0])
        label.lerp_(values[1], torch.gt(b, a, out=take))
    track = _tracks_grad(x)  # then without out=, which autograd cannot follow (the same values)
    low = torch.empty_like(first)
    for c in range(2, x.shape[1]):
        v = x.select(1, c)
        if labels is not None:  # strictly larger: the first maximum keeps its label
            label.lerp_(values[c], torch.gt(v, first, out=take))
        if track:
            first, second = torch.maximum(first, v), torch.maximum(second, torch.minimum(first, v))
            continue
        torch.maximum(second, torch.minimum(first, v, out=low), out=second)
        torch.maximum(first, v, out=first)
    if labels is None:
        return first, second
    return first, second, label.long() if integer else label


def bvsb(probs: Tensor, *, validate_args: bool = True) -> Tensor:
    """Best-versus-second-best ratio ``r(x) = p_(2) / p_(1)``, in ``[0, 1]`` (1 = a tie between the top two).

    This is the ratio convention of Cai et al. 2021 and Hwang et al. 2023; see :func:`margin` for the
    difference, which ranks pixels differently.

    Args:
        probs (Tensor[N, C, *]): softmax probabilities with ``C >= 2``.
        validate_args: check the probabilities (host sync).

    Returns:
        Tensor[N, *]

    Example:
        >>> bvsb(torch.tensor([[0.2, 0.1, 0.7], [0.5, 0.5, 0.0]]))
        tensor([0.2857, 1.0000])
    """
    p1, p2 = _top2(_probs(probs, "probs", validate_args, min_classes=2))
    return p2 / p1


def margin(probs: Tensor, *, validate_args: bool = True) -> Tensor:
    """Flipped margin ``1 - (p_(1) - p_(2))``, in ``[0, 1]`` (Joshi et al. 2009, higher = more uncertain).

    It does not rank like :func:`bvsb`: ``(0.2, 0.1)`` has the larger ratio but the smaller margin score
    than ``(0.55, 0.44)``.

    Args:
        probs (Tensor[N, C, *]): softmax probabilities with ``C >= 2``.
        validate_args: check the probabilities (host sync).

    Returns:
        Tensor[N, *]

    Example:
        >>> margin(torch.tensor([[0.2, 0.1, 0.7], [0.55, 0.44, 0.01]]))
        tensor([0.5000, 0.8900])
    """
    p1, p2 = _top2(_probs(probs, "probs", validate_args, min_classes=2))
    return 1 - (p1 - p2)


def ovr_entropy(probs: Tensor, *, validate_args: bool = True) -> Tensor:
    """One-vs-rest entropy per class, ``H_c(x) = -[p_c ln p_c + (1 - p_c) ln(1 - p_c)]``, in ``[0, ln 2]``.

    OREAL's class-wise score: high ``H_c`` means the model is unsure whether the pixel is of class ``c``.

    Args:
        probs (Tensor[N, C, *]): softmax probabilities.
        validate_args: check the probabilities (host sync).

    Returns:
        Tensor[N, C, *]: the same shape as ``probs``.

    Example:
        >>> ovr_entropy(torch.tensor([[0.5, 0.25, 0.25]]))
        tensor([[0.6931, 0.5623, 0.5623]])
    """
    return binary_entropy(_probs(probs, "probs", validate_args), validate_args=False)


def bald(mc_probs: Tensor, *, validate_args: bool = True) -> Tensor:
    """BALD mutual information from ``K`` MC-dropout samples: ``H(mean_k p_k) - mean_k H(p_k)``, in ``[0, ln C]``.

    The difference is clamped at 0: it is non-negative in exact arithmetic, but rounding leaves pixels whose
    samples agree within a few ulp of 0 on either side (float32: up to about ``4e-7``); the clamp keeps the score
    in its range.

    Args:
        mc_probs (Tensor[N, K, C, *]): softmax probabilities of ``K >= 2`` stochastic forward passes (one sample
            has no disagreement to measure: BALD would be 0 everywhere, so ``K = 1`` is refused).
        validate_args: check the probabilities (host sync).

    Returns:
        Tensor[N, *]

    Example:
        >>> mc = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # two samples that disagree completely
        >>> bald(mc)
        tensor([0.6931])
    """
    p = _mc_probs(mc_probs, validate_args)
    # >= 0 in exact arithmetic (Jensen); rounding leaves samples that agree a few ulp either side of 0
    return (_entropy(_mean(p, 1), 1) - _mean(_entropy(p, 2), 1)).clamp_min(0)


def _mc_probs(mc_probs: Tensor, validate_args: bool) -> Tensor:
    p = _probs(mc_probs, "mc_probs", validate_args, dim=2)
    if p.shape[1] < 2:
        raise ValueError(f"Expected `mc_probs` to hold at least K = 2 samples in dim 1 (MC samples measure "
                         f"disagreement), but got shape {tuple(mc_probs.shape)}")
    return p


_BALENT_EPS = 1e-9
# The formula is clipped to [-1e30, 1e30]: it leaves that range (up to +-inf or NaN) only at its poles,
# beta_c = 0 (sigma^2_c = mu_c (1 - mu_c)) and mu_c = 1. Pixels whose MC samples all agree score _BALENT_AGREE,
# below every clipped value and finite in float32; sums of millions of them stay finite in float32 as well.
_BALENT_CLIP = 1e30
_BALENT_AGREE = -2e30


def balent(mc_probs: Tensor, *, validate_args: bool = True) -> Tensor:
    """Balanced Entropy (Woo, ICLR 2023) per pixel from ``K >= 2`` MC-dropout samples; higher is picked first.

    With ``mu_c`` the sample mean and ``var_c`` the unbiased sample variance of ``p_c`` (both clamped to
    ``>= 1e-9``, computed in float64), ``alpha_c = mu_c^2 (1 - mu_c) / var_c - mu_c`` and
    ``beta_c = (1 / mu_c - 1) alpha_c``; ``h_c`` is the differential entropy of ``Beta(alpha_c + 1, beta_c)``::

        h_c = ln B(alpha_c + 1, beta_c) - alpha_c psi(alpha_c + 1) - (beta_c - 1) psi(beta_c)
              + (alpha_c + beta_c - 1) psi(alpha_c + beta_c + 1)
        H = -sum_c mu_c ln mu_c,   MJEnt = sum_c min(0, mu_c h_c) + H
        BalEnt = (H + ln 2) / (MJEnt + H), replaced by its reciprocal where it is negative.

    Limits **(ours)**, SPEC §1: a pixel whose samples all agree (every sample the same vector, or every sample
    giving some class probability 1, as float32 softmax does once a logit gap passes about 17) is the least
    informative: it scores ``-2e30``, finite and below every pixel with any disagreement. The formula itself is
    clipped to ``[-1e30, 1e30]``; it leaves that range (towards +-inf or NaN) only at its poles
    (``beta_c = 0``, ``mu_c = 1``). Unlike the authors' ``balentacq`` there is no ``+1e-32`` on the Beta function
    (see ``docs/math.md``).

    Args:
        mc_probs (Tensor[N, K, C, *]): softmax probabilities of ``K`` stochastic forward passes.
        validate_args: check the probabilities (host sync).

    Returns:
        Tensor[N, *]: float32 (float64 for float64 input). Real-valued, in ``[-1e30, 1e30]`` or ``-2e30``.

    Example:
        >>> g = torch.Generator().manual_seed(42)
        >>> mc = torch.randn(1, 4, 3, 2, 2, generator=g).softmax(dim=2)
        >>> balent(mc).shape
        torch.Size([1, 2, 2])
        >>> balent(torch.tensor([[[0.53, 0.47], [0.47, 0.53]], [[1.0, 0.0], [1.0, 0.0]]]))  # 2 pixels, K = 2
        tensor([-2.5853e-01, -2.0000e+30])
    """
    p = _mc_probs(mc_probs, validate_args)
    out_dtype = p.dtype
    p = p.double()
    lo, hi = p.amin(1), p.amax(1)  # (N, C, *): exact, whatever the layout
    agree = (lo == hi).all(1) | (lo >= 1).any(1)
    mu = _mean(p, 1)
    var = _sum(p - mu.unsqueeze(1), 1, torch.square) / (p.shape[1] - 1)
    mu, var = mu.clamp_min(_BALENT_EPS), var.clamp_min(_BALENT_EPS)
    alpha = mu.square() * (1 - mu) / var - mu
    beta = (1 / mu - 1) * alpha
    a1 = alpha + 1
    log_b = torch.lgamma(a1) + torch.lgamma(beta) - torch.lgamma(a1 + beta)
    h = (log_b - alpha * torch.digamma(a1) - (beta - 1) * torch.digamma(beta)
         + (alpha + beta - 1) * torch.digamma(alpha + beta + 1))
    ent = _entropy(mu, 1)
    mjent = _sum(torch.clamp_max(mu * h, 0), 1) + ent
    score = (ent + math.log(2)) / (mjent + ent)
    score = torch.where(score < 0, 1 / score, score)
    score = torch.where(score > -_BALENT_CLIP, score.clamp_max(_BALENT_CLIP), -_BALENT_CLIP)  # NaN -> -1e30
    return torch.where(agree, _BALENT_AGREE, score).to(out_dtype)
