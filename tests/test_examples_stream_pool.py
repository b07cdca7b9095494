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


def _run(*args):
    return subprocess.run([sys.executable, "-m", "examples.stream_pool", *args], capture_output=True, text=True,
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), timeout=300)


@pytest.mark.parametrize("strategy", ["sp_crf", "sp_crf_class", "pixelbal"])
def test_strategies_stream_the_generated_pool(strategy):
    out = _run("--strategy", strategy, "--pool", "24", "--batch-size", "5", "--check", "1")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "identical to the in-memory selection over the whole pool: True" in out.stdout


@pytest.mark.parametrize("args, message", [
    (["--pool", "0"], "--pool and --batch-size must be at least 1 and --budget at least 0, got 0, 16 and 12"),
    (["--batch-size", "0"], "got 300, 0 and 12"),
    (["--budget", "-3"], "got 300, 16 and -3"),
    (["--strategy", "foo"], "--strategy 'foo': this example feeds probs, logits and images"),
    (["--strategy", "bald"], "(MC-dropout strategies: oreal.pool.score_pool with mc_samples)"),
    (["--pool", "2", "--budget", "100"], "budget of at most the"),
])
def test_bad_arguments_are_clear_errors(args, message):
    out = _run(*args)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
