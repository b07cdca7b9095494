"""Training as in the OREAL paper (section 4.2), at a size a CPU can run.

- Adam, batch size 4, no weight decay;
- an *epoch* is as many iterations as it takes to cover the whole pool (not only the labeled part);
  batches are drawn from the images that have at least one labeled pixel (``epoch="labeled"``: an epoch covers
  those images only, fewer iterations while few images have labels; a departure from the paper for small
  compute budgets);
- Polyak averaging (exponential moving average of the weights, buffers copied) — the averaged model is
  the one validated, kept and returned;
- validation mIoU after each epoch, stop after ``patience`` epochs without improvement (or ``max_epochs``);
- all randomness from an explicit ``torch.Generator``: same seed, same weights.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import oreal
import oreal.weak

IGNORE_INDEX = 255


@dataclass
class TrainConfig:
    lr: float = 1e-3
    batch_size: int = 4
    max_epochs: int = 10
    patience: int = 2
    ema_decay: float = 0.99
    min_epochs: int = 1
    flip: bool = True
    eval_batch: int = 16
    epoch: str = "pool"     # "pool": an epoch covers the pool (the paper); "labeled": the images with labels


def to_tensor_images(images_uint8):
    """uint8 (N, H, W, 3) numpy -> float (N, 3, H, W) in [0, 1]."""
    return torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float().div_(255.0).contiguous()


@torch.no_grad()
def predict_logits(model, images, batch=16):
    """``model``'s logits ``(N, C, H, W)`` for ``images``, in batches of ``batch`` (written into one output
    tensor as they come: no list of batches and no concatenation, which cost as much as the head's forward)."""
    if len(images) == 0:
        raise ValueError("predict_logits needs at least one image, but got none")
    model.eval()
    out = None
    for i in range(0, len(images), batch):
        y = model(images[i:i + batch])
        if out is None:
            out = y.new_empty((len(images),) + tuple(y.shape[1:]))
        out[i:i + len(y)] = y
    return out


@torch.no_grad()
def predict_mc(model, images, samples, batch=16, generator_seed=0):
    """MC-dropout probabilities ``(N, K, C, H, W)``: dropout layers on, everything else in eval mode.
    Seeded (``torch.manual_seed`` inside a fork of the global RNG) so repeated calls agree.

    Raises ``ValueError`` when ``model`` has no dropout layer with ``p > 0`` (its K "samples" would all be
    equal and BALD/BalEnt would silently degenerate)."""
    drops = [m for m in model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0]
    if not drops:
        raise ValueError(f"MC dropout needs a dropout layer with p > 0 in the model, but "
                         f"{type(model).__name__} has none: its {samples} samples would be identical. Add "
                         f"dropout before the last layer or use a strategy without MC samples")
    model.eval()
    for m in drops:
        m.train()
    out = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(generator_seed)
        for i in range(0, len(images), batch):
            x = images[i:i + batch]
            out.append(torch.stack([model(x).softmax(1) for _ in range(samples)], 1))
    model.eval()
    return torch.cat(out)


@torch.no_grad()
def evaluate(model, images, labels, num_classes, batch=16):
    """mIoU of ``model``'s predictions (first maximal class per pixel) against ``labels``: the confusion
    matrices of the batches are summed, so the logits of the whole set are never held at once."""
    if len(images) == 0:
        raise ValueError("evaluate needs at least one image, but got none")
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for i in range(0, len(images), batch):
        # max(1).indices is argmax(1) (the first maximal index), several times faster over the class dim on CPU
        pred = model(images[i:i + batch]).max(1).indices
        confusion += oreal.confusion_matrix(pred, labels[i:i + batch], num_classes, ignore_index=IGNORE_INDEX).cpu()
    return float(oreal.miou_from_confusion(confusion))


@torch.no_grad()
def _ema_update(ema, model, decay, step):
    # warm-up (as TF's ExponentialMovingAverage with num_updates): early averages are not dominated
    # by the starting weights
    decay = min(decay, (1.0 + step) / (10.0 + step))
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1.0 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


SPARSE_SHARE = 0.25  # below this share of labeled pixels in a batch, the loss samples the logits there only


def sampled_logits(low, index, size):
    """``F.interpolate(low, size, mode="bilinear", align_corners=False)`` read at the pixels ``index``
    (LongTensor[P, 3] of (image, row, column)) only: ``(P, C)``. Bilinear interpolation is linear, so the
    cross-entropy on these equals the one on the upsampled map at those pixels, without upsampling the rest
    (``grid_sample`` with ``align_corners=False`` uses the same source coordinate ``(i + 0.5) * in / out - 0.5``,
    and ``padding_mode="border"`` the same clamping at the edges)."""
    n, r, c = index.unbind(1)
    H, W = size
    x = (c.to(low.dtype) + 0.5) * (2.0 / W) - 1.0
    y = (r.to(low.dtype) + 0.5) * (2.0 / H) - 1.0
    out = low.new_empty(len(index), low.shape[1])
    for i in n.unique().tolist():  # one grid per image of the batch (a batch holds a few images)
        sel = (n == i).nonzero().flatten()
        grid = torch.stack([x[sel], y[sel]], -1)[None, :, None]
        out[sel] = F.grid_sample(low[i:i + 1], grid, mode="bilinear", padding_mode="border",
                                 align_corners=False)[0, :, :, 0].T
    return out


def _cross_entropy(model, x, ys):
    """``sum_k w_k * cross_entropy(model(x), y_k)`` over the pairs ``ys = [(y_k, w_k)]`` (mean over each
    ``y_k``'s labeled pixels). A model with ``low_logits`` (``forward`` = their bilinear upsampling) is read
    at the labeled pixels only while they are sparse: the same loss up to float rounding, a fraction of the cost."""
    labeled = sum(int((y != IGNORE_INDEX).sum()) for y, _ in ys)
    if not hasattr(model, "low_logits") or labeled > SPARSE_SHARE * ys[0][0].numel():
        logits = model(x)
        return sum(w * F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX) for y, w in ys)
    low = model.low_logits(x)
    total = 0.0
    for y, w in ys:
        index = (y != IGNORE_INDEX).nonzero()
        total = total + w * F.cross_entropy(sampled_logits(low, index, y.shape[-2:]), y[tuple(index.T)])
    return total


class PixelTarget:
    """Training targets as pixel labels: cross-entropy on the labeled pixels only (``255`` elsewhere) and,
    optionally, ``pseudo_weight`` x cross-entropy on the pseudo-labeled pixels (``pseudo``, ``255`` where none;
    pixels that also have a label keep only their label). Each term is a mean over its pixels of the batch;
    a term without pixels is left out."""

    def __init__(self, labels, pseudo=None, pseudo_weight=0.0):
        self.labels = labels
        self.pseudo = None
        if pseudo is not None and pseudo_weight > 0:
            self.pseudo = torch.where(labels != IGNORE_INDEX, IGNORE_INDEX, pseudo)
        self.pseudo_weight = float(pseudo_weight)

    def trainable(self):
        """Bool[N]: images with at least one training pixel."""
        has = (self.labels != IGNORE_INDEX).flatten(1).any(1)
        return has if self.pseudo is None else has | (self.pseudo != IGNORE_INDEX).flatten(1).any(1)

    def loss(self, model, x, pick, flip):
        """The loss of ``model(x)`` for the images ``pick`` (flipped where ``flip``), or None (and no forward
        pass) when the batch has no training pixel."""
        ys = []
        for y, weight in ((self.labels, 1.0), (self.pseudo, self.pseudo_weight)):
            if y is not None:
                y = y[pick]
                if flip is not None:
                    y = torch.where(flip[:, None, None], y.flip(-1), y)
                if (y != IGNORE_INDEX).any():
                    ys.append((y, weight))
        if not ys:
            return None
        return _cross_entropy(model, x, ys)


class WeakTarget:
    """Training targets as weak multi-class superpixel labels: :func:`oreal.weak.weak_loss` (stage 1, its
    defaults: ``T = 0.1``, 16 CE + 8 MP + 1 PP) on ``sp_map (N, H, W)`` and ``weak (N, S, C)``."""

    def __init__(self, sp_map, weak, num_superpixels):
        self.sp_map, self.weak, self.S = sp_map, weak, int(num_superpixels)

    def trainable(self):
        return self.weak.flatten(1).any(1)

    def loss(self, model, x, pick, flip):
        weak = self.weak[pick]
        if not weak.any():
            return None
        sp = self.sp_map[pick]
        if flip is not None:
            sp = torch.where(flip[:, None, None], sp.flip(-1), sp)
        return oreal.weak.weak_loss(model(x), sp, weak, self.S, validate_args=False).total


def train(model, images, labels, val_images, val_labels, num_classes, *, config: TrainConfig, seed: int,
          on_epoch=None, on_checkpoint=None, resume=None):
    """Train ``model`` in place on ``labels`` (LongTensor[N, H, W], 255 = unlabeled; or a :class:`PixelTarget`
    / :class:`WeakTarget`); returns ``(model, info)`` where ``model`` now holds the best Polyak-averaged weights
    and ``info`` has ``epochs`` and ``val_miou``.

    ``on_epoch(epoch, val_miou)`` is called after each epoch. ``on_checkpoint(ckpt)`` is called after each
    epoch that training continues past, with everything needed to continue (weights, optimizer, averaged and
    best weights, the batch generator's and the global RNG's states; live tensors: save or copy them before
    returning). ``train(..., resume=ckpt)`` with the same arguments continues from it and returns bit for bit
    what an uninterrupted call returns (on the same machine and thread count). Dropout draws from the global
    RNG: seed it before the first call, as the loop does.
    """
    g = torch.Generator().manual_seed(int(seed))
    target = labels if isinstance(labels, (PixelTarget, WeakTarget)) else PixelTarget(labels)
    has_label = target.trainable().nonzero().flatten()
    if len(has_label) == 0:
        raise ValueError("no labeled pixel in the training set: nothing to train on")
    if config.epoch not in ("pool", "labeled"):
        raise ValueError(f"Expected TrainConfig.epoch to be 'pool' or 'labeled', but got {config.epoch!r}")
    iters = math.ceil((len(images) if config.epoch == "pool" else len(has_label)) / config.batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=0.0)
    ema = copy.deepcopy(model)
    for p in ema.parameters():
        p.requires_grad_(False)
    best, best_state, bad, epoch, step = -1.0, copy.deepcopy(ema.state_dict()), 0, 0, 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        ema.load_state_dict(resume["ema"])
        opt.load_state_dict(resume["opt"])
        g.set_state(resume["generator"])
        torch.set_rng_state(resume["global_rng"])
        best, best_state = resume["best"], copy.deepcopy(resume["best_state"])
        bad, epoch, step = resume["bad"], resume["epoch"], resume["step"]
    for epoch in range(epoch + 1, config.max_epochs + 1):
        model.train()
        for _ in range(iters):
            pick = has_label[torch.randint(len(has_label), (config.batch_size,), generator=g)]
            x, f = images[pick], None
            if config.flip:
                f = torch.rand(len(pick), generator=g) < 0.5
                x = torch.where(f[:, None, None, None], x.flip(-1), x)
            loss = target.loss(model, x, pick, f)
            if loss is None:
                continue
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            _ema_update(ema, model, config.ema_decay, step)
            step += 1
        score = evaluate(ema, val_images, val_labels, num_classes, config.eval_batch)
        if on_epoch is not None:
            on_epoch(epoch, score)
        if score > best:
            best, bad = score, 0
            best_state = copy.deepcopy(ema.state_dict())
        else:
            bad += 1
            if bad >= config.patience and epoch >= config.min_epochs:
                break
        if on_checkpoint is not None and epoch < config.max_epochs:
            on_checkpoint({"epoch": epoch, "model": model.state_dict(), "ema": ema.state_dict(),
                           "opt": opt.state_dict(), "best": best, "best_state": best_state, "bad": bad,
                           "step": step, "generator": g.get_state(), "global_rng": torch.get_rng_state()})
    model.load_state_dict(best_state)
    return model, {"epochs": epoch, "val_miou": best}
