"""Batches cut by index from tensors that already live on the training device: what every data module's loaders
hand Lightning."""

import math
from collections.abc import Callable

import torch

from mnistlab.execution import grouped


class DeviceBatches:
    """Batches cut by index from tensors that already live on the training device.

    `sampler` orders the indices. Lightning calls `sampler.set_epoch` at each epoch start, so a seeded
    DistributedSampler gives a fresh, reproducible shuffle per epoch (and shards across DDP ranks). A training
    loader (`steps_per_execution` K > 1) yields groups of K batches (execution.StepGroup), at most `limit` batches
    an epoch (trainer.limit_train_batches, counted in batches whatever K), and a resumed epoch starts after the
    groups it ran (`done`).
    """

    batch_sampler = None  # Lightning reads this DataLoader attribute once a loader has a `sampler`

    def __init__(self, images, labels, batch_size: int, sampler, transform, drop_last: bool = False,
                 steps_per_execution: int | None = None, limit: int | None = None,
                 done: Callable[[], int] = lambda: 0):
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.sampler, self.transform, self.drop_last = sampler, transform, drop_last
        self.steps_per_execution, self.limit, self.done = steps_per_execution, limit, done

    def num_batches(self) -> int:
        n = len(self.sampler)
        count = n // self.batch_size if self.drop_last and n >= self.batch_size else math.ceil(n / self.batch_size)
        return count if self.limit is None else min(count, self.limit)

    def __len__(self) -> int:
        count = self.num_batches()
        return count if self.steps_per_execution is None else math.ceil(count / self.steps_per_execution)

    def batches(self, start: int = 0):
        """The epoch's batches from index `start` on."""
        order = torch.tensor(list(self.sampler), device=self.images.device)
        for first in range(start * self.batch_size, self.num_batches() * self.batch_size, self.batch_size):
            index = order[first : first + self.batch_size]
            yield self.transform(self.images[index]), self.labels[index]

    def __iter__(self):
        per_group = self.steps_per_execution or 1
        groups = grouped(self.batches, self.num_batches(), per_group, self.done)
        return groups if per_group > 1 else (group.first() for group in groups)  # K=1: plain batches
