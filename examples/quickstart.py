"""Pick superpixels to label with OREAL on generated probabilities: the smallest complete use of `oreal.select`,
and why it picked what it picked.

OREAL does two things (SPEC sections 2-3):

1. class debt: the budget goes to the classes with the fewest labeled superpixels so far ("water filling");
2. per class, the superpixels where the model is least sure whether that class is there: the highest
   one-vs-rest entropy h(p_c) = -p_c ln p_c - (1 - p_c) ln(1 - p_c), maximal (ln 2 = 0.6931) at p_c = 0.5,
   taken at the superpixel's most uncertain pixel (max aggregation).

Run: python examples/quickstart.py
"""

import torch

import oreal


def make_pool(seed=0):
    """4 images, 5 classes, 4 x 4 grid superpixels of 16 x 16 pixels. The model's logits are smooth inside a
    superpixel (one logit vector per superpixel, plus a little pixel noise), so superpixels differ in how
    sure the model is about each class."""
    g = torch.Generator().manual_seed(seed)
    n, c, h, w, side = 4, 5, 64, 64, 4
    logits = 3.0 * torch.randn(n, c, side, side, generator=g)
    logits = logits.repeat_interleave(h // side, 2).repeat_interleave(w // side, 3)
    probs = (logits + 0.05 * torch.randn(n, c, h, w, generator=g)).softmax(dim=1)
    rows = torch.arange(h) // (h // side)
    cols = torch.arange(w) // (w // side)
    sp_map = (rows[:, None] * side + cols[None, :]).expand(n, h, w)
    labeled_counts = torch.tensor([40, 25, 10, 3, 0])  # class 4 was never labeled, class 0 often
    labeled = torch.zeros(n, side * side, dtype=torch.bool)
    labeled[0, :4] = True  # already labeled superpixels are excluded
    return probs, sp_map, side * side, labeled_counts, labeled


def explain(probs, sp_map, num_superpixels, labeled_counts, labeled, budget):
    """``(debt, selection, rows)``: one row per pick with the facts that decided it: the target class, its
    labeled count, the score, the probability of the class at the deciding pixel, and the best score of that
    class among the superpixels left unpicked (never higher than the picks' scores)."""
    debt = oreal.class_debt(labeled_counts, budget)
    sel = oreal.select(probs, sp_map, labeled_counts, budget, num_superpixels=num_superpixels, exclude=labeled)
    scores = oreal.superpixel_ovr_entropy(probs, sp_map, num_superpixels)  # (N, S, C)
    left = ~labeled.clone()
    left[sel.image, sel.superpixel] = False
    rows = []
    for img, sp, cls, score in zip(*(t.tolist() for t in sel)):
        p = probs[img, cls][sp_map[img] == sp]
        p_star = p[(p - 0.5).abs().argmin()].item()  # the pixel whose p_c is closest to 0.5 decides
        runner_up = scores[..., cls][left].max().item()
        rows.append({"image": img, "superpixel": sp, "cls": cls, "labeled": int(labeled_counts[cls]),
                     "score": score, "p": p_star, "runner_up": runner_up})
    return debt, sel, rows


def main() -> None:
    budget = 8
    probs, sp_map, s, labeled_counts, labeled = make_pool()
    debt, _, rows = explain(probs, sp_map, s, labeled_counts, labeled, budget)
    print(f"labeled superpixels per class so far: {labeled_counts.tolist()}")
    print(f"class debt for a budget of {budget}:   {debt.tolist()}  (the budget goes to the rarest classes)")
    print()
    print("Each class takes its debt in superpixels where the model is least sure whether the class is there:")
    print("score = max over the superpixel's pixels of h(p_c), highest (ln 2 = 0.6931) at p_c = 0.5.")
    print()
    print("pick  image  superpixel  class  labeled  p_c at its most uncertain pixel  score   best score left")
    for i, r in enumerate(rows):
        print(f"{i:4d}  {r['image']:5d}  {r['superpixel']:10d}  {r['cls']:5d}  {r['labeled']:7d}  "
              f"{r['p']:31.3f}  {r['score']:.4f}  {r['runner_up']:.4f}")
    print()
    print("Rarest class first; within a class, the highest score first. 'best score left' is the best")
    print("superpixel of that class that was not picked: never above the picks' scores.")


if __name__ == "__main__":
    main()
