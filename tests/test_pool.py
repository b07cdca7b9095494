"""oreal.pool.score_pool against the in-memory query on the stacked pool, and a plain MC-dropout loop."""

from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import oreal
from oreal.pool import score_pool
from oreal.stream import StreamingSelector, streamable
from tests.conftest import random_sp_map

N, C, H, W, S = 10, 4, 8, 8, 6


class Pool(Dataset):
    def __init__(self, images, sp_map, tuple_format=False):
        self.images, self.sp_map, self.tuple_format = images, sp_map, tuple_format

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        if self.tuple_format:
            return self.images[i], self.sp_map[i], i
        return {"image": self.images[i], "sp_map": self.sp_map[i], "index": i}


def make_model(dropout=0.3, dtype=torch.float64):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout2d(dropout),
                         nn.Conv2d(8, C, 1)).to(dtype)


def pool_data(seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(N, 3, H, W, generator=g, dtype=torch.float64)
    sp = random_sp_map(N, H, W, S, seed=seed)
    labeled = torch.rand(N, S, generator=g) < 0.2
    return images, sp, labeled


def selector_for(name, budget=5, **kw):
    return StreamingSelector(name, num_superpixels=S, budget=budget, labeled_counts=torch.tensor([9, 0, 4, 2]),
                             seed=0 if name == "random" else None, **kw)


def equal(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("name", sorted(set(streamable()) - {"bald", "balent", "balent_pixel", "random"}))
def test_score_pool_equals_query_on_the_stacked_pool(name):
    images, sp, labeled = pool_data()
    model = make_model()
    loader = DataLoader(Pool(images, sp), batch_size=3, shuffle=True, generator=torch.Generator().manual_seed(1))
    sel = score_pool(model, loader, selector_for(name), exclude=labeled)
    with torch.no_grad():
        logits = model.eval()(images)
    ref = oreal.strategies.query(name, probs=logits.softmax(1), logits=logits, images=images, sp_map=sp,
                                 num_superpixels=S, budget=5, exclude=labeled,
                                 labeled_counts=torch.tensor([9, 0, 4, 2]))
    assert equal(sel, ref)
    assert not labeled[sel.image, sel.superpixel].any()


class NormalisedPool(Pool):
    """Mean/std-normalised model inputs (outside [0, 1]) with the colours given beside them."""

    def __getitem__(self, i):
        return {"image": (self.images[i] - 0.5) / 0.25, "sp_map": self.sp_map[i], "index": i,
                "colours": self.images[i]}


@pytest.mark.parametrize("name", ["sp_crf", "sp_crf_class", "edge_entropy"])
def test_colours_key_feeds_the_image_strategies_when_inputs_are_normalised(name):
    images, sp, labeled = pool_data(3)
    model = make_model()
    loader = DataLoader(NormalisedPool(images, sp), batch_size=4)
    sel = score_pool(model, loader, selector_for(name), exclude=labeled)
    with torch.no_grad():
        logits = model.eval()((images - 0.5) / 0.25)
    ref = oreal.strategies.query(name, probs=logits.softmax(1), images=images, sp_map=sp, num_superpixels=S,
                                 budget=5, exclude=labeled, labeled_counts=torch.tensor([9, 0, 4, 2]))
    assert equal(sel, ref)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):  # without the colours the normalised input is refused
        score_pool(model, DataLoader(Pool((images - 0.5) / 0.25, sp), batch_size=4), selector_for("sp_crf"))


def test_score_pool_random_matches_feeding_the_selector_by_hand():
    images, sp, labeled = pool_data(2)
    by_hand = selector_for("random")
    by_hand.update(sp_map=sp, image_ids=torch.arange(N), exclude=labeled)
    sel = score_pool(make_model(), DataLoader(Pool(images, sp), batch_size=4), selector_for("random"),
                     exclude=labeled)
    assert equal(sel, by_hand.compute())


@pytest.mark.parametrize("name", ["bald", "balent", "balent_pixel"])
def test_mc_strategies_equal_a_plain_mc_dropout_loop(name):
    images, sp, labeled = pool_data(3)
    model = make_model()
    model.train()  # the helper must use eval mode (batch norm from running stats) with only dropout on
    loader = DataLoader(Pool(images, sp, tuple_format=True), batch_size=4)
    exclude = None if name == "balent_pixel" else labeled
    state = torch.get_rng_state()
    sel = score_pool(model, loader, selector_for(name), exclude=exclude, mc_samples=3, seed=7)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's generator is untouched
    assert model.training and all(m.training for m in model.modules())  # modes restored
    # reference: the same batches, K passes each, dropout on, batch norm in eval, seed (7 << 32) + b for batch b
    model.eval()
    model[3].train()
    mc = []
    with torch.no_grad():
        for b, start in enumerate(range(0, N, 4)):
            x = images[start:start + 4]
            torch.manual_seed((7 << 32) + b)
            mc.append(torch.stack([model(x).softmax(1) for _ in range(3)], 1))
    mc = torch.cat(mc)
    assert mc.std(1).max() > 0.01  # dropout was on: the samples differ
    ref = oreal.strategies.query(name, mc_probs=mc, sp_map=sp, num_superpixels=S, budget=5, exclude=exclude)
    assert equal(sel, ref)
    # same seed, same loader: the same picks again
    assert equal(score_pool(model, loader, selector_for(name), exclude=exclude, mc_samples=3, seed=7), sel)


def test_batch_norm_stays_in_eval_during_mc_passes():
    images, sp, _ = pool_data(4)
    model = make_model(dropout=0.0)  # dropout on but p = 0: every MC sample equals the eval output
    model[1].running_mean.fill_(5.0)  # batch statistics would give very different outputs
    sel = score_pool(model, DataLoader(Pool(images, sp), batch_size=5), selector_for("bald"), mc_samples=2)
    with torch.no_grad():
        probs = model.eval()(images).softmax(1)
    ref = oreal.strategies.query("bald", mc_probs=torch.stack([probs, probs], 1), sp_map=sp, num_superpixels=S,
                                 budget=5)
    assert equal(sel, ref)


def test_torchvision_style_dict_output_forward_and_float32_softmax_of_half_logits():
    images, sp, _ = pool_data(5)

    class DictModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = make_model()

        def forward(self, x):
            return OrderedDict(out=self.net(x), aux=None)

    model = DictModel()
    loader = DataLoader(Pool(images, sp), batch_size=4)
    sel = score_pool(model, loader, selector_for("entropy"))
    with torch.no_grad():
        ref = oreal.strategies.query("entropy", probs=model.eval().net(images).softmax(1), sp_map=sp,
                                     num_superpixels=S, budget=5)
    assert equal(sel, ref)
    # forward= replaces the call; half logits are softmaxed in float32
    half = score_pool(model, loader, selector_for("entropy"), forward=lambda m, x: m(x)["out"].half())
    with torch.no_grad():
        probs = model.net(images).half().float().softmax(1)
    assert equal(half, oreal.strategies.query("entropy", probs=probs, sp_map=sp, num_superpixels=S, budget=5))


def test_device_moves(device):
    images, sp, labeled = pool_data(6)
    model = make_model(dtype=torch.float32).to(device)
    loader = DataLoader(Pool(images.float(), sp), batch_size=3)  # CPU batches, moved to the model's device
    sel = score_pool(model, loader, selector_for("oreal"), exclude=labeled)
    assert sel.image.device.type == device.type
    with torch.no_grad():
        probs = model.eval()(images.float().to(device)).softmax(1)
    ref = oreal.select(probs, sp.to(device), torch.tensor([9, 0, 4, 2], device=device), 5, num_superpixels=S,
                       exclude=labeled.to(device))
    assert equal(sel, ref)


def test_errors():
    images, sp, labeled = pool_data()
    model = make_model()
    loader = DataLoader(Pool(images, sp), batch_size=4)
    with pytest.raises(ValueError, match=r"needs MC-dropout samples: pass mc_samples=K"):
        score_pool(model, loader, selector_for("bald"))
    with pytest.raises(ValueError, match=r"`mc_samples` to be an integer >= 2, but got 1"):
        score_pool(model, loader, selector_for("bald"), mc_samples=1)
    with pytest.raises(ValueError, match="the model has no dropout layer"):
        score_pool(nn.Conv2d(3, C, 1).double(), loader, selector_for("balent"), mc_samples=2)
    with pytest.raises(ValueError, match=r"a dict without \['index'\] came"):
        score_pool(model, [{"image": images[:2], "sp_map": sp[:2]}], selector_for("entropy"))
    with pytest.raises(ValueError, match="a list of length 2"):
        score_pool(model, [[images[:2], sp[:2]]], selector_for("entropy"))
    with pytest.raises(ValueError, match=r"n, H, W = \(2, 8, 8\) to match the batch's sp_map, but got "
                                         r"\(2, 4, 4, 4\); pass forward="):
        score_pool(nn.Conv2d(3, C, 2, stride=2).double(), [(images[:2], sp[:2], torch.arange(2))],
                   selector_for("entropy"))
    with pytest.raises(ValueError, match=r"rows of `exclude` \(shape \(3, 6\)\)"):
        score_pool(model, loader, selector_for("entropy"), exclude=labeled[:3])
    with pytest.raises(TypeError, match="torch.nn.Module"):
        score_pool(lambda x: x, loader, selector_for("entropy"))
    with pytest.raises(TypeError, match="`selector` to be an oreal.stream.StreamingSelector, but got str"):
        score_pool(model, loader, "oreal")


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32])
def test_any_integer_index_dtype(dtype):
    """Batch indices of any integer dtype pick the rows of `exclude` (uint8 is not read as a mask)."""
    images, sp, labeled = pool_data()
    model = make_model()
    batches = [(images[i:i + 4], sp[i:i + 4], torch.arange(i, min(i + 4, N), dtype=dtype)) for i in (8, 0, 4)]
    got = score_pool(model, batches, selector_for("oreal"), exclude=labeled)
    want = score_pool(model, DataLoader(Pool(images, sp), batch_size=4), selector_for("oreal"), exclude=labeled)
    assert equal(got, want) and not labeled[got.image, got.superpixel].any()
