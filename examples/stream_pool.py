"""Score a pool through a DataLoader and a model, and select with `oreal.stream.StreamingSelector`.

The pool's probabilities are never held in memory: each batch is scored, handed to the selector and dropped.
The result is exactly what `oreal.strategies.query` (for OREAL: `oreal.select`) returns on the whole pool.

    python examples/stream_pool.py                                  # one process
    python examples/stream_pool.py --strategy revisiting_sp         # a two-pass strategy
    torchrun --nproc_per_node=2 examples/stream_pool.py --distributed
        # each rank scores its shard; every rank gets the same picks (gloo on CPU, NCCL with --device cuda)

`--check` (default on for pools up to 400 images) also scores the whole pool in memory and asserts that the
streamed picks are identical.
"""

from __future__ import annotations

import argparse
import os

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

import oreal
from oreal.stream import StreamingSelector, streamable

NUM_CLASSES, SIZE, GRID = 6, 32, 4  # 6 classes, 32x32 images, 4x4 grid superpixels of 8x8 pixels
S = GRID * GRID


class GeneratedPool(Dataset):
    """Image ``i`` is generated from seed ``i`` (the same on every rank): a few coloured rectangles."""

    def __init__(self, size: int, labeled_fraction: float = 0.1):
        self.size = size
        self.labeled_fraction = labeled_fraction
        cell = SIZE // GRID
        rows = torch.arange(SIZE) // cell
        self.sp_map = rows[:, None] * GRID + rows[None, :]  # (H, W) grid superpixels

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        image = 0.1 * torch.rand(3, SIZE, SIZE, generator=g)
        for _ in range(3):
            y, x = torch.randint(0, SIZE - 8, (2,), generator=g).tolist()
            h, w = torch.randint(4, 16, (2,), generator=g).tolist()
            image[:, y:y + h, x:x + w] += torch.rand(3, 1, 1, generator=g)
        image.clamp_(0, 1)  # colours in [0, 1]: the CRF strategies read the image as colours
        labeled = torch.rand(S, generator=g) < self.labeled_fraction  # superpixels labeled in earlier rounds
        return {"image": image, "sp_map": self.sp_map, "labeled": labeled, "index": i}


def small_model() -> nn.Module:
    torch.manual_seed(0)  # the same weights on every rank
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, NUM_CLASSES, 1)).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", type=int, default=300, help="number of images in the pool")
    parser.add_argument("--budget", type=int, default=12)
    parser.add_argument("--strategy", default="oreal")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--distributed", action="store_true", help="run under torchrun; each rank scores a shard")
    parser.add_argument("--check", type=int, default=None, help="1/0: compare with the in-memory selection")
    args = parser.parse_args()
    if args.pool < 1 or args.batch_size < 1 or args.budget < 0:
        parser.error(f"--pool and --batch-size must be at least 1 and --budget at least 0, got {args.pool}, "
                     f"{args.batch_size} and {args.budget}")
    fed = sorted(n for n in streamable() if "mc_probs" not in oreal.strategies.requirements(n)["inputs"])
    if args.strategy not in fed:
        parser.error(f"--strategy {args.strategy!r}: this example feeds probs, logits and images, so it takes one of "
                     f"{fed} (MC-dropout strategies: oreal.pool.score_pool with mc_samples)")

    rank, world = 0, 1
    device = torch.device(args.device)
    if args.distributed:
        import torch.distributed as dist

        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
        rank, world = dist.get_rank(), dist.get_world_size()
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)

    pool = GeneratedPool(args.pool)
    # Each rank gets every world-th image. Not DistributedSampler: it pads uneven shards with repeated images.
    shard = Subset(pool, range(rank, len(pool), world))
    loader = DataLoader(shard, batch_size=args.batch_size, shuffle=False)
    model = small_model().to(device)
    labeled_counts = torch.tensor([30, 12, 9, 4, 1, 0][:NUM_CLASSES])

    selector = StreamingSelector(args.strategy, num_superpixels=S, budget=args.budget,
                                 labeled_counts=labeled_counts.to(device), distributed=args.distributed,
                                 seed=0 if args.strategy == "random" else None)
    with torch.no_grad():
        for p in range(selector.num_passes):  # 2 for revisiting_sp and pixelbal, else 1
            if p:
                selector.next_pass()
            for batch in loader:
                logits = model(batch["image"].to(device))
                selector.update(probs=logits.softmax(1), logits=logits, images=batch["image"].to(device),
                                sp_map=batch["sp_map"].to(device), exclude=batch["labeled"].to(device),
                                image_ids=batch["index"])
    try:
        sel = selector.compute()  # the same on every rank
    except ValueError as e:  # e.g. a budget above the pool's candidates
        parser.error(str(e))

    if rank == 0:
        print(f"{args.strategy}: {args.budget} superpixels from a pool of {len(pool)} images "
              f"({world} process{'es' if world > 1 else ''}, batches of {args.batch_size})")
        print("pick  image  superpixel  class    score")
        for i, (img, sp, cls, score) in enumerate(zip(*(t.tolist() for t in sel))):
            print(f"{i:4d}  {img:5d}  {sp:10d}  {cls:5d}  {score:.5f}")

    check = args.check if args.check is not None else int(len(pool) <= 400)
    if check and rank == 0 and args.strategy == "random":
        print("not compared with the in-memory selection: the stream ranks by keyed draws (the same for any "
              "batching), query by its generator")
    elif check and rank == 0:
        items = [pool[i] for i in range(len(pool))]
        with torch.no_grad():
            logits = model(torch.stack([it["image"] for it in items]).to(device))
        ref = oreal.strategies.query(args.strategy, probs=logits.softmax(1), logits=logits,
                                     images=torch.stack([it["image"] for it in items]).to(device),
                                     sp_map=torch.stack([it["sp_map"] for it in items]).to(device),
                                     exclude=torch.stack([it["labeled"] for it in items]).to(device),
                                     labeled_counts=labeled_counts.to(device), num_superpixels=S,
                                     budget=args.budget)
        same = all(torch.equal(a, b) for a, b in zip(sel, ref))
        print(f"identical to the in-memory selection over the whole pool: {same}")
        if not same:
            raise SystemExit(1)
    if args.distributed:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
