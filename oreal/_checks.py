"""Shared validation helpers.

Cheap checks (type, dtype, shape, device) always run. Checks that must read values and therefore sync with the
host (finiteness, ranges, sums) run only when the public function is called with ``validate_args=True``.
Every message says what was expected and what came.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence

import torch
from torch import Tensor

_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
_WIDE_UNSIGNED = tuple(getattr(torch, f"uint{b}") for b in (16, 32, 64) if hasattr(torch, f"uint{b}"))
INT64_MAX = torch.iinfo(torch.int64).max


def check_tensor(x: object, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"Expected argument `{name}` to be a torch.Tensor, but got {type(x).__name__}")
    if x.layout != torch.strided:
        raise TypeError(f"Expected argument `{name}` to be a dense (strided) tensor, but got layout {x.layout}; "
                        f"convert it with `{name}.to_dense()`")
    return x


def check_float(x: object, name: str, *, min_ndim: int = 0, ndim: Optional[int] = None) -> Tensor:
    x = check_tensor(x, name)
    if not x.is_floating_point():
        raise TypeError(f"Expected argument `{name}` to have a floating point dtype, but got {x.dtype}")
    _check_ndim(x, name, min_ndim=min_ndim, ndim=ndim)
    return x


def check_images(x: object, spatial: Sequence[int], ref: Tensor, ref_name: str) -> Tensor:
    """``images``: a dense ``Tensor[N, channels, H, W]`` (at least one channel) or ``Tensor[N, H, W]`` of a real
    numeric dtype, whose N, H, W are ``spatial`` (those of ``ref``), on ``ref``'s device."""
    if not isinstance(x, Tensor) or x.ndim not in (3, 4) or (x.ndim == 4 and not x.shape[1]):
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"Expected `images` to be a Tensor[N, channels, H, W] with at least one channel or "
                         f"Tensor[N, H, W], but got {shape}")
    check_tensor(x, "images")
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"Expected `images` to have a real numeric dtype, but got {x.dtype}")
    got = (x.shape[0],) + tuple(x.shape[-2:])
    if got != tuple(spatial):
        raise ValueError(f"`images` must have N, H, W = {tuple(spatial)} to match {ref_name}, got shape "
                         f"{tuple(x.shape)}")
    check_same_device(x, "images", ref, ref_name)
    return x


def check_int_tensor(x: object, name: str, *, ndim: Optional[int] = None) -> Tensor:
    x = check_tensor(x, name)
    if x.dtype not in _INT_DTYPES:
        hint = ""
        if x.dtype in _WIDE_UNSIGNED:  # e.g. torch.from_numpy of a 16-bit PNG
            hint = (f"; torch implements few operations for {x.dtype} (no comparisons, no min/max), so convert it "
                    f"first, e.g. `{name}.long()`")
        raise TypeError(f"Expected argument `{name}` to have an integer dtype, but got {x.dtype}{hint}")
    _check_ndim(x, name, ndim=ndim)
    return x


def check_bool_tensor(x: object, name: str, shape: Sequence[int]) -> Tensor:
    x = check_tensor(x, name)
    if x.dtype != torch.bool:
        raise TypeError(f"Expected argument `{name}` to have dtype torch.bool, but got {x.dtype}")
    check_shape(x, name, shape)
    return x


def _check_ndim(x: Tensor, name: str, *, min_ndim: int = 0, ndim: Optional[int] = None) -> None:
    if ndim is not None and x.ndim != ndim:
        raise ValueError(
            f"Expected argument `{name}` to have {ndim} dimensions, but got {x.ndim} (shape {tuple(x.shape)})"
        )
    if x.ndim < min_ndim:
        raise ValueError(
            f"Expected argument `{name}` to have at least {min_ndim} dimensions, but got {x.ndim} "
            f"(shape {tuple(x.shape)})"
        )


def check_shape(x: Tensor, name: str, shape: Sequence[int], what: str = "") -> None:
    if tuple(x.shape) != tuple(shape):
        extra = f" {what}" if what else ""
        raise ValueError(f"`{name}` must have shape {tuple(shape)}{extra}, got {tuple(x.shape)}")


def check_same_device(x: Tensor, name: str, ref: Tensor, ref_name: str) -> None:
    if x.device != ref.device:
        raise ValueError(
            f"Expected `{name}` to be on the same device as `{ref_name}` ({ref.device}), but got {x.device}"
        )


def check_real(x: Tensor, name: str) -> None:
    """Values can be read: not a meta tensor (shape only). Called before every host sync."""
    if x.is_meta:
        raise ValueError(f"Expected `{name}` to hold real data, but got a tensor on the meta device (shape "
                         f"{tuple(x.shape)}, no values); acquisition reads the values, so it needs real data")


def check_int(x: object, name: str, *, minimum: int = 0) -> int:
    """A Python int (or one-element integer tensor) in ``[minimum, 2**63 - 1]``: every integer argument ends up in
    int64 arithmetic, so larger ones are refused instead of wrapping around."""
    if isinstance(x, Tensor):
        if x.numel() != 1 or x.is_floating_point() or x.dtype == torch.bool:
            raise TypeError(f"Expected argument `{name}` to be an integer, but got a tensor of shape "
                            f"{tuple(x.shape)} and dtype {x.dtype}")
        check_real(x, name)
        x = int(x.item())
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise TypeError(f"Expected argument `{name}` to be an integer, but got {type(x).__name__} {x!r}")
    if x < minimum:
        raise ValueError(f"Expected argument `{name}` to be an integer >= {minimum}, but got {x}")
    if x > INT64_MAX:
        raise ValueError(f"Expected argument `{name}` to be an integer <= 2**63 - 1 = {INT64_MAX} (int64), "
                         f"but got {x}")
    return int(x)


def check_flag(x: object, name: str, *, kind: str = "argument") -> bool:
    """``True`` or ``False``: a truthy stand-in (``"no"``, ``1``) is refused rather than read as a switch. ``kind``
    names what is checked in the message (``"argument"`` or ``"option"``)."""
    if not isinstance(x, bool):
        raise TypeError(f"Expected {kind} `{name}` to be True or False, but got {type(x).__name__} {x!r}")
    return x


def check_ignore_index(ignore_index: object, num_classes: int) -> int:
    """``ignore_index`` must be an integer (int64) outside the class ids ``[0, C)``: inside, it would silently drop
    a class."""
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"Expected argument `ignore_index` to be an integer, but got {type(ignore_index).__name__} "
                        f"{ignore_index!r}")
    if 0 <= ignore_index < num_classes:
        raise ValueError(f"Expected argument `ignore_index` to be an integer outside the class ids [0, "
                         f"{num_classes}), but got {ignore_index!r}")
    return check_int(ignore_index, "ignore_index", minimum=-INT64_MAX - 1)


def check_number(x: object, name: str, *, positive: bool, kind: str = "argument", none_ok: bool = False) -> float:
    """A plain finite number, ``> 0`` (``positive``) or ``>= 0``; ``TypeError`` for anything that is not a number.
    ``kind`` names what is checked in the message (``"argument"`` or ``"option"``); ``none_ok`` only rewords the
    type error (the caller skips ``None``)."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real):  # numpy scalars too
        none = " or None" if none_ok else ""
        raise TypeError(f"Expected {kind} `{name}` to be a number{none}, but got {type(x).__name__} {x!r}")
    if not (math.isfinite(x) and (x > 0 if positive else x >= 0)):
        raise ValueError(f"Expected {kind} `{name}` to be a finite number {'> 0' if positive else '>= 0'}, "
                         f"but got {x}")
    return float(x)


def check_choice(x: object, name: str, choices: Sequence[str]) -> str:
    if x not in choices:
        raise ValueError(f"Expected argument `{name}` to be one of {list(choices)}, but got {x!r}")
    return x  # type: ignore[return-value]


def sum_tolerance(dtype: torch.dtype) -> float:
    """How far a probability vector of ``dtype`` may sum from 1 before it is rejected."""
    return 2e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-3


def validate_probabilities(probs: Tensor, name: str = "probs", dim: int = 1) -> None:
    """Finite, in [0, 1], and summing to 1 along ``dim`` (host sync). An empty tensor passes."""
    check = ProbabilityCheck(probs, name, dim)
    check(probs)
    check.raise_if_invalid()


class ProbabilityCheck:
    """:func:`validate_probabilities` piece by piece, for a pass that already reads the data: call it on pieces of
    ``probs`` that keep all of dimension ``dim``, then :meth:`raise_if_invalid` (one host sync, the same errors).

    A caller that has ``min(p, 1 - p)`` of a piece at hand passes it as ``nearest``: it is negative exactly where
    ``p`` is outside ``[0, 1]``, so the range check costs a minimum of data in cache (the range quoted in the error is
    then computed from ``probs``, on the error path only).
    """

    def __init__(self, probs: Tensor, name: str = "probs", dim: int = 1) -> None:
        check_real(probs, name)
        self.probs, self.name, self.dim = probs, name, dim
        self.parts: list = []

    @torch.no_grad()  # statistics read on the host: no graph (nor the warning on its scalars) for inputs with grad
    def __call__(self, piece: Tensor, nearest: Optional[Tensor] = None) -> None:
        if not piece.numel():
            return
        # NaN or inf anywhere makes the corresponding sum non-finite, so one reduction checks both.
        low_sum, high_sum = extremes(piece.sum(dim=self.dim, dtype=torch.float32))
        err = torch.maximum(1 - low_sum.double(), high_sum.double() - 1)
        if nearest is None:
            lo, hi = extremes(piece)
            lowest = torch.minimum(lo.double(), 1 - hi.double())
        else:
            lowest = nearest.amin().double()
        self.parts.append(torch.stack([err, lowest]))

    @torch.no_grad()
    def raise_if_invalid(self) -> None:
        if not self.parts:
            return
        stats = torch.stack(self.parts).cpu()
        err, lowest = float(stats[:, 0].max()), float(stats[:, 1].min())
        if not math.isfinite(err):
            raise ValueError(f"Expected `{self.name}` to contain only finite values, but found NaN or inf")
        if lowest < 0:
            lo, hi = extremes(self.probs)
            raise ValueError(f"Expected `{self.name}` to be probabilities in [0, 1], but got values in "
                             f"[{float(lo):.4g}, {float(hi):.4g}]; pass softmax(logits, dim={self.dim}), not logits")
        tol = sum_tolerance(self.probs.dtype)
        if err > tol:
            raise ValueError(f"Expected `{self.name}` to sum to 1 along dim {self.dim} (tolerance {tol:g}), but the "
                             f"largest deviation is {err:.4g}; pass softmax(logits, dim={self.dim}), not logits")


def extremes(x: Tensor) -> tuple:
    """``torch.aminmax`` of all of ``x``, reading it in memory order: torch's full ``aminmax`` walks a permuted
    tensor (e.g. ``channels_last``) in its logical order, 5 to 10 times slower; the min and max do not depend on
    the order."""
    order = sorted(range(x.ndim), key=lambda d: -x.stride(d))
    return torch.aminmax(x.permute(order))


def all_finite(x: Tensor) -> bool:
    """No NaN or inf in a real tensor (host sync): one ``aminmax`` pass, which propagates NaN, instead of the
    ``isfinite`` mask (a comparison, an absolute value and a second comparison per value, about 8 read passes)."""
    if not x.is_floating_point() or not x.numel():
        return True
    return bool(torch.isfinite(torch.stack(extremes(x))).all())


def validate_unit_interval(x: Tensor, name: str, what: str = "probabilities") -> None:
    """Every value in ``[0, 1]`` (NaN fails), host sync; ``what`` names the values in the message."""
    check_real(x, name)
    if not x.numel():
        return
    lo, hi = extremes(x)
    if not (bool(lo >= 0) and bool(hi <= 1)):
        raise ValueError(f"Expected `{name}` to hold {what} in [0, 1], but got values in [{float(lo):.4g}, "
                         f"{float(hi):.4g}]")


def validate_finite(x: Tensor, name: str) -> None:
    check_real(x, name)
    if not all_finite(x):
        raise ValueError(f"Expected `{name}` to contain only finite values, but found NaN or inf")


def validate_ids(x: Tensor, name: str, low: int, high: int, what: str, extra: Optional[int] = None) -> None:
    """All values in ``[low, high)`` (or equal to ``extra``), host sync.

    One ``aminmax`` pass decides when the allowed values form one range (no ``extra``, or ``extra`` adjacent to
    it, like ``-1`` for superpixel maps); the detailed scan runs only to report a bad value, or when ``extra``
    lies apart from the range (an ignore index such as 255).
    """
    check_real(x, name)
    if x.numel() == 0:
        return
    lo_ok, hi_ok = low, high
    if extra == low - 1:
        lo_ok = extra
    elif extra == high:
        hi_ok = high + 1
    lo, hi = extremes(x)
    if int(lo) >= lo_ok and int(hi) < hi_ok:
        return
    x = x.long()  # compared with Python ints in int64: uint8 would wrap an `extra` of -1 to 255
    bad = (x < low) | (x >= high)
    if extra is not None:
        bad &= x != extra
    if bool(bad.any()):
        value = int(x[bad].flatten()[0])
        allowed = f"[{low}, {high})" + (f" or {extra}" if extra is not None else "")
        raise ValueError(f"Expected `{name}` to hold {what} in {allowed}, but found {value}"
                         + _ids_hint(name, what, value, high, int(hi), extra))


def _ids_hint(name: str, what: str, value: int, high: int, largest: int, extra: Optional[int]) -> str:
    """What to do about a bad id: the superpixel count or relabelling for maps, ``ignore_index`` for labels."""
    if name == "sp_map" and what == "superpixel ids":
        if value >= high:
            return (f"; pass num_superpixels = largest id + 1 = {largest + 1}, or make the ids contiguous per image "
                    f"with `sp_map, S = oreal.labels.relabel_superpixels(sp_map)`")
        return (f"; mark pixels without a superpixel with -1 (`oreal.labels.relabel_superpixels(sp_map, "
                f"ignore={value})` does)")
    if what == "class ids" and extra is not None:
        return f"; if {value} marks pixels without a label (void), pass `ignore_index={value}`"
    return ""


def validate_nonnegative(x: Tensor, name: str) -> None:
    check_real(x, name)
    if x.numel() and bool((x < 0).any()):
        raise ValueError(f"Expected `{name}` to be non-negative, but found {int(x.min())}")


def compute_dtype(x: Tensor) -> torch.dtype:
    """Half inputs are computed in float32; float32/float64 keep their dtype."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
