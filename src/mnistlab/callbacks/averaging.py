"""Weight averaging: an EMA whose decay grows with the run, and the choice of the weights a run tests."""

from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import WeightAveraging

from mnistlab.errors import ConfigError


class EMA(WeightAveraging):
    """An exponential moving average of the weights, used for validation, test and the saved checkpoints, with the
    decay warmed up as TensorFlow's ExponentialMovingAverage(num_updates) does: after t updates,
    decay_t = min(decay, (1 + t) / (warmup + t)).

    A fixed decay of 0.999 keeps 0.999^t of the first steps' nearly random weights: a third of the average after
    1,100 steps, so a short run tests worse weights than it trained. With the warmup the average spans roughly
    the last t / (warmup - 1) steps until the decay reaches its cap (t = 9,000 for 0.999 and warmup 10), so it
    helps a 60-step run and an 80-epoch one alike. The decay follows the global step, so a resumed run goes on
    with the decay it left off at.
    """

    def __init__(self, *, decay: float, warmup: float, **kwargs):
        if not 0 <= decay < 1:
            raise ConfigError(f"callbacks.ema.decay={decay} must be in [0, 1)")
        if warmup < 1:
            raise ConfigError(f"callbacks.ema.warmup={warmup} must be >= 1 (1: no warmup)")
        super().__init__(multi_avg_fn=self._lerp, **kwargs)
        self.decay, self.warmup = decay, warmup
        self._decay_now = decay

    def decay_at(self, updates: int) -> float:
        """The decay of the update that follows `updates` earlier ones."""
        return min(self.decay, (1 + updates) / (self.warmup + updates))

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        if step_idx is None:
            return False
        self._decay_now = self.decay_at(step_idx)  # set on the host here: no device read in the update
        return True

    def _lerp(self, averaged: list[torch.Tensor], current: list[torch.Tensor], _updates: torch.Tensor) -> None:
        """One update of a group of tensors of one dtype; counters (BatchNorm's batches seen) are copied."""
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, 1 - self._decay_now)
        else:
            torch._foreach_copy_(averaged, current)


def load_tested_weights(trainer: pl.Trainer, module: pl.LightningModule, run_dir: Path) -> str:
    """Puts the weights a finished fit is tested with into `module` and returns their checkpoint ("" if none):
    under SWA the average (saved as swa.ckpt), otherwise the best checkpoint's (the last, without validation)."""
    if any(isinstance(c, pl.callbacks.StochasticWeightAveraging) for c in trainer.callbacks):
        # Lightning's SWA puts the average into the model when training ends (BatchNorm statistics recomputed),
        # and into no checkpoint: that average is what is tested, and saved as swa.ckpt.
        folder = Path(trainer.checkpoint_callback.dirpath) if trainer.checkpoint_callback else run_dir / "checkpoints"
        path = str(folder / "swa.ckpt")  # beside the run's other checkpoints, wherever dirpath puts them
        trainer.save_checkpoint(path)
        return path
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best:
        # The checkpoint holds the weights that were validated: under EMA, the averaged ones. (Lightning's
        # ckpt_path="best" would restore the raw weights while a weight-averaging callback is attached.)
        module.load_state_dict(torch.load(best, map_location=module.device, weights_only=True)["state_dict"])
    return best
