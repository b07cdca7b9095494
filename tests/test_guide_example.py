"""The integration example of docs/guide.md runs as written, and does what the guide says."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("torchvision")
pytest.importorskip("skimage")

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guide.md"


def guide_block(heading):
    text = GUIDE.read_text()
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1
    return blocks[0]


@pytest.mark.slow
def test_integration_example_runs_as_written(capsys):
    ns = {"__name__": "guide_example"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: threads only add overhead (much more on a loaded machine)
    try:
        exec(compile(guide_block("Integrating with your training code"), str(GUIDE), "exec"), ns)
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == ["round 0", "round 1"]
    assert "10 superpixels labeled" in out[0] and "20 superpixels labeled" in out[1]
    sp_map, S, labeled, sp_labels, gt = ns["sp_map"], ns["S"], ns["labeled"], ns["sp_labels"], ns["gt"]
    assert sp_map.min() == 0 and sp_map.max() == S - 1
    assert int(labeled.sum()) == 20 and torch.equal(labeled, sp_labels >= 0)
    # every answer is the most frequent ground-truth class of its superpixel (lowest class on ties)
    for n, s in labeled.nonzero().tolist():
        votes = np.bincount(gt[n][sp_map[n] == s].numpy(), minlength=4)
        assert sp_labels[n, s] == int(np.argmax(votes))
    # the last target: labels exactly on the labeled superpixels, ignore elsewhere (a plain loop)
    target = ns["target"]
    for n in range(sp_map.shape[0]):
        for y in range(sp_map.shape[1]):
            for x in range(sp_map.shape[2]):
                s = int(sp_map[n, y, x])
                assert int(target[n, y, x]) == (int(sp_labels[n, s]) if labeled[n, s] else 255)
    assert ns["losses"] and np.isfinite(ns["losses"]).all()
