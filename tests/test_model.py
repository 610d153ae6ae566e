import pytest
import torch

from .conftest import network


def test_seed_network_has_the_seed_layers_and_431080_parameters():
    net = network("SeedNet")
    shapes = {name: tuple(p.shape) for name, p in net.named_parameters()}
    assert shapes == {
        "backbone.conv1.weight": (20, 1, 5, 5), "backbone.conv1.bias": (20,),
        "backbone.conv2.weight": (50, 20, 5, 5), "backbone.conv2.bias": (50,),
        "head.fc1.weight": (500, 800), "head.fc1.bias": (500,),
        "head.fc2.weight": (10, 500), "head.fc2.bias": (10,),
    }
    assert sum(p.numel() for p in net.parameters()) == 431_080


def test_shapes_follow_the_seed_walk():
    """The seed prints x.size() after every layer for a batch of 64: reproduce that walk with hooks."""
    net = network("SeedNet")
    seen = {}

    def record(module, inputs, output):
        seen[module.name] = tuple(output.shape)

    for name in ("backbone.conv1", "backbone.conv2", "head.fc1", "head.fc2"):
        layer = net.get_submodule(name)
        layer.name = name.split(".")[1]
        layer.register_forward_hook(record)
    x = torch.randn(64, 1, 28, 28)
    assert tuple(net.backbone(x).shape) == (64, 50, 4, 4)
    assert tuple(net(x).shape) == (64, 10)
    assert seen == {"conv1": (64, 20, 24, 24), "conv2": (64, 50, 8, 8), "fc1": (64, 500), "fc2": (64, 10)}


def test_the_network_contract():
    net = network("SeedNet", num_classes=7, image_size=32).eval()
    x = torch.randn(3, 1, 32, 32)
    assert net.num_classes == 7 and net.input_shape == (1, 32, 32)
    assert isinstance(net.head[-1], torch.nn.Linear) and net.head[-1].out_features == 7
    features = net.pre_logits(x)
    assert tuple(features.shape) == (3, 500)
    assert torch.allclose(net.head[-1](features), net(x))


def test_a_checkpoint_from_before_the_backbone_head_split_loads():
    net = network("SeedNet", batch_norm=True)
    old_names = {"backbone.conv1": "conv1", "backbone.bn1": "bn1", "backbone.conv2": "conv2", "backbone.bn2": "bn2",
                 "head.fc1": "fc1", "head.bn3": "bn3", "head.fc2": "fc2"}
    old = {}
    for key, tensor in net.state_dict().items():
        layer, _, rest = key.rpartition(".")
        old[f"net.{old_names[layer]}.{rest}"] = tensor.clone() + 1
    wrapper = torch.nn.Module()
    wrapper.net = network("SeedNet", batch_norm=True)
    wrapper.load_state_dict(old)  # strict: every old key found its new place
    assert torch.equal(wrapper.net.head.fc2.bias, old["net.fc2.bias"])
    assert torch.equal(wrapper.net.backbone.bn1.running_var, old["net.bn1.running_var"])


@pytest.mark.parametrize(("image_size", "kernel_size"), [(28, 5), (32, 5), (28, 3), (36, 7)])
def test_fc1_in_features_are_derived_from_the_conv_stack(image_size, kernel_size):
    side = image_size
    for _ in range(2):  # valid convolution, then a 2x2 max-pool
        side = (side - kernel_size + 1) // 2
    net = network("SeedNet", image_size=image_size, kernel_size=kernel_size, num_classes=7)
    assert net.head.fc1.in_features == 50 * side * side
    assert tuple(net(torch.zeros(3, 1, image_size, image_size)).shape) == (3, 7)


def test_gradients_reach_every_parameter():
    net = network("SeedNet")
    loss = torch.nn.functional.cross_entropy(net(torch.randn(4, 1, 28, 28)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
