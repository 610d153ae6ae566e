"""The networks, each following the contract of models/contract.py; a model config's `_target_` names one, and a
checkpoint's only one of these or a registered one (models/registry.py)."""

from mnistlab.models.fcn import FCN
from mnistlab.models.registry import register_network
from mnistlab.models.resnet import ResNet
from mnistlab.models.seed import SeedNet

__all__ = ["FCN", "ResNet", "SeedNet", "register_network"]
