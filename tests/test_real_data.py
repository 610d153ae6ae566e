"""Real Fashion-MNIST (Debian's dataset-fashion-mnist, installed by .ci/run): a short run learns for real."""

import json
from pathlib import Path

import pytest

from .conftest import run_train

FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
                    reason=f"real Fashion-MNIST not found in {FASHION} (apt-get install -y dataset-fashion-mnist)")
@pytest.mark.slow
def test_short_run_on_real_fashion_mnist_is_far_above_chance(tmp_path):
    run_dir = tmp_path / "run"
    result = run_train("data=fashion_mnist", f"data.root={FASHION}", "trainer.max_epochs=1",
                       "trainer.limit_train_batches=150", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # 150 steps of 128 images (a third of an epoch) on the real 60k/10k files; chance is 0.10.
    assert metrics["test/acc"] > 0.75, metrics
