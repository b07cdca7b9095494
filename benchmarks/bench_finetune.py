"""Fine-tuning vs a frozen EfficientNet-Lite0 encoder (``lite0_fpn`` vs ``lite0_fpn_frozen``, both from the
ImageNet weights) on a small fully labeled CamVid case: seconds per epoch and validation mIoU after each
epoch, the two models trained back to back in one process (paired: same data, seed and schedule).

    OREAL_FEATURE_DISK_CACHE=0 python benchmarks/bench_finetune.py --train 40 --val 20 --epochs 3 --threads 1

Full supervision of the frozen model (whole train split, val for early stopping, all test images):

    python benchmarks/bench_finetune.py --models lite0_fpn_frozen --train 0 --val 0 --test -1 --epochs 20 --patience 5

The feature cache is filled before training (every pool image and its flip, every val image through the
encoder once) and timed separately; ``OREAL_FEATURE_DISK_CACHE=0`` makes that fill run the encoder rather
than read features an earlier run left on disk. Needs the ``pretrained`` and ``examples`` extras and the
CamVid copy (``--root``, default ``../shared/data/CamVid``).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples import data as D  # noqa: E402
from examples.models import build_model  # noqa: E402
from examples.train import TrainConfig, evaluate, to_tensor_images, train  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=None)
    p.add_argument("--size", default="180x240")
    p.add_argument("--train", type=int, default=40)
    p.add_argument("--val", type=int, default=20)
    p.add_argument("--test", type=int, default=0, help="test images for a final test mIoU (0 = none, -1 = all)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--patience", type=int, default=None, help="early stopping (default: none, run all epochs)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", default="lite0_fpn_frozen,lite0_fpn")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    h, w = (int(v) for v in a.size.split("x"))
    root = Path(a.root) if a.root else D.default_camvid_root()
    ds = D.load_camvid(root, size=(h, w), limits=(a.train or None, a.val or None, max(a.test, 0) or (None if a.test < 0 else 1)))
    x, y = to_tensor_images(ds.train.images), torch.from_numpy(ds.train.labels)
    vx, vy = to_tensor_images(ds.val.images), torch.from_numpy(ds.val.labels)
    C = ds.num_classes
    print(f"CamVid {len(x)} train / {len(vx)} val images at {h}x{w}, {a.epochs} epochs, lr {a.lr}, "
          f"{a.threads} threads; load: {os.getloadavg()[0]:.2f}")
    pat = a.patience or a.epochs
    cfg = TrainConfig(lr=a.lr, max_epochs=a.epochs, patience=pat, min_epochs=a.epochs if a.patience is None else 1)
    for name in a.models.split(","):
        torch.manual_seed(0)
        model = build_model(name, C, weights_backbone="imagenet")
        n_train = sum(q.numel() for q in model.parameters() if q.requires_grad)
        fill = 0.0
        if name.endswith("frozen"):  # fill the cache: pool, its flips, val
            t = time.perf_counter()
            with torch.no_grad():
                model.eval()
                for imgs in (x, x.flip(-1), vx):
                    for i in range(0, len(imgs), 16):
                        model(imgs[i:i + 16])
            fill = time.perf_counter() - t
        times, scores = [], []
        last = [time.perf_counter()]

        def on_epoch(epoch, score):
            now = time.perf_counter()
            times.append(now - last[0])
            scores.append(score)
            last[0] = now
            print(f"  {name} epoch {epoch}: {times[-1]:.1f} s, val mIoU {100 * score:.1f}", flush=True)

        model, info = train(model, x, y, vx, vy, C, config=cfg, seed=0, on_epoch=on_epoch)
        if a.test:
            tx, ty = to_tensor_images(ds.test.images), torch.from_numpy(ds.test.labels)
            print(f"{name}: test mIoU {100 * evaluate(model, tx, ty, C):.1f} on {len(tx)} test images "
                  f"(best val epoch, val mIoU {100 * info['val_miou']:.1f})", flush=True)
        print(f"{name}: {n_train / 1e6:.2f} M trained parameters; cache fill {fill:.1f} s; "
              f"s/epoch {' '.join(f'{t:.1f}' for t in times)} (mean {sum(times) / len(times):.1f}); "
              f"val mIoU {' '.join(f'{100 * s:.1f}' for s in scores)}; load {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
