"""The network contract: a toy network that follows it (tests/toy_net.py), and that no mnistlab module names, goes
through training, the TensorBoard views, evaluation, prediction, export, inspection, transfer and distillation."""

import json

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mnistlab.tasks.registry import load_task
from mnistlab.tools.evaluate import evaluate
from mnistlab.tools.export import export
from mnistlab.tools.inspect_model import main as inspect_main
from mnistlab.tools.predict import predict

from .conftest import FAST, train_in_process

TOY = ["~model", "+model._target_=tests.toy_net.ToyNet", "+model.num_classes=${data.num_classes}",
       "+model.image_size=${data.image_size}", "+model.width=6"]


def run(tmp_path, name: str, *overrides: str) -> dict:
    return train_in_process(tmp_path / name, *FAST, *overrides) | {"folder": tmp_path / name}


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory, synthetic_root):
    tmp_path = tmp_path_factory.mktemp("toy")
    return run(tmp_path, "toy", f"data.root={synthetic_root}", *TOY, "callbacks.embedding.num_images=20")


@pytest.mark.slow
def test_a_contract_network_trains_and_shows_its_backbone_in_tensorboard(toy_run):
    assert toy_run["epochs"] == 2 and toy_run["test/acc"] > 0.5  # the synthetic classes are easy
    events = EventAccumulator(str(toy_run["folder"] / "tensorboard"), size_guidance={"images": 0}).Reload()
    images = set(events.Tags()["images"])
    # The views pick the backbone's convolutions: nn.Sequential names them by position.
    assert {"filters/backbone.0", "filters/backbone.3", "feature_maps/backbone.0", "feature_maps/backbone.3"} <= images
    metadata = next((toy_run["folder"] / "tensorboard").rglob("metadata.tsv")).read_text().splitlines()
    assert len(metadata) == 20  # the projector: pre_logits of 20 validation images


@pytest.mark.slow
def test_the_tools_take_a_contract_network(toy_run, tmp_path, capsys):
    checkpoint = toy_run["best_checkpoint"]
    assert type(load_task(checkpoint, "ckpt_path").net).__name__ == "ToyNet"
    evaluated = evaluate(checkpoint, {}, "cpu", "32-true")
    assert evaluated["test/acc"] == pytest.approx(toy_run["test/acc"], abs=2e-3)

    digit = tmp_path / "digit.png"
    Image.fromarray((torch.rand(40, 30) * 255).byte().numpy()).save(digit)
    (answer,) = predict(checkpoint, [str(digit)], top=2)
    assert len(answer["top"]) == 2 and 0 <= answer["top"][0][1] <= 1

    formats = export(checkpoint, ["torchscript", "torch_export"], str(tmp_path / "exported"))
    assert [result["format"] for result in formats] == ["torchscript", "torch_export"]
    assert all(result["max_abs_diff"] < 1e-4 for result in formats)

    inspect_main([*TOY, "batch_size=2"])
    table = capsys.readouterr().out
    assert table.startswith("ToyNet (") and "[2, 6, 28, 28]" in table and "[2, 10]" in table
    assert f"{sum(p.numel() for p in load_task(checkpoint, 'ckpt_path').net.parameters()):,}" in table


@pytest.mark.slow
def test_transfer_and_distillation_take_a_contract_network(toy_run, tmp_path, synthetic_root):
    checkpoint = toy_run["best_checkpoint"]
    # Transfer: the toy's backbone into a toy with another head size; the head's last layer starts fresh.
    source = load_task(checkpoint, "ckpt_path").net
    transferred = run(tmp_path, "transfer", f"data.root={synthetic_root}", *TOY, "callbacks=minimal",
                      f"tricks.init_from={checkpoint}", "tricks.freeze_conv=true", "data.num_classes=12")
    target = load_task(transferred["best_checkpoint"], "ckpt_path").net
    assert torch.equal(target.backbone[0].weight, source.backbone[0].weight)  # frozen: unchanged by training
    assert target.head[-1].out_features == 12
    # Distillation: the toy as the seed network's teacher.
    distilled = run(tmp_path, "distill", f"data.root={synthetic_root}", "+experiment=distill", "callbacks=minimal",
                    f"tricks.distill_teacher={checkpoint}")
    assert distilled["test/acc"] > 0.5
    saved = json.loads((distilled["folder"] / "metrics.json").read_text())
    assert saved["test/acc"] == distilled["test/acc"]
