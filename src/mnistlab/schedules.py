"""Learning-rate schedules (paper section 3.1 and 5.1), stepped once per batch, built from torch's schedulers.

Each takes the optimizer, the run's total steps and steps per epoch, its settings (their defaults are the
configs in configs/scheduler/, stated there only), and an optional linear warmup: lr goes
from warmup_start_factor * lr to lr over warmup_epochs, then the schedule runs over the remaining steps.
With warmup_epochs=0 there is no warmup wrapper at all.

An epoch is a poor unit for warmup on small data: half an epoch is 107 steps on Fashion-MNIST at batch 256, but
18 on 9,000 images, too few to bring an unnormalised network up to a high lr without killing its ReLUs. So a
warmup lasts at least warmup_min_steps steps, or a quarter of the run when that is shorter.
"""

from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    LinearLR,
    LRScheduler,
    MultiStepLR,
    OneCycleLR,
    SequentialLR,
    StepLR,
)

from mnistlab.errors import ConfigError


def warmup_steps(warmup_epochs: float, total_steps: int, steps_per_epoch: float, min_steps: int = 0) -> int:
    """The warmup's length in steps: warmup_epochs, at least min(min_steps, a quarter of the run); 0 = none.
    Their ranges are the rules table's (mnistlab.validation.RULES), checked before a run builds anything."""
    if not warmup_epochs:
        return 0
    steps = max(round(warmup_epochs * steps_per_epoch), min(min_steps, total_steps // 4))
    if steps >= total_steps:
        raise ConfigError(f"scheduler.warmup_epochs={warmup_epochs} is not shorter than the training run "
                          f"({total_steps / steps_per_epoch:g} epochs)")
    return steps


def _with_warmup(optimizer: Optimizer, make_main, total_steps: int, steps_per_epoch: float,
                 warmup_epochs: float, warmup_start_factor: float, warmup_min_steps: int) -> LRScheduler:
    warmup = warmup_steps(warmup_epochs, total_steps, steps_per_epoch, warmup_min_steps)
    if warmup == 0:
        return make_main(total_steps, 0)
    ramp = LinearLR(optimizer, start_factor=warmup_start_factor, end_factor=1.0, total_iters=warmup)
    return SequentialLR(optimizer, [ramp, make_main(total_steps - warmup, warmup)], milestones=[warmup])


def constant(optimizer: Optimizer, total_steps: int, steps_per_epoch: float, *, warmup_epochs: float,
             warmup_start_factor: float, warmup_min_steps: int) -> LRScheduler | None:
    """The optimizer's lr throughout (after the warmup, if any); None when there is nothing to schedule."""
    if warmup_steps(warmup_epochs, total_steps, steps_per_epoch, warmup_min_steps) == 0:
        return None
    return _with_warmup(optimizer, lambda steps, _: ConstantLR(optimizer, factor=1.0, total_iters=0),
                        total_steps, steps_per_epoch, warmup_epochs, warmup_start_factor, warmup_min_steps)


def step(optimizer: Optimizer, total_steps: int, steps_per_epoch: float, *, step_epochs: float, gamma: float,
         warmup_epochs: float, warmup_start_factor: float, warmup_min_steps: int) -> LRScheduler:
    """lr * gamma^k after every `step_epochs` epochs (counted from the end of the warmup)."""
    every = max(1, round(step_epochs * steps_per_epoch))
    return _with_warmup(optimizer, lambda steps, _: StepLR(optimizer, step_size=every, gamma=gamma),
                        total_steps, steps_per_epoch, warmup_epochs, warmup_start_factor, warmup_min_steps)


def multistep(optimizer: Optimizer, total_steps: int, steps_per_epoch: float, *, milestones: tuple[float, ...],
              gamma: float, warmup_epochs: float, warmup_start_factor: float, warmup_min_steps: int) -> LRScheduler:
    """lr * gamma at each milestone, given in epochs from the start of the run."""
    def make(steps, offset):
        return MultiStepLR(optimizer, [round(m * steps_per_epoch) - offset for m in milestones], gamma=gamma)

    return _with_warmup(optimizer, make, total_steps, steps_per_epoch, warmup_epochs, warmup_start_factor,
                        warmup_min_steps)


def cosine(optimizer: Optimizer, total_steps: int, steps_per_epoch: float, *, warmup_epochs: float,
           warmup_start_factor: float, warmup_min_steps: int) -> LRScheduler:
    """The paper's cosine decay: lr_t = lr * (1 + cos(pi * t / T)) / 2 over the T steps after the warmup."""
    return _with_warmup(optimizer, lambda steps, _: CosineAnnealingLR(optimizer, T_max=steps),
                        total_steps, steps_per_epoch, warmup_epochs, warmup_start_factor, warmup_min_steps)


def onecycle(optimizer: Optimizer, total_steps: int, steps_per_epoch: float, *, pct_start: float,
             div_factor: float, warmup_epochs: float = 0) -> LRScheduler:
    """Smith's one-cycle: a cosine ramp from lr / div_factor up to lr over pct_start of the run, then a
    cosine anneal down to nearly zero. The ramp is its own warmup, so warmup_epochs must stay 0."""
    if warmup_epochs:
        raise ConfigError(f"scheduler.warmup_epochs={warmup_epochs}: onecycle has its own warmup; use 0")
    max_lr = [group["lr"] for group in optimizer.param_groups]
    return OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=pct_start,
                      div_factor=div_factor, cycle_momentum=False)

