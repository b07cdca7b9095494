"""Score an unlabeled pool with a model, batch by batch from a DataLoader, into a streaming selector.

:func:`score_pool` is the loop every user would otherwise write around :class:`oreal.stream.StreamingSelector`:
eval mode and ``no_grad``, device moves, the softmax (in float32 for half logits), ``K`` MC-dropout passes for the
strategies that need them, the second pass of the two-pass strategies, and the image ids from the dataset index;
it returns the selection::

    selector = oreal.stream.StreamingSelector("oreal", num_superpixels=S, budget=B, labeled_counts=counts)
    sel = oreal.pool.score_pool(model, loader, selector, exclude=labeled)   # loader yields image, sp_map, index

The batch format (what ``loader`` yields) is documented in :func:`score_pool`.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from oreal import strategies as _strategies
from oreal._checks import check_bool_tensor, check_int, check_int_tensor, check_tensor, compute_dtype
from oreal.select import Selection
from oreal.stream import StreamingSelector

__all__ = ["score_pool"]

_FORMAT = ("a dict with keys 'image' (Tensor[n, 3, H, W], the model input), 'sp_map' (Tensor[n, H, W]) and "
           "'index' (Tensor[n], the dataset index), or a tuple (image, sp_map, index)")


def _unpack(batch: Any) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """``(image, sp_map, index, colours)``; ``colours`` is ``None`` unless a dict batch has that key."""
    colours = None
    if isinstance(batch, Mapping):
        missing = [k for k in ("image", "sp_map", "index") if k not in batch]
        if missing:
            raise ValueError(f"Expected each batch of `loader` to be {_FORMAT}, but a dict without {missing} came "
                             f"(keys {sorted(batch)})")
        image, sp_map, index = batch["image"], batch["sp_map"], batch["index"]
        if batch.get("colours") is not None:
            colours = check_tensor(batch["colours"], "batch colours")
    elif isinstance(batch, (tuple, list)) and len(batch) == 3:
        image, sp_map, index = batch
    else:
        what = f"a {type(batch).__name__} of length {len(batch)}" if isinstance(batch, (tuple, list)) else \
            type(batch).__name__
        raise ValueError(f"Expected each batch of `loader` to be {_FORMAT}, but got {what}")
    check_tensor(image, "batch image")
    check_int_tensor(sp_map, "batch sp_map", ndim=3)
    index = torch.as_tensor(index)
    check_int_tensor(index, "batch index", ndim=1)
    return image, sp_map, index.long(), colours  # int64: uint8 would index `exclude` as a mask, int16 not at all


def _logits(model: nn.Module, image: Tensor, forward: Optional[Callable[[nn.Module, Tensor], Tensor]],
            spatial: Tuple[int, ...]) -> Tensor:
    out = forward(model, image) if forward is not None else model(image)
    if forward is None and isinstance(out, Mapping) and "out" in out:
        out = out["out"]  # torchvision segmentation models return {"out": logits, "aux": ...}
    if not isinstance(out, Tensor) or out.ndim != 4 or (out.shape[0],) + tuple(out.shape[2:]) != spatial:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"Expected the model to return logits Tensor[n, C, H, W] with n, H, W = {spatial} to match "
                         f"the batch's sp_map, but got {got}; pass forward=lambda model, x: ... returning such "
                         f"logits (e.g. upsampled with torch.nn.functional.interpolate)")
    return out


def _dropouts(model: nn.Module) -> list:
    return [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]


def score_pool(model: nn.Module, loader: Iterable[Any], selector: StreamingSelector, *,
               exclude: Optional[Tensor] = None, device: Union[str, torch.device, None] = None,
               mc_samples: Optional[int] = None, seed: int = 0,
               forward: Optional[Callable[[nn.Module, Tensor], Tensor]] = None,
               allow_partial: bool = False) -> Selection:
    """Score every batch of ``loader`` with ``model``, feed ``selector``, and return ``selector.compute()``.

    **Batch format** (what ``loader`` yields): a dict with

    - ``"image"`` (Tensor[n, 3, H, W]): the model input, as the model expects it; the strategies that take
      ``images`` get it too, and for ``sp_crf`` and ``sp_crf_class`` it is the CRF's colours, so it must then be
      uint8 0-255 or floats in ``[0, 1]``; with mean/std-normalised inputs give the colours separately:
    - ``"colours"`` (optional, Tensor[n, 3, H, W] uint8 or floats in ``[0, 1]``): what the edge and CRF strategies
      get as ``images`` instead of ``"image"`` (the model still gets ``"image"``);
    - ``"sp_map"`` (Tensor[n, H, W]): integer superpixel ids in ``[0, S)``, ``-1`` for none;
    - ``"index"`` (Tensor[n] int): the dataset index of each image, unique over the pool; it is the image id
      given to the selector, so ``Selection.image`` holds dataset indices;

    or the tuple ``(image, sp_map, index)``. A ``Dataset`` whose ``__getitem__(i)`` returns
    ``{"image": x, "sp_map": sp, "index": i}`` gives this with the default collate; any batch size, order or
    sampler works (the result does not depend on them, except through the MC-dropout masks).

    For each batch, under ``torch.no_grad()``: the tensors move to ``device``; ``logits = model(image)`` (a
    ``{"out": ...}`` dict, as torchvision's segmentation models return, is unpacked; ``forward(model, image)``
    replaces the call); then ``selector.update`` gets what the strategy needs
    (:func:`oreal.strategies.requirements`): ``probs = softmax(logits, 1)`` (half logits in float32), ``logits``,
    the ``image`` (edge and CRF strategies), and for ``bald``, ``balent``, ``balent_pixel`` ``mc_probs`` of shape
    ``(n, K, C, H, W)`` from ``K = mc_samples`` forward passes with the dropout layers in train mode (everything
    else, batch norm included, in eval mode). The two-pass strategies (``revisiting_sp``, ``pixelbal``) get a
    second pass over ``loader`` after ``selector.next_pass()``. The model's train/eval flags are restored
    afterwards.

    Softmax is taken in float32 when the model gives half-precision logits (autocast), as half probabilities can
    change the picks (see the user guide, "Devices and precision"); float64 stays float64.

    Determinism: the same as the model's forward. MC dropout draws from torch's global generator inside
    :func:`torch.random.fork_rng` (the caller's generator state is left as it was), seeded with
    ``(seed << 32) + b`` before the ``K`` passes of the ``b``-th batch (from 0), so a fixed loader order gives the
    same masks whatever else draws random numbers (shuffling, workers); another order or batching gives other
    masks, hence other ``mc_probs``.

    Args:
        model: a segmentation model, ``image -> logits (n, C, H, W)`` at the resolution of ``sp_map``.
        loader: an iterable of batches in the format above (usually a ``torch.utils.data.DataLoader``); iterated
            once, or twice for two-pass strategies.
        selector (oreal.stream.StreamingSelector): made for this round (strategy, ``S``, budget, counts); fresh or
            :meth:`~oreal.stream.StreamingSelector.reset`.
        exclude (Tensor[num_images, S] bool, optional): already-labeled superpixels of the whole pool, row = dataset
            index (``Tensor[num_images, H, W]`` pixels for ``balent_pixel``); each batch gets ``exclude[index]``.
        device: where the model runs and the batches go; ``None`` = the device of the model's first parameter (CPU
            for a model without parameters).
        mc_samples: ``K >= 2`` MC-dropout passes; required by ``bald``, ``balent`` and ``balent_pixel``, which
            raise if the model has no dropout layer.
        seed: seed of the MC-dropout masks, in ``[0, 2**31)``.
        forward: ``forward(model, image) -> logits``, to replace ``model(image)`` (other outputs, upsampling, TTA).
        allow_partial: passed to ``selector.compute``.

    Returns:
        Selection: ``selector.compute(allow_partial=allow_partial)``; ``image`` holds dataset indices.

    Example:
        >>> import oreal
        >>> from torch import nn
        >>> g = torch.Generator().manual_seed(42)
        >>> images = torch.rand(6, 3, 8, 8, generator=g)
        >>> sp_map = torch.arange(4).repeat_interleave(2).repeat(6, 8, 1)  # 4 vertical strips per image
        >>> pool = [{"image": images[i], "sp_map": sp_map[i], "index": i} for i in range(6)]
        >>> loader = torch.utils.data.DataLoader(pool, batch_size=4)
        >>> _ = torch.manual_seed(0)  # the model's initial weights
        >>> model = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.Dropout2d(0.2))  # 3 classes
        >>> counts = torch.tensor([10, 0, 3])
        >>> selector = oreal.stream.StreamingSelector("oreal", num_superpixels=4, budget=3, labeled_counts=counts)
        >>> sel = score_pool(model, loader, selector)
        >>> with torch.no_grad():  # the same as one oreal.select over the pool in memory
        ...     ref = oreal.select(model.eval()(images).softmax(1), sp_map, counts, 3, num_superpixels=4)
        >>> all(torch.equal(a, b) for a, b in zip(sel, ref))
        True
        >>> selector = oreal.stream.StreamingSelector("bald", num_superpixels=4, budget=2)
        >>> score_pool(model, loader, selector, mc_samples=4).image.tolist()
        [5, 5]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"Expected argument `model` to be a torch.nn.Module, but got {type(model).__name__}")
    if not isinstance(selector, StreamingSelector):
        raise TypeError(f"Expected argument `selector` to be an oreal.stream.StreamingSelector, but got "
                        f"{type(selector).__name__}")
    strategy = selector.strategy
    needs = set(_strategies.requirements(strategy)["inputs"])
    mc = "mc_probs" in needs
    if mc:
        if mc_samples is None:
            raise ValueError(f"Strategy {strategy!r} needs MC-dropout samples: pass mc_samples=K (an integer >= 2)")
        mc_samples = check_int(mc_samples, "mc_samples", minimum=2)
        if not _dropouts(model):
            raise ValueError(f"Strategy {strategy!r} needs MC dropout, but the model has no dropout layer "
                             f"(torch.nn.Dropout, Dropout2d, ...): its {mc_samples} passes would be identical")
    seed = check_int(seed, "seed", minimum=0)
    if seed >= 2 ** 31:
        raise ValueError(f"Expected argument `seed` to be an integer in [0, 2**31), but got {seed}")
    if device is None:
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    if exclude is not None:
        check_tensor(exclude, "exclude")
        check_bool_tensor(exclude, "exclude", tuple(exclude.shape))

    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=cuda):
            for p in range(selector.num_passes):  # 2 for revisiting_sp and pixelbal
                if p:
                    selector.next_pass()
                for b, batch in enumerate(loader):
                    _update(model, selector, batch, needs, mc_samples, (seed << 32) + b, exclude, device, forward)
    finally:
        for m, training in modes:
            m.training = training
    return selector.compute(allow_partial=allow_partial)


def _update(model: nn.Module, selector: StreamingSelector, batch: Any, needs: set, mc_samples: Optional[int],
            mc_seed: int, exclude: Optional[Tensor], device: torch.device,
            forward: Optional[Callable[[nn.Module, Tensor], Tensor]]) -> None:
    image, sp_map, index, colours = _unpack(batch)
    image, sp_map = image.to(device, non_blocking=True), sp_map.to(device, non_blocking=True)
    spatial = tuple(sp_map.shape)
    given = {}
    if needs & {"probs", "logits"}:
        logits = _logits(model, image, forward, spatial)
        if "probs" in needs:
            given["probs"] = logits.to(compute_dtype(logits)).softmax(1)
        if "logits" in needs:
            given["logits"] = logits
    if "mc_probs" in needs:
        dropouts = _dropouts(model)
        for m in dropouts:
            m.train()
        torch.manual_seed(mc_seed)
        samples = [_logits(model, image, forward, spatial) for _ in range(mc_samples)]
        for m in dropouts:
            m.eval()
        given["mc_probs"] = torch.stack([x.to(compute_dtype(x)).softmax(1) for x in samples], 1)
    if "images" in needs:
        given["images"] = image if colours is None else colours.to(device, non_blocking=True)
    ex = None
    if exclude is not None:
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= exclude.shape[0]):
            raise ValueError(f"Expected the batch's dataset indices to be rows of `exclude` (shape "
                             f"{tuple(exclude.shape)}), but got indices in [{int(index.min())}, {int(index.max())}]")
        ex = exclude[index.to(exclude.device)].to(device, non_blocking=True)
    selector.update(sp_map=sp_map, image_ids=index.cpu(), exclude=ex, **given)
