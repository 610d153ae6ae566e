"""Learning-rate schedules, stepped once per batch; each takes the optimizer and the run's total steps."""

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler


def cosine(optimizer: Optimizer, total_steps: int) -> LRScheduler:
    """The paper's cosine decay: lr_t = lr * (1 + cos(pi * t / T)) / 2, from lr at step 0 to 0 at step T."""
    return CosineAnnealingLR(optimizer, T_max=total_steps)
