"""TensorBoard inspection: what a run writes, read back with TensorBoard's own reader and served over HTTP."""

import json
import math
import socket
import subprocess
import sys
import time
import urllib.request
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf, open_dict
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from mnistlab.callbacks.views import (
    backbone_convolutions,
    due,
    feature_map_grids,
    filter_grids,
    mistakes_figure,
    tile_grid,
)
from mnistlab.config import compose_run_config
from mnistlab.hparams import compared_settings, flatten

from .conftest import FAST, configured, network, run_script, train_in_process

# Mixup and BatchNorm on, so the comparison with callbacks=minimal shows inspection changes no random draw
# and no BatchNorm statistic; a small learning rate leaves mistakes to show after one short epoch.
SHORT = [*FAST, "trainer.max_epochs=1", "trainer.limit_train_batches=6", "optimizer.lr=0.002",
         "tricks.mixup_alpha=0.2", "model.batch_norm=true"]
EVERYTHING = {"size_guidance": {"images": 0, "histograms": 0, "scalars": 0, "tensors": 0}}


@pytest.fixture(scope="module")
def inspected_run(tmp_path_factory, synthetic_root):
    run_dir = tmp_path_factory.mktemp("inspected") / "run"
    train_in_process(run_dir, f"data.root={synthetic_root}", *SHORT, "callbacks.embedding.num_images=50")
    return run_dir, EventAccumulator(str(run_dir / "tensorboard"), **EVERYTHING).Reload()


def grid_size(tiles: int, per_row: int, tile: int, padding: int = 2) -> tuple[int, int]:
    """(height, width) of torchvision's make_grid for square tiles."""
    columns = min(per_row, tiles)
    rows = math.ceil(tiles / columns)
    return rows * (tile + padding) + padding, columns * (tile + padding) + padding


@pytest.mark.slow
def test_scalars_cover_every_stage_calibration_and_each_class(inspected_run):
    _, events = inspected_run
    tags = set(events.Tags()["scalars"])
    expected = {"train/loss_step", "train/loss_epoch", "train/acc", "val/loss", "val/acc", "val/acc_best",
                "val/ece", "test/loss", "test/acc", "lr-SGD"} | {f"val/acc_class/{digit}" for digit in range(10)}
    assert expected <= tags, expected - tags
    for tag in expected:
        assert all(math.isfinite(e.value) for e in events.Scalars(tag)), tag
    assert 0 <= events.Scalars("val/ece")[-1].value <= 1
    # Per-class accuracies average (the classes are equally frequent up to sampling) near the overall accuracy.
    per_class = [events.Scalars(f"val/acc_class/{digit}")[-1].value for digit in range(10)]
    assert all(0 <= acc <= 1 for acc in per_class)
    assert abs(sum(per_class) / 10 - events.Scalars("val/acc")[-1].value) < 0.1


@pytest.mark.slow
def test_filter_and_feature_map_images_have_the_sizes_the_layers_imply(inspected_run):
    _, events = inspected_run
    images = set(events.Tags()["images"])
    assert {"filters/backbone.conv1", "filters/backbone.conv2", "feature_maps/input", "feature_maps/backbone.conv1",
            "feature_maps/backbone.conv2", "val/confusion_matrix", "val/mistakes", "train/first_batch"} <= images
    conv1 = events.Images("filters/backbone.conv1")[-1]
    # 20 filters of 5x5, ten a row, each weight 4x4 pixels (zoom 4): 2 rows of 10 tiles of 20 pixels.
    assert (conv1.height, conv1.width) == grid_size(tiles=20, per_row=10, tile=5 * 4)
    conv2 = events.Images("filters/backbone.conv2")[-1]
    # 50 filters of 20 input channels: one row per filter, one 5x5 tile per input channel.
    assert (conv2.height, conv2.width) == grid_size(tiles=50 * 20, per_row=20, tile=5 * 4)
    maps = events.Images("feature_maps/backbone.conv1")[-1]
    # 4 images x 20 channels of conv1's 24x24 output, zoom 2.
    assert (maps.height, maps.width) == grid_size(tiles=4 * 20, per_row=20, tile=24 * 2)
    batch = events.Images("train/first_batch")[0]
    assert (batch.height, batch.width) == grid_size(tiles=64, per_row=8, tile=28 * 2)


@pytest.mark.slow
def test_histograms_exist_for_every_weight_and_its_gradient(inspected_run):
    _, events = inspected_run
    histograms = set(events.Tags()["histograms"])
    net = network("SeedNet", batch_norm=True)
    for name, parameter in net.named_parameters():
        assert f"weights/{name}" in histograms and f"gradients/{name}" in histograms, name
        last = events.Histograms(f"weights/{name}")[-1].histogram_value
        assert last.num == parameter.numel()


@pytest.mark.slow
def test_hparams_tab_holds_the_config_and_the_final_metrics(inspected_run):
    run_dir, events = inspected_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    names = {info.name for info in experiment.hparam_infos}
    assert {"optimizer.lr", "tricks.mixup_alpha", "model.batch_norm", "data.batch_size", "seed"} <= names
    assert {info.name.tag for info in experiment.metric_infos} == {"test/acc", "test/loss", "val/acc_best"}
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["optimizer.lr"].number_value == pytest.approx(0.002)
    assert start.hparams["tricks.mixup_alpha"].number_value == pytest.approx(0.2)
    assert start.hparams["data.name"].string_value == "mnist"
    # The metric columns read these scalars: their last values are the run's final metrics.
    for tag in ("test/acc", "test/loss", "val/acc_best"):
        assert events.Scalars(tag)[-1].value == pytest.approx(metrics[tag], abs=1e-6)


@pytest.mark.slow
def test_graph_and_projector_are_written(inspected_run):
    run_dir, events = inspected_run
    assert events.Tags()["graph"]
    graph = events.Graph()
    assert any("conv1" in node.name for node in graph.node)
    assert (run_dir / "tensorboard" / "projector_config.pbtxt").is_file()
    metadata = next((run_dir / "tensorboard").rglob("metadata.tsv")).read_text().splitlines()
    assert len(metadata) == 50 and set(metadata) <= {str(digit) for digit in range(10)}


@pytest.mark.slow
def test_minimal_callbacks_write_no_images_and_change_no_result(tmp_path, synthetic_root, inspected_run):
    inspected_dir, _ = inspected_run
    run_dir = tmp_path / "run"
    train_in_process(run_dir, f"data.root={synthetic_root}", *SHORT, "callbacks=minimal")
    events = EventAccumulator(str(run_dir / "tensorboard"), **EVERYTHING).Reload()
    assert events.Tags()["images"] == [] and events.Tags()["histograms"] == [] and not events.Tags()["graph"]
    assert "val/ece" not in events.Tags()["scalars"] and "val/acc" in events.Tags()["scalars"]
    # Same seed, same data: the inspected run drew the same mixup and kept the same BatchNorm statistics.
    plain = json.loads((run_dir / "metrics.json").read_text())
    inspected = json.loads((inspected_dir / "metrics.json").read_text())
    assert plain["test/loss"] == inspected["test/loss"] and plain["test/acc"] == inspected["test/acc"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_tensorboard_serves_the_run_over_http(inspected_run):
    run_dir, _ = inspected_run
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(run_dir.parent),
                               "--port", str(port), "--host", "127.0.0.1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def get(path: str, body: bytes | None = None):
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body,
                                         headers={"Content-Type": "application/json"})
        return json.loads(direct.open(request, timeout=10).read())

    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                tags = get("/data/plugin/scalars/tags")
                if "run/tensorboard" in tags:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "tensorboard did not serve the run within 60 s"
            time.sleep(0.5)
        assert {"test/acc", "val/acc", "val/ece"} <= set(tags["run/tensorboard"])
        assert "filters/backbone.conv1" in get("/data/plugin/images/tags")["run/tensorboard"]
        experiment = get("/data/plugin/hparams/experiment", json.dumps({"experimentName": ""}).encode())
        assert {"optimizer.lr", "tricks.mixup_alpha"} <= {h["name"] for h in experiment["hparamInfos"]}
        assert {m["name"]["tag"] for m in experiment["metricInfos"]} == {"test/acc", "test/loss", "val/acc_best"}
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_grids_follow_the_network_shape():
    net = network("SeedNet", kernel_size=3, conv_channels=(8, 16))
    assert backbone_convolutions(net) == ["backbone.conv1", "backbone.conv2"]
    grids = filter_grids(net, backbone_convolutions(net), zoom=1)
    assert tuple(grids["backbone.conv1"].shape) == (3, *grid_size(tiles=8, per_row=10, tile=3))
    assert tuple(grids["backbone.conv2"].shape) == (3, *grid_size(tiles=16 * 8, per_row=8, tile=3))
    maps = feature_map_grids(net, torch.randn(2, 1, 28, 28), ("backbone.conv1",), zoom=1)
    assert tuple(maps["backbone.conv1"].shape) == (3, *grid_size(tiles=2 * 8, per_row=8, tile=26))
    assert tuple(maps["input"].shape) == (3, *grid_size(tiles=2, per_row=2, tile=28))
    assert net.training  # drawing feature maps leaves the network as it found it


def test_tiles_are_scaled_each_to_the_full_range():
    tile = torch.arange(9.0).reshape(1, 1, 3, 3)
    grid = tile_grid(torch.cat([tile, tile * 100 - 7]), per_row=2, zoom=1)
    first, second = grid[0, 2:5, 2:5], grid[0, 2:5, 7:10]  # 2 pixels of padding around and between
    assert torch.equal(first, second)
    assert first.min() == 0 and first.max() == 1 and torch.allclose(first.flatten(), torch.arange(9.0) / 8)


@pytest.mark.parametrize(("every", "epochs", "drawn"), [
    (1, 4, [0, 1, 2, 3]), (5, 10, [0, 5, 9]), (5, 11, [0, 5, 10]), (3, 1, [0]), (0, 10, [])])
def test_figures_are_drawn_every_nth_epoch_and_at_the_last(every, epochs, drawn):
    assert [epoch for epoch in range(epochs)
            if due(SimpleNamespace(current_epoch=epoch, max_epochs=epochs), every)] == drawn


@pytest.mark.parametrize(("every", "epochs", "validate_every", "drawn"), [
    (5, 10, 1, [0, 5, 9]), (5, 10, 4, [3, 7]), (2, 10, 3, [2, 8]), (1, 3, 1, [0, 1, 2]), (0, 10, 1, [])])
def test_validation_figures_count_validation_passes(every, epochs, validate_every, drawn):
    analysis = configured("callbacks.validation_analysis", figures_every_n_epochs=every)
    validated = [epoch for epoch in range(epochs) if (epoch + 1) % validate_every == 0]
    assert [epoch for epoch in validated if analysis.count_and_check_due(SimpleNamespace(
        current_epoch=epoch, max_epochs=epochs, check_val_every_n_epoch=validate_every))] == drawn


def test_mistakes_figure_titles_each_image_with_true_and_predicted_names():
    figure = mistakes_figure(torch.rand(3, 1, 28, 28), torch.tensor([0, 1, 2]), torch.tensor([5, 7, 9]),
                             [f"c{i}" for i in range(10)])
    texts = [(text.get_text(), text.get_color(), text.get_fontsize()) for text in figure.axes[0].texts]
    # The true class in black over the predicted one in red, each at 10 pt: readable at thumbnail size.
    assert texts == [(name, color, 10) for true, guess in [("c0", "c5"), ("c1", "c7"), ("c2", "c9")]
                     for name, color in [(true, "black"), (guess, "crimson")]]


def test_flatten_spells_keys_as_overrides():
    assert flatten({"a": {"b": 1, "c": {"d": None}}, "e": [1, 2], "f": {}}) == {"a.b": 1, "a.c.d": None,
                                                                              "e": [1, 2], "f": {}}


@pytest.mark.slow
def test_plot_filters_script_writes_the_pngs_of_a_checkpoint(inspected_run, tmp_path, monkeypatch):
    run_dir, _ = inspected_run
    out = tmp_path / "figures"
    result = run_script(monkeypatch, "plot_filters.py", str(run_dir / "checkpoints" / "last.ckpt"), "--out", str(out),
                        "--zoom", "4")
    assert result.returncode == 0, result.stderr[-2000:]
    with Image.open(out / "filters_backbone_conv1.png") as png:
        assert (png.height, png.width) == grid_size(tiles=20, per_row=10, tile=5 * 4)
    with Image.open(out / "feature_maps_backbone_conv2.png") as png:  # the run's own first 4 validation images
        assert (png.height, png.width) == grid_size(tiles=4 * 50, per_row=50, tile=8 * 2)
    assert {p.name for p in out.iterdir()} == {f"{kind}_{layer}.png" for kind, layer in [
        ("filters", "backbone_conv1"), ("filters", "backbone_conv2"), ("feature_maps", "input"),
        ("feature_maps", "backbone_conv1"), ("feature_maps", "backbone_conv2")]}

    missing = run_script(monkeypatch, "plot_filters.py", str(tmp_path / "nope.ckpt"))
    assert missing.returncode != 0
    assert missing.stderr.strip() == f"error: checkpoint={tmp_path / 'nope.ckpt'}: no such checkpoint file"


def test_hparams_hold_the_compared_settings_and_what_the_command_line_changed():
    cfg = compose_run_config(["+experiment=bag_of_tricks", "callbacks.ema.decay=0.99"])
    with open_dict(cfg):
        del cfg["hydra"]
    settings = compared_settings(OmegaConf.to_container(cfg, resolve=True), ["callbacks.ema.decay"])
    assert settings["optimizer.lr"] == 0.1 and settings["tricks.label_smoothing"] == 0.1
    assert settings["model.batch_norm"] is True and settings["trainer.precision"] == "bf16-mixed"
    assert (settings["task"], settings["model"], settings["optimizer"], settings["scheduler"]) == (
        "Classifier", "SeedNet", "SGD", "cosine")
    assert "ema" in settings["callbacks"].split(", ") and settings["callbacks.ema.decay"] == 0.99
    assert not any(key.endswith(("_target_", "_partial_")) for key in settings)
    assert not any(key.startswith(("callbacks.filters", "logger.", "trainer.plugins", "data.root")) for key in settings)
