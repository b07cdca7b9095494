"""Slow, obviously-correct numpy references, written from SPEC.md loop by loop. Tests compare oreal against these."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import special


def plogp(p):
    return p * math.log(p) if p > 0 else 0.0


def entropy(p_vec):
    return -sum(plogp(float(p)) for p in p_vec)


def binary_entropy(p):
    return -(plogp(p) + plogp(1.0 - p))


def pixel_scores(probs, fn):
    """Apply ``fn(prob_vector)`` to every pixel of a (N, C, H, W) array."""
    n, _, h, w = probs.shape
    out = np.zeros((n, h, w))
    for i in range(n):
        for y in range(h):
            for x in range(w):
                out[i, y, x] = fn(probs[i, :, y, x].astype(np.float64))
    return out


def bvsb(p_vec):
    top = sorted(p_vec, reverse=True)
    return top[1] / top[0]


def margin(p_vec):
    top = sorted(p_vec, reverse=True)
    return 1.0 - (top[0] - top[1])


def bald(samples):
    """samples: (K, C) probabilities of one pixel."""
    mean = samples.mean(axis=0)
    return entropy(mean) - np.mean([entropy(s) for s in samples])


def balent(samples):
    """Balanced entropy of one pixel from (K, C) samples, SPEC §1, written term by term."""
    k, c = samples.shape
    mj = 0.0
    mus = []
    for j in range(c):
        col = samples[:, j].astype(np.float64)
        mu = max(col.mean(), 1e-9)
        var = max(col.var(ddof=1), 1e-9)
        alpha = mu * mu * (1 - mu) / var - mu
        beta = (1 / mu - 1) * alpha
        h = (special.betaln(alpha + 1, beta) - alpha * special.digamma(alpha + 1)
             - (beta - 1) * special.digamma(beta) + (alpha + beta - 1) * special.digamma(alpha + beta + 1))
        mj += min(0.0, mu * h)
        mus.append(mu)
    ent = -sum(m * math.log(m) for m in mus)
    mj += ent
    score = (ent + math.log(2)) / (mj + ent)
    return 1 / score if score < 0 else score


def aggregate(score, sp_map, s, reduce):
    """score (N, H, W); returns (N, S) with empty superpixels at 0."""
    n = score.shape[0]
    out = np.zeros((n, s))
    for i in range(n):
        for k in range(s):
            vals = score[i][sp_map[i] == k]
            if vals.size:
                out[i, k] = {"max": np.max, "min": np.min, "mean": np.mean, "sum": np.sum}[reduce](vals)
    return out


def dominant_labels(labels, sp_map, s, c, ignore_index=255):
    n = labels.shape[0]
    out = np.full((n, s), -1)
    for i in range(n):
        for k in range(s):
            vals = labels[i][(sp_map[i] == k) & (labels[i] != ignore_index)]
            if vals.size:
                counts = [int((vals == cls).sum()) for cls in range(c)]
                best = max(counts)
                out[i, k] = counts.index(best)  # first = lowest class id
    return out


def water_filling(counts, budget, mask=None):
    """Give the budget one unit at a time to the lowest current count (ties: lowest index)."""
    cur = [int(v) for v in counts]
    allowed = [True] * len(cur) if mask is None else [bool(m) for m in mask]
    debt = [0] * len(cur)
    for _ in range(budget):
        best = min((cur[c], c) for c in range(len(cur)) if allowed[c])[1]
        cur[best] += 1
        debt[best] += 1
    return debt


def greedy(scores, debt, counts, cand):
    """OREAL Alg. 1 over global ids: scores (G, C); returns lists (g, class, score) in pick order."""
    order = sorted(range(len(counts)), key=lambda c: (counts[c], c))
    taken = set()
    picks = []
    for c in order:
        pool = [g for g in range(scores.shape[0]) if cand[g] and g not in taken]
        pool.sort(key=lambda g: (-scores[g, c], g))
        for g in pool[: debt[c]]:
            taken.add(g)
            picks.append((g, c, scores[g, c]))
    return picks


def select(probs, sp_map, counts, budget, s, exclude=None, aggregation="max"):
    """OREAL end to end, pixel by pixel: returns picks (n, s, class, score)."""
    n, c = probs.shape[:2]
    ovr = np.zeros((n * s, c))
    for cls in range(c):
        pix = np.vectorize(binary_entropy)(probs[:, cls].astype(np.float64))
        ovr[:, cls] = aggregate(pix, sp_map, s, aggregation).reshape(-1)
    cand = np.zeros(n * s, dtype=bool)
    for i in range(n):
        for k in range(s):
            cand[i * s + k] = (sp_map[i] == k).any() and not (exclude is not None and exclude[i, k])
    picks = greedy(ovr, water_filling(counts, budget), counts, cand)
    return [(g // s, g % s, cls, score) for g, cls, score in picks]


def confusion(pred, target, c, ignore_index=255):
    m = np.zeros((c, c), dtype=np.int64)
    for p, t in zip(pred.reshape(-1), target.reshape(-1)):
        if t != ignore_index:
            m[t, p] += 1
    return m


def miou(pred, target, c, ignore_index=255):
    m = confusion(pred, target, c, ignore_index)
    ious = []
    for k in range(c):
        tp = m[k, k]
        union = m[k, :].sum() + m[:, k].sum() - tp
        if union > 0:
            ious.append(tp / union)
    return float(np.mean(ious)) if ious else float("nan")


def aualc(budgets, mious, full):
    area = sum((budgets[i + 1] - budgets[i]) * (mious[i] + mious[i + 1]) / 2 for i in range(len(budgets) - 1))
    return area / (full * (budgets[-1] - budgets[0]))


# ------------------------------------------------------------------------ CRF (torch float64, explicit pair loops)


def crf_dense(probs, images, iterations, window=None, w_s=3.0, s_s=3.0, w_b=10.0, s_xy=80.0, s_c=13.0):
    """Mean field of the Potts CRF with explicit pairwise loops in float64 (window=None: every pair)."""
    n, c, h, w = probs.shape
    p = probs.double()
    col = images.double() * (255 if images.is_floating_point() else 1)
    if col.ndim == 3:
        col = col[:, None]
    out = torch.empty_like(p)
    pix = [(y, x) for y in range(h) for x in range(w)]
    for b in range(n):
        k = torch.zeros(h * w, h * w, dtype=torch.float64)
        for a, (yi, xi) in enumerate(pix):
            for j, (yj, xj) in enumerate(pix):
                if a == j:
                    continue
                if window is not None and (abs(yi - yj) > window // 2 or abs(xi - xj) > window // 2):
                    continue
                d2 = (yi - yj) ** 2 + (xi - xj) ** 2
                dc = float(((col[b, :, yi, xi] - col[b, :, yj, xj]) ** 2).sum())
                k[a, j] = w_s * math.exp(-d2 / (2 * s_s ** 2)) + w_b * math.exp(-d2 / (2 * s_xy ** 2) - dc / (2 * s_c ** 2))
        unary = p[b].reshape(c, -1).log()
        q = p[b].reshape(c, -1)
        for _ in range(iterations):
            msg = q @ k.T  # msg[l, i] = sum_j k(i, j) q[l, j]
            q = torch.softmax(unary + msg, dim=0)
        out[b] = q.reshape(c, h, w)
    return out


def crf_blurred(probs, images, iterations, window, blur, w_s=3.0, s_s=3.0, w_b=10.0, s_xy=80.0, s_c=13.0):
    """Messages between the cells of a grid `blur` times coarser, written with loops in float64."""
    n, c, h, w = probs.shape
    col = images.double() * (255 if images.is_floating_point() else 1)
    col = col[:, None] if col.ndim == 3 else col
    hc, wc = -(-h // blur), -(-w // blur)
    cells = [(a, b) for a in range(hc) for b in range(wc)]

    def cell_mean(x, a, b):  # x (channels, h, w): mean over the pixels of cell (a, b)
        return x[:, a * blur:(a + 1) * blur, b * blur:(b + 1) * blur].reshape(x.shape[0], -1).mean(1)

    out = torch.empty(n, c, h, w, dtype=torch.float64)
    for i in range(n):
        cc = [cell_mean(col[i], a, b) for a, b in cells]
        k = torch.zeros(len(cells), len(cells), dtype=torch.float64)
        for u, (a, b) in enumerate(cells):
            for v, (a2, b2) in enumerate(cells):
                if u != v and abs(a - a2) <= window // 2 and abs(b - b2) <= window // 2:
                    d2 = ((a - a2) ** 2 + (b - b2) ** 2) * blur * blur
                    dc = float(((cc[u] - cc[v]) ** 2).sum())
                    k[u, v] = w_s * math.exp(-d2 / (2 * s_s ** 2)) + w_b * math.exp(-d2 / (2 * s_xy ** 2) - dc / (2 * s_c ** 2))
        unary = probs[i].double().log()
        q = probs[i].double()
        for _ in range(iterations):
            qc = torch.stack([cell_mean(q, a, b) for a, b in cells], 1)  # (c, cells)
            msg = qc @ k.T
            full = torch.empty(c, h, w, dtype=torch.float64)
            for u, (a, b) in enumerate(cells):
                full[:, a * blur:(a + 1) * blur, b * blur:(b + 1) * blur] = msg[:, u, None, None]
            q = torch.softmax(unary + full, dim=0)
        out[i] = q
    return out
