"""The segmentation task: an FCN on a classifier's padded backbone, trained on digit canvases, scored by
dataset-level IoU; a classifier's backbone transfers into it."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException
from omegaconf import open_dict
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mnistlab.build import build_task
from mnistlab.callbacks.views import colour_masks
from mnistlab.config import compose_run_config
from mnistlab.data.idx import read_idx
from mnistlab.image_files import ink_band_height
from mnistlab.override_errors import one_line
from mnistlab.tasks.registry import load_datamodule, load_task
from mnistlab.tools import evaluate, inspect_model, predict

from .conftest import FAST, network, older_checkpoint, run_in_process, run_script, train_in_process

SMALL = ["task=segmentation", "data.val_size=200", "data.train_canvases=256", "data.val_canvases=64",
         "data.test_canvases=64", "data.batch_size=32", "data.eval_batch_size=64", "trainer.max_epochs=1"]


@pytest.mark.parametrize("backbone", ["mnistlab.models.SeedNet", "mnistlab.models.ResNet"])
def test_an_fcn_scores_every_pixel_from_aligned_feature_maps(backbone):
    net = network("FCN", backbone={"_target_": backbone})
    x = torch.zeros(2, 1, 64, 64)
    assert net(x).shape == (2, 11, 64, 64)
    assert net.backbone(x).shape[-2:] == (16, 16)  # padded: a quarter of the canvas, aligned with it
    assert net.pre_logits(x).shape == (2, 128)


def test_classification_tricks_are_refused_by_segmentation():
    cfg = compose_run_config(["task=segmentation", "tricks.mixup_alpha=0.2"])
    with open_dict(cfg):
        del cfg["hydra"]
    with pytest.raises(InstantiationException) as error:
        build_task(cfg)
    assert one_line(error.value).startswith("tricks.mixup_alpha=0.2: a classification trick; segmentation trains ")


@pytest.mark.slow
def test_a_segmentation_run_trains_tests_and_logs_dataset_level_iou(synthetic_root, tmp_path):
    metrics = train_in_process(tmp_path / "seg", f"data.root={synthetic_root}", *SMALL)
    assert {"test/miou", "test/miou_digits", "test/pixel_acc", "test/loss", "val/miou_best"} <= set(metrics)
    assert all(0 <= metrics[name] <= 1 for name in ("test/miou", "test/miou_digits", "test/pixel_acc"))
    events = EventAccumulator(str(tmp_path / "seg" / "tensorboard")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"val/miou", "val/miou_digits", "val/pixel_acc", "val/iou/background", "val/iou/0", "val/iou/9",
            "test/miou"} <= tags
    overlay = events.Images("val/segmentation")[-1]  # 4 canvases of 64x64 at zoom 2: input | truth | prediction
    assert (overlay.height, overlay.width) == (4 * 130 + 2, 3 * 130 + 2)
    assert events.Images("val/confusion_matrix")

    # The tools on the segmentation checkpoint: eval scores it as the run's test did, predict labels a page.
    checkpoint = metrics["best_checkpoint"]
    scored = run_in_process(evaluate.main, f"ckpt_path={checkpoint}", f"json={tmp_path / 'eval.json'}")
    assert scored.returncode == 0, scored.stderr
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert evaluated["test/miou"] == pytest.approx(metrics["test/miou"], abs=1e-4)
    assert list(evaluated["per_class_iou"]) == ["background", *map(str, range(10))]
    assert "test/miou_digits" in scored.stdout and "64 canvases (64x64)" in scored.stdout

    digits = read_idx(synthetic_root / "t10k-images-idx3-ubyte.gz").numpy()
    page = np.full((90, 252), 255, dtype=np.uint8)  # three digits, dark on white and three times as large
    for k in range(3):
        page[3:87, 3 + 82 * k : 87 + 82 * k] = 255 - np.kron(digits[k], np.ones((3, 3), dtype=np.uint8))
    Image.fromarray(page).save(tmp_path / "page.png")
    labelled = run_in_process(predict.main, f"ckpt_path={checkpoint}", f"images=[{tmp_path / 'page.png'}]",
                              f"output={tmp_path / 'masks'}")
    assert labelled.returncode == 0, labelled.stderr
    assert f"-> {tmp_path / 'masks' / 'page.mask.png'} (inverted)" in labelled.stdout
    with Image.open(tmp_path / "masks" / "page.mask.png") as mask:
        colours = {tuple(c) for c in np.asarray(mask.convert("RGB")).reshape(-1, 3)}
        assert mask.size == (252, 90)
    palette = {tuple(c) for c in (colour_masks(torch.arange(12)[None, None], 11, 11) * 255).byte()[0, :, 0].T.tolist()}
    assert colours <= palette

    # A checkpoint from before checkpoints named their task is recognised as a segmentation run's by its data.
    older = older_checkpoint(Path(checkpoint), tmp_path / "older.ckpt")
    module, data = load_task(older, "ckpt_path"), load_datamodule(older, {})
    assert type(module).__name__ == "Segmenter" and type(data).__name__ == "CanvasDataModule"
    assert float(module.val_best.compute()) == pytest.approx(metrics["val/miou_best"])


def test_the_page_scale_is_the_height_of_its_lines_of_ink():
    page = torch.zeros(100, 60)
    page[10:30, 5:50] = 1  # a line of digits 20 rows high
    page[60:84, 5:50] = 1  # another, 24 rows high
    assert ink_band_height(page) == 22 and ink_band_height(torch.zeros(8, 8)) is None


def test_a_segmentation_network_walks_its_shapes_back_to_the_canvas():
    shown = run_in_process(inspect_model.main, "task=segmentation", "batch_size=2")
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"head\.6 +Conv2d\(128, 11, 1x1\) +\[2, 11, 16, 16\]", shown.stdout)
    assert re.search(r"interpolate +\[2, 11, 64, 64\]", shown.stdout)


def test_masks_are_coloured_by_class_with_the_background_black_and_ignored_pixels_white():
    masks = torch.tensor([[[0, 1], [10, 255]]])
    colours = colour_masks(masks, num_classes=11, ignore_index=255)
    assert colours.shape == (1, 3, 2, 2)
    assert colours[0, :, 0, 0].tolist() == [0, 0, 0] and colours[0, :, 1, 1].tolist() == [1, 1, 1]
    assert len({tuple(colours[0, :, 0, 1].tolist()), tuple(colours[0, :, 1, 0].tolist())}) == 2


@pytest.mark.slow
def test_a_classifiers_backbone_transfers_into_the_fcn(synthetic_root, tmp_path):
    classifier = train_in_process(tmp_path / "cls", f"data.root={synthetic_root}", *FAST, "callbacks=minimal")
    cfg = compose_run_config(["task=segmentation", f"data.root={synthetic_root}",
                              f"tricks.init_from={classifier['best_checkpoint']}"], str(tmp_path / "seg"))
    with open_dict(cfg):
        del cfg["hydra"]
    segmenter = build_task(cfg)
    saved = torch.load(classifier["best_checkpoint"], weights_only=True)["state_dict"]
    for name in ("backbone.conv1.weight", "backbone.conv2.weight", "backbone.conv2.bias"):
        assert torch.equal(segmenter.net.state_dict()[name], saved[f"net.{name}"])

    # A classifier whose backbone is not the FCN's: one line, before anything trains.
    with open_dict(cfg):
        cfg.model.backbone = {"_target_": "mnistlab.models.ResNet"}
    with pytest.raises(InstantiationException) as error:
        build_task(cfg)
    line = one_line(error.value)
    assert line.startswith(f"tricks.init_from={classifier['best_checkpoint']}: ") and "\n" not in line
    assert "backbone" in line


def test_a_page_of_digits_is_dark_ink_on_paper_in_lines(synthetic_root, tmp_path, monkeypatch):
    page = tmp_path / "page.png"
    made = run_script(monkeypatch, "digit_page.py", str(synthetic_root / "t10k-images-idx3-ubyte.gz"),
                      str(synthetic_root / "t10k-labels-idx1-ubyte.gz"), str(page), "--lines", "3", "--per-line", "4",
                      "--zoom", "2")
    assert made.returncode == 0, made.stderr
    lines = [line.split() for line in made.stdout.splitlines()]
    assert len(lines) == 3 and all(len(line) == 4 and all(d.isdigit() for d in line) for line in lines)
    gray = torch.from_numpy(np.array(Image.open(page).convert("L"))).float()
    assert gray.shape == (2 * (3 * 37 + 9), 2 * (4 * 37 + 9))  # 28-pixel digits, 9-pixel gaps, twice as large
    assert gray[:6].mean() > 200 and gray.min() < 100  # light paper at the top edge, dark ink somewhere
    assert 0 < ink_band_height(255 - gray) <= 2 * 28  # the lines of ink are no taller than a line of digits
