"""Several trained networks as one."""

import torch
from torch import nn


class Ensemble(nn.Module):
    """Several networks as one: a teacher ensemble distilled into a single network (Hinton et al. section 3), or
    checkpoints scored together by mnistlab-eval.

    Their logits are averaged, so distillation_loss is unchanged: softmax(mean logits / T) is the normalised
    geometric mean of the members' tempered distributions. A member with larger logits (one trained without label
    smoothing, say) weighs more in that mean.
    """

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x) for member in self.members]).mean(0)
