"""A simulated annotator: dominant-label annotation of picked superpixels, one click per superpixel.

The OREAL paper (after Cai et al. 2021) labels a whole superpixel with its most frequent ground-truth class
("dominant labelling"), so an annotator spends a single click per superpixel. Superpixels whose pixels are
all ``ignore`` still cost a click but add no labels. With ``pixels=True`` (the loop's ``--unit pixel``) each
pixel is its own unit and the answer is its true class, one click per pixel (an ``ignore`` pixel costs a click
and adds nothing). The weak oracle of ``--labels weak`` is :func:`oreal.weak.weak_labels`.
"""
from __future__ import annotations

import torch

import oreal

IGNORE_INDEX = 255


class Oracle:
    """Holds the ground truth of the pool and answers queries.

    Parameters
    ----------
    labels : LongTensor[N, H, W]   ground truth, ``255`` = ignore
    sp_map : LongTensor[N, H, W]   superpixel ids in ``[0, S)``
    num_superpixels : int          ``S``
    num_classes : int              ``C``
    pixels : bool                  ``sp_map`` is the identity map ``h * W + w`` (``S = H * W``, the loop's
                                   ``--unit pixel``): the answer is each pixel's own class, read directly
                                   (no ``(N, S, C)`` count table)
    """

    def __init__(self, labels, sp_map, num_superpixels, num_classes, ignore_index=IGNORE_INDEX, pixels=False):
        if labels.shape != sp_map.shape:
            raise ValueError(f"labels and sp_map must have the same shape, got {tuple(labels.shape)} and "
                             f"{tuple(sp_map.shape)}")
        self.labels = labels
        self.sp_map = sp_map
        self.S = int(num_superpixels)
        self.C = int(num_classes)
        self.ignore_index = ignore_index
        #: Long[N, S]: the answer the annotator would give for every superpixel (-1 = nothing to label)
        if pixels:
            if self.S != labels[0].numel() or not torch.equal(sp_map, torch.arange(self.S).reshape(
                    labels.shape[1:]).expand_as(sp_map)):
                raise ValueError("pixels=True needs the identity map sp_map[n, h, w] = h * W + w with "
                                 "num_superpixels = H * W")
            self.dominant = torch.where(labels == ignore_index, -1, labels.long()).reshape(len(labels), -1)
        else:
            self.dominant = oreal.dominant_labels(labels, sp_map, self.S, self.C, ignore_index=ignore_index)
        self.clicks = 0

    def annotate(self, image, superpixel):
        """Answer a query: ``image``, ``superpixel`` ``LongTensor[B]``. Returns the dominant labels
        ``LongTensor[B]`` (-1 = superpixel with no valid pixel) and counts ``B`` clicks."""
        image = torch.as_tensor(image, dtype=torch.long)
        superpixel = torch.as_tensor(superpixel, dtype=torch.long)
        if image.shape != superpixel.shape or image.ndim != 1:
            raise ValueError(f"image and superpixel must be 1-D of equal length, got {tuple(image.shape)} and "
                             f"{tuple(superpixel.shape)}")
        if len(image) and (int(image.min()) < 0 or int(image.max()) >= self.dominant.shape[0]
                           or int(superpixel.min()) < 0 or int(superpixel.max()) >= self.S):
            raise ValueError("query outside the pool: image ids must be in "
                             f"[0, {self.dominant.shape[0]}) and superpixel ids in [0, {self.S})")
        self.clicks += len(image)
        return self.dominant[image, superpixel]


def partial_labels(sp_map, labeled, sp_labels, ignore_index=IGNORE_INDEX):
    """Training label maps from the labeled set.

    ``labeled`` Bool[N, S] and ``sp_labels`` Long[N, S] (the class annotated for each labeled superpixel,
    -1 = none). Every pixel of a labeled superpixel gets its dominant class; everything else is
    ``ignore_index``. Returns LongTensor[N, H, W] (:func:`oreal.labels.partial_labels` of the labeled entries).
    """
    sp_labels = torch.where(labeled, sp_labels, torch.full_like(sp_labels, -1))
    return oreal.labels.partial_labels(sp_map, sp_labels, ignore_index=ignore_index)
