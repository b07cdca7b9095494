"""examples/stream_pool.py: its generated pool and a run with the CRF strategies, which read the image as colours."""
import os
import subprocess
import sys

import pytest

from examples.stream_pool import GeneratedPool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_generated_images_are_colours_in_unit_range():
    pool = GeneratedPool(40)
    for i in range(len(pool)):
        image = pool[i]["image"]
        assert float(image.min()) >= 0 and float(image.max()) <= 1, i


@pytest.mark.parametrize("strategy", ["sp_crf", "sp_crf_class"])
def test_crf_strategies_stream_the_generated_pool(strategy):
    out = subprocess.run([sys.executable, "-m", "examples.stream_pool", "--strategy", strategy, "--pool", "24",
                          "--batch-size", "5", "--check", "1"], capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=ROOT), timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "identical to the in-memory selection over the whole pool: True" in out.stdout
