"""Real images: a short run learns for real. Fashion-MNIST where Debian's dataset-fashion-mnist is installed (.ci/run
installs it), else the real MNIST digits bundled with mnistlab: the test never skips."""

import json
from pathlib import Path

import pytest

from mnistlab.data.files import write_bundled_mnist

from .conftest import train_in_process

FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.slow
def test_short_run_on_real_images_is_far_above_chance(tmp_path):
    if (FASHION / "train-images-idx3-ubyte.gz").is_file():
        data = ["data=fashion_mnist", f"data.root={FASHION}"]  # the real 60k/10k files
    else:
        data = [f"data.root={write_bundled_mnist(tmp_path / 'digits')}", "data.val_size=1000"]
    run_dir = tmp_path / "run"
    train_in_process(run_dir, *data, "trainer.max_epochs=1", "trainer.limit_train_batches=150")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # Up to 150 steps of 128 images; chance is 0.10.
    assert metrics["test/acc"] > 0.75, metrics
