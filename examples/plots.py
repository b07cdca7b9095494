"""Plots for the example loop: AL curves (mIoU vs clicks, seed spread) and the superpixels each strategy
picked on a few pool images. Files are written atomically (temp file + os.replace).

Colours are fixed by name, not by position: a strategy keeps its colour whichever strategies share the plot
(:func:`strategy_color`), and a class is drawn in the dataset's own colour (CamVid's standard palette) or, for
a dataset without one, in a fixed set of well separated colours (:func:`class_palette`). Picked superpixels
are filled with exactly the legend's colour (no blending with the image).
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

# 20 colours of high mutual contrast: Kelly's (1965) without white, black, its two darkest, a violet and two
# yellows too close to others, with teal, magenta, blue, light green and light yellow instead; all stand out
# from the dark grey background of picks.png. RGB 0..255.
DISTINCT_COLORS = [
    (0, 103, 165), (190, 0, 50), (0, 136, 86), (243, 132, 0), (135, 86, 146), (161, 202, 241),
    (243, 195, 0), (136, 45, 23), (141, 182, 0), (230, 143, 172), (0, 190, 190), (194, 178, 128),
    (255, 255, 140), (249, 147, 121), (255, 0, 255), (226, 88, 34), (179, 68, 108), (40, 40, 255),
    (120, 255, 120), (132, 132, 130),
]
# fixed colours of the library's strategies (max and mean aggregation share one; mean is dashed)
STRATEGY_COLORS = {
    "random": (90, 90, 90), "oreal": (190, 0, 50), "oreal_mean": (249, 147, 121), "entropy": (0, 103, 165),
    "bvsb": (0, 136, 86), "margin": (141, 182, 0), "revisiting_sp": (135, 86, 146), "pixelbal": (243, 132, 0),
    "cbal": (255, 0, 255), "cbal_milp": (194, 178, 128), "bald": (96, 78, 151), "balent": (230, 143, 172),
    "balent_pixel": (179, 68, 108), "edge_entropy": (0, 190, 190), "edge_entropy_class": (120, 255, 120),
    "sp_crf": (160, 82, 45), "sp_crf_class": (0, 0, 128),
}


def _mpl():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path, dpi=110):
    from .al_loop import atomic_write_bytes

    atomic_write_bytes(Path(path), lambda f: fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight"))


def strategy_color(spec):
    """RGB in [0, 1] of a strategy spec (``'oreal:max'``): fixed per strategy name, the same in every plot;
    a name the table does not know gets a colour from a hash of the name."""
    name = spec.partition(":")[0]
    rgb = STRATEGY_COLORS.get(name) or DISTINCT_COLORS[zlib.crc32(name.encode()) % len(DISTINCT_COLORS)]
    return tuple(v / 255 for v in rgb)


def curves_title(results):
    seeds = results["seeds"]
    name = results.get("dataset", results["config"]["data"])
    if len(seeds) == 1:
        return f"{name}: seed {seeds[0]} (one seed: no spread shown)"
    return f"{name}: mean ± std over {len(seeds)} seeds"


def curves_figure(results, title=None):
    """The figure of :func:`plot_curves` (returned, not saved)."""
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    summ = results["summary"]
    many = len(results["seeds"]) > 1
    for spec, e in sorted(summ.items()):
        x = np.array(e["clicks"])
        m, s = 100 * np.array(e["miou_mean"]), 100 * np.array(e["miou_std"])
        ls = "--" if spec.endswith(":mean") else "-"
        lab = spec + (f" (AuALC {100 * e['aualc_mean']:.1f})" if "aualc_mean" in e else "")
        col = strategy_color(spec)
        ax.plot(x, m, ls, marker="o", ms=4, color=col, label=lab)
        if many:
            ax.fill_between(x, m - s, m + s, color=col, alpha=0.12)
    if results.get("full_miou") is not None:
        ax.axhline(100 * results["full_miou"], color="k", lw=0.8, ls=":", label="full supervision")
    ax.set_xlabel("clicks (labeled superpixels)", fontsize=10)
    ax.set_ylabel("test mIoU (%)", fontsize=10)
    ax.set_title(title or curves_title(results), fontsize=11)
    ax.grid(alpha=0.3)
    # outside the axes: the legend never hides a point
    ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return fig


def plot_curves(results, path, title=None):
    """mIoU (%) vs clicks, one line per strategy (mean over seeds, with a band of ± 1 std when there are
    several seeds), colour fixed per strategy name, dashed for mean aggregation, legend right of the plot."""
    plt = _mpl()
    fig = curves_figure(results, title)
    _save(fig, path)
    plt.close(fig)


def boundaries(sp):
    """Bool (H, W): pixels whose right or lower neighbour is in another superpixel."""
    b = np.zeros(sp.shape, bool)
    b[:, 1:] |= sp[:, 1:] != sp[:, :-1]
    b[1:, :] |= sp[1:, :] != sp[:-1, :]
    return b


def class_palette(num_classes, palette=None):
    """float32 (C, 3) RGB 0..255: the dataset's ``palette`` if it has one, else :data:`DISTINCT_COLORS`
    (and, past 20 classes, evenly spaced hues)."""
    if palette is not None:
        pal = np.asarray(palette, dtype=np.float32)
        if pal.shape != (num_classes, 3):
            raise ValueError(f"Expected a palette of {num_classes} RGB colours, but got shape {pal.shape}")
        return pal
    cols = list(DISTINCT_COLORS[:num_classes])
    if num_classes > len(cols):
        import colorsys

        extra = num_classes - len(cols)
        cols += [tuple(int(255 * v) for v in colorsys.hsv_to_rgb(k / extra, 0.65, 0.85)) for k in range(extra)]
    return np.asarray(cols, dtype=np.float32).reshape(num_classes, 3)


NO_LABEL_RGB = (0, 0, 0)  # a picked superpixel with only ignore pixels (a click without a label)


def _edges(sp):
    """Bool (H, W): pixels with a 4-neighbour in another superpixel (both sides of every border)."""
    e = np.zeros(sp.shape, bool)
    d = sp[:, 1:] != sp[:, :-1]
    e[:, 1:] |= d
    e[:, :-1] |= d
    d = sp[1:, :] != sp[:-1, :]
    e[1:, :] |= d
    e[:-1, :] |= d
    return e


def picks_panel(image, sp, picked, dominant, pal):
    """uint8 (H, W, 3): the image darkened to grey (0..77) with black superpixel borders, and each superpixel
    id in ``picked`` filled with exactly ``pal[dominant[id]]`` (``NO_LABEL_RGB`` where ``dominant`` is -1)
    inside a white outline (its own border pixels)."""
    grey = image.astype(np.float32).mean(-1, keepdims=True)
    vis = np.repeat(grey * 0.3, 3, -1)
    vis[boundaries(sp)] = 0
    edges = _edges(sp)
    for s in picked:
        m = sp == s
        vis[m] = pal[dominant[s]] if dominant[s] >= 0 else NO_LABEL_RGB
        vis[m & edges] = 255
    return np.clip(vis, 0, 255).astype(np.uint8)


def label_panel(labels, pal):
    """uint8 (H, W, 3): ``pal[label]``, ignore (any value >= C) black."""
    C = len(pal)
    vis = np.where((labels < C)[..., None], pal[np.clip(labels, 0, C - 1)], np.float32(NO_LABEL_RGB))
    return vis.astype(np.uint8)


def plot_picks(results, exp, path, n_images=3, seed=None, strategies=None):
    """Rows: ground truth, then one row per strategy; columns: the ``n_images`` pool images with the most
    acquisition-round picks (rounds >= 1, first seed). Picked superpixels are filled with their annotated
    (dominant) class colour, exactly the legend's, outlined in white; the rest of the image is dark grey."""
    plt = _mpl()
    seed = results["seeds"][0] if seed is None else seed
    runs = {r["strategy"]: r for r in results["runs"].values()
            if r["seed"] == seed and (strategies is None or r["strategy"] in strategies)}
    if not runs:
        return
    images = exp.dataset.train.images
    sp = exp.sp_map.numpy()
    dom = exp.oracle.dominant.numpy()
    gt = exp.pool_labels.numpy()
    C = exp.C
    pal = class_palette(C, getattr(exp.dataset, "palette", None))
    tally = np.zeros(len(images))
    for r in runs.values():
        for im_ids, _ in r["picks"][1:]:
            np.add.at(tally, np.asarray(im_ids, dtype=int), 1)
    cols = np.argsort(-tally, kind="stable")[:n_images]
    rows = ["ground truth"] + sorted(runs)
    H, W = images.shape[1:3]
    pw = 3.2  # inches per panel: small images are shown enlarged (nearest), fonts stay readable
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(pw * len(cols), (pw * H / W + 0.7) * len(rows)),
                             squeeze=False)
    no_label = False
    for j, n in enumerate(cols):
        for i, row in enumerate(rows):
            ax = axes[i, j]
            if i == 0:
                vis = label_panel(gt[n], pal)
                ax.set_title(exp.dataset.train.names[n], fontsize=10)
            else:
                picked = set()
                for im_ids, sp_ids in runs[row]["picks"][1:]:
                    im_ids, sp_ids = np.asarray(im_ids, int), np.asarray(sp_ids, int)
                    picked.update(sp_ids[im_ids == n].tolist())
                no_label |= any(dom[n, s] < 0 for s in picked)
                vis = picks_panel(images[n], sp[n], sorted(picked), dom[n], pal)
                ax.set_title(f"{len(picked)} superpixel(s)", fontsize=9)
            ax.imshow(vis, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(row, fontsize=10)
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor=pal[c] / 255, edgecolor="none") for c in range(C)]
    names = list(exp.dataset.classes)
    if no_label or (gt >= C).any():
        handles.append(plt.Rectangle((0, 0), 1, 1, facecolor=np.array(NO_LABEL_RGB) / 255, edgecolor="none"))
        names.append("ignore / no label")
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 6), fontsize=9, frameon=False)
    fig.suptitle(f"superpixels picked in rounds 1+ (seed {seed}), filled with the annotated class", fontsize=11)
    n_leg = -(-len(names) // 6)
    fig.tight_layout(rect=(0, 0.035 * n_leg + 0.02, 1, 0.96), h_pad=1.5)
    _save(fig, path)
    plt.close(fig)
