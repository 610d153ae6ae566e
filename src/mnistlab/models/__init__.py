"""The networks, each following the contract of models/contract.py; a model config's `_target_` names one."""

from mnistlab.models.fcn import FCN
from mnistlab.models.resnet import ResNet
from mnistlab.models.seed import SeedNet

__all__ = ["FCN", "ResNet", "SeedNet"]
