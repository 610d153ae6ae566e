"""The ResNet family: each tweak changes what He et al.'s figure 2 says it changes, and the pipeline's tools, views
and tricks work on it through the network contract alone."""

import json

import pytest
import torch
from hydra.errors import InstantiationException
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mnistlab.callbacks.views import feature_layers, filter_layers
from mnistlab.config import compose_run_config
from mnistlab.errors import ConfigError
from mnistlab.models import ResNet
from mnistlab.models.resnet import BasicBlock, Bottleneck
from mnistlab.tasks.registry import load_task
from mnistlab.tools.evaluate import evaluate
from mnistlab.tools.export import export
from mnistlab.tools.inspect_model import layer_table

from .conftest import FAST, network, train_in_process

SMALL = {"widths": (4, 8, 16), "blocks": (1, 2, 1)}


def stage_outputs(net: ResNet, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for name, stage in net.backbone.named_children():
        x = stage(x)
        shapes[name] = tuple(x.shape)
    return shapes


def first_block(net: ResNet, stage: str):
    return net.backbone.get_submodule(stage)[0]


def input_reach(module: torch.nn.Module, channels: int, size: int = 15) -> torch.Tensor:
    """Which input pixels the centre output pixel reads (a [size, size] bool map), measured by a gradient."""
    x = torch.randn(1, channels, size, size, requires_grad=True)
    out = module.eval()(x)
    out[0, :, out.shape[2] // 2, out.shape[3] // 2].sum().backward()
    return x.grad[0].abs().sum(0) > 0


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_stages_halve_the_image_twice_and_widen_by_the_block_expansion(block):
    widths, size = (4, 8, 16), 28
    net = network("ResNet", widths=widths, blocks=(1, 1, 1), block=block, image_size=size)
    expansion = {"basic": BasicBlock, "bottleneck": Bottleneck}[block].expansion
    shapes = stage_outputs(net, torch.zeros(3, 1, size, size))
    assert shapes == {"stem": (3, widths[0], size, size), "stage1": (3, widths[0] * expansion, size, size),
                      "stage2": (3, widths[1] * expansion, size // 2, size // 2),
                      "stage3": (3, widths[2] * expansion, size // 4, size // 4)}
    assert net.head[-1].in_features == widths[2] * expansion == net.pre_logits(torch.zeros(3, 1, size, size)).shape[1]
    assert net(torch.zeros(3, 1, size, size)).shape == (3, net.num_classes)


def test_resnet_b_moves_the_stride_from_the_first_1x1_to_the_3x3():
    plain, tweaked = network("ResNet", **SMALL), network("ResNet", **SMALL, stride_on_3x3=True)
    for stage in ("stage2", "stage3"):
        assert first_block(plain, stage).conv1.stride == (2, 2) and first_block(plain, stage).conv2.stride == (1, 1)
        assert first_block(tweaked, stage).conv1.stride == (1, 1)
        assert first_block(tweaked, stage).conv2.stride == (2, 2)
    x = torch.zeros(2, 1, 28, 28)
    assert stage_outputs(plain, x) == stage_outputs(tweaked, x)
    with pytest.raises(ConfigError, match=r"model.stride_on_3x3=true .* model.block=bottleneck"):
        network("ResNet", block="basic", stride_on_3x3=True)


def test_resnet_b_reads_every_pixel_where_the_original_skips_three_in_four():
    def reach(net: ResNet) -> torch.Tensor:
        block = first_block(net, "stage2")
        x = torch.randn(1, block.conv1.in_channels, 16, 16, requires_grad=True)
        block.eval()
        out = block.conv2(block.conv1(x))  # the residual branch's convolutions: which pixels they read
        out.sum().backward()
        return x.grad[0].abs().sum(0) > 0

    assert int(reach(network("ResNet", **SMALL)).sum()) == 16 * 16 // 4
    assert int(reach(network("ResNet", **SMALL, stride_on_3x3=True)).sum()) == 16 * 16


def test_resnet_c_deepens_the_stem_to_three_3x3_convolutions():
    plain, deep = network("ResNet", **SMALL), network("ResNet", **SMALL, deep_stem=True)
    convolutions = [m for m in deep.backbone.stem if isinstance(m, torch.nn.Conv2d)]
    assert len([m for m in plain.backbone.stem if isinstance(m, torch.nn.Conv2d)]) == 1
    width = SMALL["widths"][0]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convolutions] == [
        (1, width // 2, (3, 3)), (width // 2, width // 2, (3, 3)), (width // 2, width, (3, 3))]
    # The pixels the stem's convolutions read for one output pixel (ReLUs aside, which only gate them).
    assert int(input_reach(plain.backbone.stem.conv, 1).sum()) == 3 * 3
    assert int(input_reach(torch.nn.Sequential(*convolutions), 1).sum()) == 7 * 7  # three 3x3 see 7x7
    x = torch.zeros(2, 1, 28, 28)
    assert stage_outputs(plain, x) == stage_outputs(deep, x)


def test_resnet_d_average_pools_the_shortcut_before_a_stride_1_convolution():
    plain, tweaked = network("ResNet", **SMALL), network("ResNet", **SMALL, avg_down=True)
    original, pooled = first_block(plain, "stage2").shortcut, first_block(tweaked, "stage2").shortcut
    assert [type(m).__name__ for m in original] == ["Conv2d", "BatchNorm2d"] and original.conv.stride == (2, 2)
    assert [type(m).__name__ for m in pooled] == ["AvgPool2d", "Conv2d", "BatchNorm2d"]
    assert pooled.conv.stride == (1, 1) and pooled.pool.kernel_size == 2
    # The strided 1x1 reads one input pixel in four; the pooled shortcut reads every one.
    channels = original.conv.in_channels
    for shortcut, seen in ((original, 1), (pooled, 4)):
        x = torch.randn(1, channels, 8, 8, requires_grad=True)
        shortcut.eval()(x).sum().backward()
        assert int((x.grad[0].abs().sum(0) > 0).sum()) == 8 * 8 * seen // 4
    x = torch.zeros(2, 1, 28, 28)
    assert stage_outputs(plain, x) == stage_outputs(tweaked, x)


def test_zero_gamma_starts_each_block_as_its_shortcut():
    net = network("ResNet", **SMALL, zero_gamma=True)
    blocks = [m for m in net.modules() if isinstance(m, BasicBlock | Bottleneck)]
    assert len(blocks) == sum(SMALL["blocks"])
    last = {id(block.last_bn) for block in blocks}
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            assert torch.all(module.weight == (0 if id(module) in last else 1))
    assert all(torch.all(m.weight == 1) for m in network("ResNet", **SMALL).modules()
               if isinstance(m, torch.nn.BatchNorm2d))
    identity_block = net.backbone.stage2[1]  # stride 1, same width: its shortcut is the identity
    x = torch.relu(torch.randn(4, identity_block.conv1.in_channels, 14, 14))
    for train in (True, False):
        identity_block.train(train)
        assert torch.equal(identity_block(x), x)


def test_resnet_views_show_the_stem_and_the_stages():
    net = network("ResNet", **SMALL, deep_stem=True)
    assert feature_layers(net) == ["backbone.stem", "backbone.stage1", "backbone.stage2", "backbone.stage3"]
    assert filter_layers(net) == ["backbone.stem.conv1", "backbone.stage1.0.conv1", "backbone.stage2.0.conv1",
                                  "backbone.stage3.0.conv1"]


def test_inspect_walks_the_resnet_with_its_parameters_and_multiply_adds():
    net = network("ResNet", **SMALL)
    rows, params, macs = layer_table(net, batch_size=2)
    assert params == sum(p.numel() for p in net.parameters())
    stem = next(row for row in rows if row[0] == "backbone.stem.conv")
    assert stem[2] == [2, SMALL["widths"][0], 28, 28] and stem[5] == SMALL["widths"][0] * 9 * 28 * 28
    assert macs > stem[5]


# The tweaks resnet_bag_of_tricks leaves out (ResNet-D is in it): the test run has every tweak and trick at once.
OTHER_TWEAKS = ["model.stride_on_3x3=true", "model.deep_stem=true", "model.zero_gamma=true"]


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory, synthetic_root):
    folder = tmp_path_factory.mktemp("resnet") / "run"
    overrides = [f"data.root={synthetic_root}", *FAST, "+experiment=resnet_bag_of_tricks", *OTHER_TWEAKS,
                 "model.widths=[4,8,16]", "model.blocks=[1,1,1]", "tricks.mixup_alpha=0.2", "trainer.precision=32-true"]
    return train_in_process(folder, *overrides) | {"folder": folder}


@pytest.mark.slow
def test_the_tweaked_resnet_trains_with_the_tricks_and_shows_its_stages(resnet_run):
    # (The synthetic classes are blobs at fixed places: a globally pooled network this small barely learns them in
    # two short epochs; what counts here is that every trick runs on it.)
    assert resnet_run["epochs"] == 2 and 0 <= resnet_run["test/acc"] <= 1 and resnet_run["test/loss"] < 10
    events = EventAccumulator(str(resnet_run["folder"] / "tensorboard"), size_guidance={"images": 0}).Reload()
    images = set(events.Tags()["images"])
    assert {f"feature_maps/backbone.{name}" for name in ("stem", "stage1", "stage2", "stage3")} <= images
    assert "filters/backbone.stem.conv1" in images


@pytest.mark.slow
def test_resnet_checkpoints_evaluate_export_transfer_and_teach(resnet_run, tmp_path, synthetic_root):
    checkpoint = resnet_run["best_checkpoint"]
    assert type(load_task(checkpoint, "ckpt_path").net).__name__ == "ResNet"
    assert evaluate(checkpoint, {}, "cpu", "32-true")["test/acc"] == pytest.approx(resnet_run["test/acc"], abs=2e-3)
    for row in export(checkpoint, ["torchscript", "torch_export"], str(tmp_path)):
        assert row["max_abs_diff"] < 1e-4, row
    small = ["model.widths=[4,8,16]", "model.blocks=[1,1,1]", "callbacks=minimal"]
    transferred = train_in_process(tmp_path / "transfer", f"data.root={synthetic_root}", *FAST,
                                   "+experiment=resnet_bag_of_tricks", *OTHER_TWEAKS, *small,
                                   f"tricks.init_from={checkpoint}", "tricks.freeze_conv=true")
    source, target = (load_task(path, "ckpt_path").net
                      for path in (checkpoint, transferred["best_checkpoint"]))
    assert torch.equal(source.backbone.stem.conv1.weight, target.backbone.stem.conv1.weight)
    # (Hydra wraps what the task raises while it is built; train.py prints the cause as one line.)
    with pytest.raises(InstantiationException, match=r"its backbone does not fit this model's \(backbone.stem.conv"):
        train_in_process(tmp_path / "mismatch", f"data.root={synthetic_root}", *FAST, "+experiment=resnet", *small,
                         f"tricks.init_from={checkpoint}")  # a one-conv stem cannot take the deep stem's weights
    # The seed network distilled from the ResNet.
    distilled = train_in_process(tmp_path / "distill", f"data.root={synthetic_root}", *FAST, "+experiment=distill",
                                 "callbacks=minimal", f"tricks.distill_teacher={checkpoint}")
    saved = json.loads((tmp_path / "distill" / "metrics.json").read_text())
    assert saved["test/acc"] == distilled["test/acc"] > 0.3


def test_resnet_settings_compose_and_bad_ones_are_one_line():
    cfg = compose_run_config(["+experiment=resnet_bag_of_tricks"])
    # What pays here (docs/resnet.md): ResNet-D and the tricks that cost nothing; B, C and zero-gamma stay off.
    assert cfg.model.avg_down and not (cfg.model.stride_on_3x3 or cfg.model.deep_stem or cfg.model.zero_gamma)
    assert cfg.tricks.label_smoothing == 0.1 and cfg.tricks.no_bias_decay and "ema" in cfg.callbacks
    assert cfg.name == "resnet_bag_of_tricks"
    with pytest.raises(ConfigError, match=r"model.block='wide' must be one of basic, bottleneck"):
        network("ResNet", block="wide")
    with pytest.raises(ConfigError, match=r"one entry per stage \(3\)"):
        network("ResNet", widths=(8, 16))
