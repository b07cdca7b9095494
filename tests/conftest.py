import pytest
import torch

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device")])]

# dtype-aware tolerances (absolute), for results computed from inputs of that dtype vs a float64 reference.
TOL = {torch.float64: 1e-9, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


def random_probs(n, c, h, w, *, seed=0, dtype=torch.float64, sharp=1.0):
    g = torch.Generator().manual_seed(seed)
    return (sharp * torch.randn(n, c, h, w, generator=g, dtype=torch.float64)).softmax(1).to(dtype)


def random_sp_map(n, h, w, s, *, seed=0, ignore_frac=0.1):
    g = torch.Generator().manual_seed(seed + 1)
    sp = torch.randint(0, s, (n, h, w), generator=g)
    drop = torch.rand(n, h, w, generator=g) < ignore_frac
    return torch.where(drop, -1, sp)


def watch_feature_reads(monkeypatch, module):
    """Record the number of pixels of every ``pixel_features`` call made by ``module`` (oreal.weak, oreal.semi)."""
    seen = []
    real = module.pixel_features

    def spy(features, pos, height, width, mode):
        seen.append(pos.numel())
        return real(features, pos, height, width, mode)

    monkeypatch.setattr(module, "pixel_features", spy)
    return seen
