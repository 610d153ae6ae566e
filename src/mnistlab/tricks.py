"""The training-step and optimizer tricks of He et al., "Bag of Tricks" (arXiv 1812.01187), one function each.

Architecture tricks (BatchNorm, stride, kernel size, dilation) live in the networks (models/), learning-rate
schedules in schedules.py, weight averaging in Lightning's callbacks (configs/callbacks/).
"""

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from mnistlab.checkpoints import load_net_state
from mnistlab.errors import ConfigError
from mnistlab.models.contract import rename_legacy_keys

LINEAR_SCALING_REFERENCE_BATCH = 256  # the paper's rule: lr = base_lr * batch / 256


def linear_scaled_lr(base_lr: float, batch_size: int) -> float:
    """Large-batch training: grow the learning rate with the batch (paper section 3.1)."""
    return base_lr * batch_size / LINEAR_SCALING_REFERENCE_BATCH


def parameter_groups(net: nn.Module, weight_decay: float, no_bias_decay: bool) -> list[dict]:
    """Optimizer groups. With `no_bias_decay`, weight decay applies to conv and linear weights only; biases and
    BatchNorm's gamma and beta (every parameter of one dimension) get none (paper section 3.1)."""
    params = [p for p in net.parameters() if p.requires_grad]
    if not no_bias_decay:
        return [{"params": params, "weight_decay": weight_decay}]
    return [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


def batch_mixer(mixup_alpha: float, cutmix_alpha: float, num_classes: int) -> Callable | None:
    """torchvision's MixUp and/or CutMix (one of them, at random, per batch), or None when both are off.

    Each draws one lambda ~ Beta(alpha, alpha) per batch and pairs every image with the batch rolled by one:
    MixUp returns x' = lam * x + (1 - lam) * x.roll(1), CutMix pastes a box of x.roll(1) covering 1 - lam of
    the image; both return soft targets y' = lam * onehot(y) + (1 - lam) * onehot(y.roll(1)).
    """
    mixers = []
    if mixup_alpha > 0:
        mixers.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
    if cutmix_alpha > 0:
        mixers.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, hard_loss: torch.Tensor,
                      weight: float, temperature: float) -> torch.Tensor:
    """(1 - w) * CE + w * T^2 * KL(teacher_T || student_T), where *_T = softmax(logits / T) (Hinton et al.).

    T^2 keeps the soft term's gradients on the scale of the hard term's as T grows (paper section 5.3).
    """
    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=1),
                    F.log_softmax(teacher_logits / temperature, dim=1), log_target=True, reduction="batchmean")
    return (1 - weight) * hard_loss + weight * temperature**2 * soft


def transfer_weights(net: nn.Module, checkpoint: str | Path, freeze_conv: bool) -> list[str]:
    """Transfer learning: the whole backbone of another run, and every tensor of its head whose name and shape
    match (so a last layer sized for another number of classes stays fresh); optionally the backbone frozen.
    Returns the names copied."""
    source, own = load_net_state(checkpoint, "tricks.init_from"), net.state_dict()
    rename_legacy_keys(source, getattr(net, "LEGACY_KEYS", {}))
    copied = {name: tensor for name, tensor in source.items() if name in own and own[name].shape == tensor.shape}
    unmatched = [name for name in own if name.startswith("backbone.") and name not in copied]
    if unmatched:
        raise ConfigError(f"tricks.init_from={checkpoint}: its backbone does not fit this model's "
                          f"({', '.join(unmatched)} missing or shaped differently)")
    net.load_state_dict(copied, strict=False)
    if freeze_conv:
        net.backbone.requires_grad_(False)
    return sorted(copied)
