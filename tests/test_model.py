import pytest
import torch

from mnistlab.model import SeedNet


def test_seed_network_has_the_seed_layers_and_431080_parameters():
    net = SeedNet()
    shapes = {name: tuple(p.shape) for name, p in net.named_parameters()}
    assert shapes == {
        "conv1.weight": (20, 1, 5, 5), "conv1.bias": (20,),
        "conv2.weight": (50, 20, 5, 5), "conv2.bias": (50,),
        "fc1.weight": (500, 800), "fc1.bias": (500,),
        "fc2.weight": (10, 500), "fc2.bias": (10,),
    }
    assert sum(p.numel() for p in net.parameters()) == 431_080


def test_shapes_follow_the_seed_walk():
    """The seed prints x.size() after every layer for a batch of 64: reproduce that walk with hooks."""
    net = SeedNet()
    seen = {}

    def record(module, inputs, output):
        seen[module.name] = tuple(output.shape)

    for name in ("conv1", "conv2", "fc1", "fc2"):
        layer = getattr(net, name)
        layer.name = name
        layer.register_forward_hook(record)
    x = torch.randn(64, 1, 28, 28)
    assert tuple(net.features(x).shape) == (64, 800)
    assert tuple(net(x).shape) == (64, 10)
    assert seen == {"conv1": (64, 20, 24, 24), "conv2": (64, 50, 8, 8), "fc1": (64, 500), "fc2": (64, 10)}


@pytest.mark.parametrize(("image_size", "kernel_size"), [(28, 5), (32, 5), (28, 3), (36, 7)])
def test_fc1_in_features_are_derived_from_the_conv_stack(image_size, kernel_size):
    side = image_size
    for _ in range(2):  # valid convolution, then a 2x2 max-pool
        side = (side - kernel_size + 1) // 2
    net = SeedNet(image_size=image_size, kernel_size=kernel_size, num_classes=7)
    assert net.fc1.in_features == 50 * side * side
    assert tuple(net(torch.zeros(3, 1, image_size, image_size)).shape) == (3, 7)


def test_gradients_reach_every_parameter():
    net = SeedNet()
    loss = torch.nn.functional.cross_entropy(net(torch.randn(4, 1, 28, 28)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
