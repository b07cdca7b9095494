"""From a :class:`~oreal.Selection` to annotation tools and back: Label Studio tasks, COCO RLE, PNG masks.

No server code and no dependency beyond torch and the standard library (``import oreal.export``; it is not
imported by ``import oreal``). The server-facing loop is ``examples/label_studio.py``; the steps for a human
annotation round are in ``docs/labelstudio.md``.

Out:
    - :func:`labeling_config`: the Label Studio labeling config (XML) for a list of class names: the image, the
      picked region(s) as a brush layer, and a single choice (dominant labels) or multiple choice (weak labels).
    - :func:`tasks`: one Label Studio task per picked superpixel (``per="superpixel"``) or per image with all of
      its picks (``per="image"``); every picked region is pre-filled as a brush mask (a prediction, region id
      ``"sp<s>"``) and may also be outlined in the image itself.
    - :func:`coco_rle`, :func:`brush_rle`, :func:`png_bytes`, :func:`data_uri`: region masks for other tools.

Back:
    - :func:`read_answers`: a Label Studio JSON export (a list of tasks with their annotations) into
      per-superpixel labels, merged into the labels already known; every problem (a task missing, skipped,
      answered twice differently, an unknown class, a label that would be overwritten) is reported at once.
"""
from __future__ import annotations

import base64
import json
import os
import struct
import zlib
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Union
from xml.sax.saxutils import quoteattr

import torch
from torch import Tensor

from oreal._checks import (
    check_bool_tensor,
    check_choice,
    check_int,
    check_int_tensor,
    check_shape,
    check_tensor,
    validate_ids,
)
from oreal.aggregate import check_sp_map
from oreal.labels import region_masks

__all__ = [
    "Answers",
    "AnswerError",
    "brush_rle",
    "coco_rle",
    "data_uri",
    "labeling_config",
    "png_bytes",
    "read_answers",
    "tasks",
]

#: Names used in the labeling config and the tasks; :func:`read_answers` looks for these.
IMAGE_NAME = "image"
REGION_NAME = "region"
CHOICE_NAME = "class"
#: Keys of a task's ``data`` that identify what it asks for.
KEY_ROUND, KEY_IMAGE, KEY_SUPERPIXELS = "oreal_round", "oreal_image", "oreal_superpixels"
OUTLINE_COLOR = (255, 0, 255)


# ----------------------------------------------------------------------------------------------------------
# labeling config
def _check_names(class_names: Sequence[str], void: Optional[str]) -> List[str]:
    if isinstance(class_names, str) or not isinstance(class_names, Sequence):
        raise TypeError(f"Expected argument `class_names` to be a sequence of strings, but got "
                        f"{type(class_names).__name__}")
    names = list(class_names)
    if not names:
        raise ValueError("Expected argument `class_names` to hold at least one class name, but got none")
    for i, n in enumerate(names + ([void] if void is not None else [])):
        if not isinstance(n, str) or not n.strip() or n != n.strip():
            where = "`void`" if i == len(names) else f"`class_names[{i}]`"
            raise ValueError(f"Expected {where} to be a non-empty string without leading or trailing spaces, "
                             f"but got {n!r}")
    seen = set()
    for n in names:
        if n in seen:
            raise ValueError(f"Expected argument `class_names` to hold distinct names, but {n!r} comes twice")
        seen.add(n)
    if void is not None and void in seen:
        raise ValueError(f"Expected argument `void` to differ from every class name, but got {void!r}")
    return names


def labeling_config(class_names: Sequence[str], *, weak: bool = False, per: str = "superpixel",
                    void: Optional[str] = None) -> str:
    """The Label Studio labeling config (XML) asking for the class(es) of the picked region(s).

    The view holds the image (``$image``), a brush layer ``region`` with the single label ``region`` that shows
    the pre-filled picks of :func:`tasks`, and a choice ``class`` listing ``class_names`` in order (and
    ``void`` last when given: "no class applies", e.g. a region of ignore pixels). With ``per="image"`` the
    choice is per region: the annotator selects a region, then its class. Names are XML-escaped.

    Args:
        class_names: the ``C`` class names; class ``c`` is ``class_names[c]``.
        weak: multiple choice (every class present: weak labels) instead of a single one (dominant label).
        per: ``"superpixel"`` (one region per task) or ``"image"`` (all picks of an image in one task).
        void: an extra answer for regions without a class; ``None`` for none.

    Returns:
        str: the XML.

    Example:
        >>> print(labeling_config(["sky", "road & kerb"]))
        <View>
          <Image name="image" value="$image" zoom="true" zoomControl="true"/>
          <BrushLabels name="region" toName="image">
            <Label value="region" background="#ff00ff"/>
          </BrushLabels>
          <Header value="Class of the magenta region"/>
          <Choices name="class" toName="image" choice="single-radio" required="true" showInline="true">
            <Choice value="sky"/>
            <Choice value="road &amp; kerb"/>
          </Choices>
        </View>
    """
    names = _check_names(class_names, void)
    check_choice(per, "per", ("superpixel", "image"))
    choice = "multiple" if weak else "single-radio"
    what = "Classes present in" if weak else "Class of"
    region = "each magenta region (select it first)" if per == "image" else "the magenta region"
    per_region = ' perRegion="true"' if per == "image" else ""
    lines = ["<View>",
             f'  <Image name="{IMAGE_NAME}" value="${IMAGE_NAME}" zoom="true" zoomControl="true"/>',
             f'  <BrushLabels name="{REGION_NAME}" toName="{IMAGE_NAME}">',
             f'    <Label value="{REGION_NAME}" background="#ff00ff"/>',
             "  </BrushLabels>",
             f"  <Header value={quoteattr(f'{what} {region}')}/>",
             f'  <Choices name="{CHOICE_NAME}" toName="{IMAGE_NAME}" choice="{choice}" required="true"'
             f'{per_region} showInline="true">']
    lines += [f"    <Choice value={quoteattr(n)}/>" for n in names + ([void] if void is not None else [])]
    lines += ["  </Choices>", "</View>"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# masks as bytes: PNG, COCO RLE, Label Studio brush RLE
def _check_mask(mask: object, name: str = "mask") -> Tensor:
    mask = check_tensor(mask, name)
    if mask.dtype != torch.bool:
        raise TypeError(f"Expected argument `{name}` to have dtype torch.bool, but got {mask.dtype}")
    if mask.ndim != 2:
        raise ValueError(f"Expected argument `{name}` to have 2 dimensions (H, W), but got shape {tuple(mask.shape)}")
    return mask


def png_bytes(image: Tensor) -> bytes:
    """A PNG file (8-bit, no compression filter) of a mask or an image, written with ``zlib`` only.

    Args:
        image (Tensor[H, W] bool, Tensor[H, W] uint8 or Tensor[3, H, W] uint8): a bool mask is written as
            ``0`` / ``255`` grey, ``uint8`` ``(H, W)`` as grey, ``(3, H, W)`` as RGB.

    Returns:
        bytes: the PNG file.

    Example:
        >>> png = png_bytes(torch.tensor([[True, False]]))
        >>> png[:8], png[12:16], png[16:24]  # signature, first chunk IHDR: width 2, height 1
        (b'\\x89PNG\\r\\n\\x1a\\n', b'IHDR', b'\\x00\\x00\\x00\\x02\\x00\\x00\\x00\\x01')
    """
    image = check_tensor(image, "image")
    if image.dtype == torch.bool and image.ndim == 2:
        image = image.to(torch.uint8) * 255
    if image.dtype != torch.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[0] == 3)):
        raise ValueError(f"Expected argument `image` to be a bool or uint8 (H, W) mask or a uint8 (3, H, W) "
                         f"image, but got {image.dtype} of shape {tuple(image.shape)}")
    rgb = image.ndim == 3
    h, w = image.shape[-2:]
    if h == 0 or w == 0:
        raise ValueError(f"Expected argument `image` to have a non-empty (H, W), but got shape {tuple(image.shape)}")
    rows = (image.permute(1, 2, 0) if rgb else image).reshape(h, -1).cpu()
    raw = torch.cat([torch.zeros(h, 1, dtype=torch.uint8), rows], 1)  # filter byte 0 (none) per row
    body = bytes(raw.flatten().tolist())

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2 if rgb else 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(body, 6))
            + chunk(b"IEND", b""))


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...``: an image embedded in a task, for pools without an image server.

    Example:
        >>> data_uri(b"\\x89PNG")
        'data:image/png;base64,iVBORw=='
    """
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _runs(flat: Tensor) -> tuple:
    """(values, lengths) of the runs of equal values of a 1-D tensor."""
    if flat.numel() == 0:
        return [], []
    change = torch.nonzero(flat[1:] != flat[:-1]).flatten() + 1
    starts = torch.cat([torch.zeros(1, dtype=torch.long), change])
    ends = torch.cat([change, torch.tensor([flat.numel()])])
    return flat[starts].tolist(), (ends - starts).tolist()


def coco_rle(mask: Tensor, *, compressed: bool = True) -> Dict[str, Any]:
    """COCO run-length encoding of a binary mask, as ``pycocotools.mask.encode`` writes it.

    Pixels are read in column-major (Fortran) order; ``counts`` alternates runs of ``0`` and ``1`` starting with
    ``0`` (a leading run of length 0 when the first pixel is set, and ``[0]`` for a mask without pixels).
    ``compressed=True`` gives the compact string form of COCO's ``maskApi.c`` (each count, after the third minus
    the count two before, in 5-bit groups with a continuation bit, offset by 48 into printable ASCII); ``False``
    the uncompressed list of counts, as COCO's ``iscrowd`` annotations store it.

    Args:
        mask (Tensor[H, W], bool): the region.
        compressed: string counts (pycocotools' form) or a list of ints.

    Returns:
        dict: ``{"size": [H, W], "counts": str | list[int]}``.

    Example:
        >>> m = torch.tensor([[False, True], [False, True]])
        >>> coco_rle(m, compressed=False), coco_rle(m)
        ({'size': [2, 2], 'counts': [2, 2]}, {'size': [2, 2], 'counts': '22'})
    """
    mask = _check_mask(mask)
    values, lengths = _runs(mask.t().reshape(-1).cpu())
    # a leading run of 0s of length 0 where the first pixel is set, and for an empty mask (maskApi.c's rleEncode
    # writes the open run: [0])
    counts = ([0] if not values or values[0] else []) + lengths
    if not compressed:
        return {"size": list(mask.shape), "counts": counts}
    out = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift: negative deltas end at -1
            more = (x != -1) if (c & 0x10) else (x != 0)
            out.append(chr(c + 48 + (0x20 if more else 0)))
    return {"size": list(mask.shape), "counts": "".join(out)}


def brush_rle(mask: Tensor) -> List[int]:
    """Label Studio's brush RLE of a binary mask (the ``rle`` of a ``brushlabels`` result).

    The format of Label Studio's image brush (``@thi.ng/rle-pack``): the row-major RGBA bytes of the mask
    (``255`` inside, ``0`` outside, in all four channels) as a bit stream: 32 bits of length, 5 bits of word
    size minus one (``7``), four 4-bit run-size classes minus one (``3, 4, 8, 16`` bits), then per run a ``1``,
    the 2-bit size class, the run length minus one and the 8-bit value (runs over ``2^16`` are split into parts
    of ``2^16`` and a rest, all in the 16-bit class), padded with 1 to 8 zero bits. The bytes are those of
    ``label_studio_sdk.converter.brush.mask2rle`` (``tests/test_label_studio.py`` compares them with the SDK of
    the Label Studio environment).

    Args:
        mask (Tensor[H, W], bool): the region.

    Returns:
        list[int]: bytes in ``[0, 255]``.

    Example:
        >>> brush_rle(torch.tensor([[True]]))
        [0, 0, 0, 4, 57, 27, 252, 127, 224]
    """
    mask = _check_mask(mask)
    values, lengths = _runs(mask.reshape(-1).cpu())
    bits = [f"{4 * mask.numel():032b}", f"{7:05b}", "".join(f"{x - 1:04b}" for x in (3, 4, 8, 16))]
    for v, n in zip(values, lengths):
        v, n = (255 if v else 0), 4 * n  # every pixel is 4 equal bytes: runs are >= 4 long
        size = 0 if n <= 8 else 1 if n <= 16 else 2 if n <= 256 else 3  # of the whole run, as the SDK
        while n > 1 << 16:
            bits.append(f"111{(1 << 16) - 1:016b}{v:08b}")
            n -= 1 << 16
        bits.append(f"1{size:02b}{n - 1:0{(3, 4, 8, 16)[size]}b}{v:08b}")
    s = "".join(bits)
    s += "0" * (8 - len(s) % 8)
    return [int(s[i:i + 8], 2) for i in range(0, len(s), 8)]


# ----------------------------------------------------------------------------------------------------------
# tasks
def _check_selection(selection: Any, num_images: int, num_superpixels: int) -> list:
    for f in ("image", "superpixel"):
        check_int_tensor(getattr(selection, f, None), f"selection.{f}", ndim=1)
    img, sp = selection.image.cpu().long(), selection.superpixel.cpu().long()
    if img.shape != sp.shape:
        raise ValueError(f"Expected `selection.image` and `selection.superpixel` to have equal lengths, but got "
                         f"{tuple(img.shape)} and {tuple(sp.shape)}")
    n, s = num_images, num_superpixels
    if img.numel() and (int(img.min()) < 0 or int(img.max()) >= n or int(sp.min()) < 0 or int(sp.max()) >= s):
        raise ValueError(f"Expected the selection's image ids in [0, {n}) and superpixel ids in [0, {s}), "
                         f"but got images in [{int(img.min())}, {int(img.max())}] and superpixels in "
                         f"[{int(sp.min())}, {int(sp.max())}]")
    pairs = list(zip(img.tolist(), sp.tolist()))
    if len(set(pairs)) != len(pairs):
        raise ValueError("Expected a selection without repeated (image, superpixel) picks, but some come twice")
    return pairs


def _outlined(image: Tensor, masks: Tensor) -> Tensor:
    """``image`` (3, H, W) uint8 with the inner boundary pixels of each mask (B, H, W) painted magenta."""
    m = torch.nn.functional.pad(masks.float(), (1, 1, 1, 1), value=0.0)
    interior = (m[:, 1:-1, :-2] > 0) & (m[:, 1:-1, 2:] > 0) & (m[:, :-2, 1:-1] > 0) & (m[:, 2:, 1:-1] > 0)
    edge = (masks & ~interior).any(0)
    out = image.clone()
    out[:, edge] = torch.tensor(OUTLINE_COLOR, dtype=torch.uint8)[:, None]
    return out


def tasks(selection: Any, sp_map: Tensor, images: Union[Tensor, Sequence[str]], *, num_superpixels: int,
          per: str = "superpixel", round: int = 0, outline: bool = False, validate_args: bool = True
          ) -> List[Dict[str, Any]]:
    """Label Studio tasks (the JSON list its import takes) for the picks of one round.

    Each task's ``data`` holds ``image`` (the picture to show), ``oreal_round``, ``oreal_image`` (``n``) and
    ``oreal_superpixels`` (the picked ids ``s`` of that image it asks for); its single prediction pre-fills each
    picked region as a brush mask of label ``region`` with region id ``"sp<s>"``, so the annotator sees which
    pixels are asked about. Tasks come in pick order (``per="image"``: in order of each image's first pick,
    its superpixels in pick order). Deterministic.

    Args:
        selection: a :class:`~oreal.Selection` (its ``image`` and ``superpixel``, Tensor[B] int64).
        sp_map (Tensor[N, H, W]): integer superpixel ids in ``[0, S)`` or ``-1``.
        images: per pool image, either a URL Label Studio can load (``Sequence[str]`` of length ``N``) or the
            pixels (Tensor[N, 3, H, W] uint8), then embedded in the task as a PNG data URI.
        num_superpixels: ``S``.
        per: ``"superpixel"`` (one task per pick) or ``"image"`` (one task per image with all of its picks).
        round: the round number, stored in each task and checked by :func:`read_answers`.
        outline: also paint the region boundaries into the embedded image (needs pixel ``images``), for
            projects that hide predictions from annotators.
        validate_args: check superpixel ids, and that every pick is present in its image (host syncs).

    Returns:
        list[dict]: ``[{"data": {...}, "predictions": [{"model_version": "oreal", "result": [...]}]}, ...]``.

    Example:
        >>> from oreal import Selection
        >>> sp = torch.tensor([[[0, 0, 1], [2, 2, 1]]])
        >>> sel = Selection(torch.tensor([0]), torch.tensor([1]), torch.tensor([-1]), torch.tensor([0.5]))
        >>> t = tasks(sel, sp, ["https://example.org/0.png"], num_superpixels=3)
        >>> t[0]["data"]
        {'image': 'https://example.org/0.png', 'oreal_round': 0, 'oreal_image': 0, 'oreal_superpixels': [1]}
        >>> r = t[0]["predictions"][0]["result"][0]
        >>> r["id"], r["original_width"], r["original_height"], r["value"]["brushlabels"]
        ('sp1', 3, 2, ['region'])
    """
    num_superpixels = check_sp_map(sp_map, num_superpixels, validate_args=validate_args)
    check_choice(per, "per", ("superpixel", "image"))
    round = check_int(round, "round")
    pairs = _check_selection(selection, sp_map.shape[0], num_superpixels)
    n_img, h, w = sp_map.shape
    if isinstance(images, Tensor):
        if images.dtype != torch.uint8:
            raise TypeError(f"Expected argument `images` to have dtype torch.uint8 (or to be a list of URLs), but "
                            f"got {images.dtype}")
        check_shape(images, "images", (n_img, 3, h, w), "= (N, 3, H, W) to match sp_map")
    else:
        if isinstance(images, str) or not isinstance(images, Sequence) or len(images) != n_img or not all(
                isinstance(u, str) and u for u in images):
            raise TypeError(f"Expected argument `images` to be a uint8 Tensor[N, 3, H, W] or {n_img} non-empty URL "
                            f"strings (one per image of sp_map), but got {type(images).__name__}"
                            + (f" of length {len(images)}" if isinstance(images, Sequence) else ""))
        if outline:
            raise ValueError("Expected `images` as pixels (uint8 Tensor[N, 3, H, W]) with outline=True, but got URLs")
    all_masks = region_masks(selection, sp_map, validate_args=validate_args).cpu()
    groups: Dict[Any, List[int]] = {}
    for i, (n, s) in enumerate(pairs):
        groups.setdefault(n if per == "image" else i, []).append(i)
    out = []
    for idx in groups.values():
        n = pairs[idx[0]][0]
        sps = [pairs[i][1] for i in idx]
        masks = all_masks[idx]
        if isinstance(images, Tensor):
            pix = images[n].cpu()
            url = data_uri(png_bytes(_outlined(pix, masks) if outline else pix))
        else:
            url = images[n]
        result = [{"id": f"sp{s}", "type": "brushlabels", "from_name": REGION_NAME, "to_name": IMAGE_NAME,
                   "original_width": w, "original_height": h, "image_rotation": 0,
                   "value": {"format": "rle", "rle": brush_rle(m), "brushlabels": [REGION_NAME]}}
                  for s, m in zip(sps, masks)]
        out.append({"data": {IMAGE_NAME: url, KEY_ROUND: round, KEY_IMAGE: n, KEY_SUPERPIXELS: sps},
                    "predictions": [{"model_version": "oreal", "result": result}]})
    return out


# ----------------------------------------------------------------------------------------------------------
# answers back
class Answers(NamedTuple):
    """Labels after merging a round's answers into those already known.

    Attributes:
        labels (Tensor[N, S] int64 or Tensor[N, S, C] bool): dominant class per superpixel (``-1`` = none:
            unlabeled, or answered ``void``), or the classes present (weak labels).
        labeled (Tensor[N, S] bool): superpixels with an answer (the known ones and this round's).
    """

    labels: Tensor
    labeled: Tensor


class AnswerError(ValueError):
    """An export that cannot be turned into labels; ``problems`` lists every reason, one line each."""

    def __init__(self, problems: List[str]):
        self.problems = list(problems)
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        super().__init__(f"{len(problems)} problem(s) in the Label Studio answers:\n  " + "\n  ".join(shown))


def _load_export(export: Any) -> List[Any]:
    if isinstance(export, (str, os.PathLike)):
        with open(export, encoding="utf-8") as f:
            try:
                export = json.load(f)
            except ValueError as e:
                raise ValueError(f"Expected a Label Studio JSON export in {os.fspath(export)!r}, but it is not "
                                 f"JSON ({e})") from e
    if not isinstance(export, list):
        raise TypeError(f"Expected a Label Studio JSON export (a list of tasks, or the path of its file), but got "
                        f"{type(export).__name__}")
    return export


def _answer_values(result: Dict[str, Any]) -> Optional[List[Any]]:
    value = result.get("value")
    choices = value.get("choices") if isinstance(value, dict) else None
    return choices if isinstance(choices, list) else None


def _is_int(x: Any) -> bool:
    """A JSON integer: an int, not a bool (``True == 1``) nor a float (``1.0 == 1``)."""
    return isinstance(x, int) and not isinstance(x, bool)


def read_answers(export: Any, selection: Any, class_names: Sequence[str], *, num_images: int,
                 num_superpixels: int, round: int = 0, weak: bool = False, void: Optional[str] = None,
                 labels: Optional[Tensor] = None, labeled: Optional[Tensor] = None) -> Answers:
    """Per-superpixel labels from a Label Studio JSON export of the tasks made by :func:`tasks`.

    Every pick of ``selection`` must be answered: in an annotation of a task whose ``data`` names it (round
    ``round``), by a ``choices`` result of the ``class`` control; a task of one superpixel takes any such
    result, a task of several matches results to superpixels by region id ``"sp<s>"`` (per-region choices keep
    the id of the pre-filled region). Predictions and drafts are not answers; a cancelled (skipped) annotation
    is ignored when another annotation of the task answers it **(ours)**, else it is an error. Several
    annotations of a pick (annotators, or a task imported twice) must agree.

    Errors (all collected into one :class:`AnswerError`): a pick without an answer (task missing, unanswered or
    skipped); a task not from :func:`tasks`, of another round, or asking for a superpixel the selection did not
    pick; an answer naming no class, an unknown class, more than one class for a dominant label, or ``void``
    with a class; a pick answered differently twice; a pick already in ``labeled`` with a different label.
    Nothing already labeled is overwritten and the inputs are not modified.

    Args:
        export: the export (list of task dicts, as ``GET /api/projects/<id>/export?exportType=JSON`` returns),
            or the path of its JSON file.
        selection: the round's :class:`~oreal.Selection` (``image``, ``superpixel``: Tensor[B] int64).
        class_names: the ``C`` names given to :func:`labeling_config`; answers are mapped to their index.
        num_images: ``N``.
        num_superpixels: ``S``.
        round: the round the tasks were made for.
        weak: read multiple-choice answers into Tensor[N, S, C] bool instead of dominant labels Tensor[N, S].
        void: the config's "no class" answer: ``-1`` (dominant) or no class (weak), still labeled.
        labels (Tensor[N, S] int64 or Tensor[N, S, C] bool, optional): labels known before this round;
            default none (``-1`` / ``False``).
        labeled (Tensor[N, S] bool, optional): which superpixels are known; default ``labels >= 0``
            (dominant) or any class (weak).

    Returns:
        Answers: ``(labels, labeled)`` with this round's answers added (new tensors, on the CPU).

    Example:
        >>> from oreal import Selection
        >>> sel = Selection(torch.tensor([1]), torch.tensor([2]), torch.tensor([-1]), torch.tensor([0.5]))
        >>> export = [{"id": 7, "data": {"oreal_round": 0, "oreal_image": 1, "oreal_superpixels": [2]},
        ...            "annotations": [{"id": 3, "was_cancelled": False, "result": [
        ...                {"type": "choices", "from_name": "class", "value": {"choices": ["road"]}}]}]}]
        >>> read_answers(export, sel, ["sky", "road"], num_images=2, num_superpixels=3).labels
        tensor([[-1, -1, -1],
                [-1, -1,  1]])
    """
    names = _check_names(class_names, void)
    n_img = check_int(num_images, "num_images", minimum=1)
    n_sp = check_int(num_superpixels, "num_superpixels", minimum=1)
    round = check_int(round, "round")
    c = len(names)
    shape = (n_img, n_sp, c) if weak else (n_img, n_sp)
    if labels is None:
        labels = torch.zeros(shape, dtype=torch.bool) if weak else torch.full(shape, -1, dtype=torch.long)
    else:
        check_tensor(labels, "labels")
        want = torch.bool if weak else torch.int64
        if labels.dtype != want:
            raise TypeError(f"Expected argument `labels` to have dtype {want} ({'weak' if weak else 'dominant'} "
                            f"labels), but got {labels.dtype}")
        check_shape(labels, "labels", shape, "= (N, S, C)" if weak else "= (N, S)")
        if not weak:
            validate_ids(labels, "labels", 0, c, "class ids", extra=-1)
    labels = labels.detach().cpu().clone()
    if labeled is None:
        labeled = labels.any(-1) if weak else labels >= 0
    else:
        check_bool_tensor(labeled, "labeled", (n_img, n_sp))
    labeled = labeled.detach().cpu().clone()
    picks = set(_check_selection(selection, n_img, n_sp))
    index = {n: i for i, n in enumerate(names)}
    problems: List[str] = []
    answers: Dict[tuple, tuple] = {}  # (n, s) -> (answer as a tuple of class ids (or () for void), where)
    skipped: Dict[tuple, str] = {}

    def record(pick: tuple, values: List[Any], where: str) -> None:
        bad = [v for v in values if not isinstance(v, str) or (v not in index and v != void)]
        if not values:
            problems.append(f"{where}: the answer names no class")
            return
        if bad:
            problems.append(f"{where}: unknown class {bad[0]!r} (expected one of {names + ([void] if void else [])})")
            return
        if void is not None and void in values and len(values) > 1:
            problems.append(f"{where}: {void!r} (no class) together with a class: {values}")
            return
        if not weak and len(values) > 1:
            problems.append(f"{where}: {len(values)} classes {values} for a dominant label (expected one)")
            return
        ans = tuple(sorted(index[v] for v in values if v != void))
        if pick in answers and answers[pick][0] != ans:
            old, first = answers[pick]
            problems.append(f"superpixel {pick[1]} of image {pick[0]}: answered differently twice: "
                            f"{_fmt(old, names, void)} ({first}) and {_fmt(ans, names, void)} ({where})")
        answers.setdefault(pick, (ans, where))

    for k, task in enumerate(_load_export(export)):
        tid = task.get("id", f"#{k}") if isinstance(task, dict) else f"#{k}"
        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict) or KEY_IMAGE not in data or KEY_SUPERPIXELS not in data:
            problems.append(f"task {tid}: not a task made by oreal.export.tasks (its data lacks "
                            f"{KEY_IMAGE!r} / {KEY_SUPERPIXELS!r})")
            continue
        if not _is_int(data.get(KEY_ROUND)) or data[KEY_ROUND] != round:  # false or 0.0 is not round 0
            problems.append(f"task {tid}: made for round {data.get(KEY_ROUND)!r}, but round {round} is read")
            continue
        n, sps = data[KEY_IMAGE], data[KEY_SUPERPIXELS]
        if not _is_int(n) or not isinstance(sps, list) or not sps or not all(_is_int(s) for s in sps):
            problems.append(f"task {tid}: {KEY_IMAGE!r} should be an integer and {KEY_SUPERPIXELS!r} a non-empty "
                            f"list of integers, but got {n!r:.40} and {sps!r:.80}")
            continue
        if any((n, s) not in picks for s in sps):
            problems.append(f"task {tid}: asks for superpixels {sps!r} of image {n!r}, which the selection did "
                            f"not pick")
            continue
        annotations = task.get("annotations") or []
        if not isinstance(annotations, list) or not all(isinstance(a, dict) for a in annotations):
            problems.append(f"task {tid}: 'annotations' should be a list of annotation objects, but got "
                            f"{annotations!r:.80}")
            continue
        done = [a for a in annotations if not a.get("was_cancelled")]
        if len(done) < len(annotations):
            for s in sps:
                skipped[(n, s)] = f"task {tid}"
        for a in done:
            where = f"task {tid}, annotation {a.get('id', '?')}"
            results = [r for r in a.get("result") or []
                       if isinstance(r, dict) and r.get("from_name") == CHOICE_NAME and r.get("type") == "choices"]
            for r in results:
                values = _answer_values(r)
                if values is None:
                    problems.append(f"{where}: a '{CHOICE_NAME}' result without a list of choices")
                    continue
                rid = r.get("id")
                if isinstance(rid, str) and rid.startswith("sp") and rid[2:].isdigit() and int(rid[2:]) in sps:
                    s = int(rid[2:])
                elif len(sps) == 1:
                    s = sps[0]
                else:
                    problems.append(f"{where}: a class answer for region id {rid!r}, which is none of the "
                                    f"task's regions {['sp%d' % s for s in sps]}")
                    continue
                record((n, s), values, f"{where}, superpixel {s}")
    missing = sorted(p for p in picks if p not in answers)
    for n, s in missing:
        why = f"skipped ({skipped[(n, s)]})" if (n, s) in skipped else "no task with an answer"
        problems.append(f"superpixel {s} of image {n}: not answered: {why}")
    for (n, s), (ans, where) in sorted(answers.items()):
        if weak:
            new = torch.zeros(c, dtype=torch.bool)
            new[list(ans)] = True
            same = bool((labels[n, s] == new).all())
        else:
            new = ans[0] if ans else -1
            same = int(labels[n, s]) == new
        if bool(labeled[n, s]) and not same:
            problems.append(f"superpixel {s} of image {n}: already labeled "
                            f"{_fmt(_as_ids(labels[n, s], weak), names, void)}, answered {_fmt(ans, names, void)} "
                            f"({where}); labels are never overwritten")
            continue
        labels[n, s] = new
        labeled[n, s] = True
    if problems:
        raise AnswerError(problems)
    return Answers(labels, labeled)


def _as_ids(label: Tensor, weak: bool) -> tuple:
    if weak:
        return tuple(torch.nonzero(label).flatten().tolist())
    return (int(label),) if int(label) >= 0 else ()


def _fmt(ids: tuple, names: List[str], void: Optional[str]) -> str:
    return repr([names[i] for i in ids]) if ids else repr([void] if void is not None else [])
