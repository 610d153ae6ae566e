"""The task contract: a toy task (tests/toy_task.py, where in a frame is the digit?) with its own config group
(tests/configs), which no mnistlab module names, goes through training, evaluation, prediction, export, inspection
and the benchmark, with no change in src/."""

import json

import pytest
import torch
from PIL import Image

from mnistlab.errors import ConfigError
from mnistlab.tasks.registry import load_datamodule, load_task
from mnistlab.tools.benchmark import main as bench_main
from mnistlab.tools.evaluate import evaluate
from mnistlab.tools.evaluate import main as evaluate_main
from mnistlab.tools.export import export
from mnistlab.tools.inspect_model import main as inspect_main
from mnistlab.tools.predict import main as predict_main

from .conftest import FAST, REPO, run_in_process, train_in_process

PLACE = [f"hydra.searchpath=[file://{REPO / 'tests' / 'configs'}]", "task=place"]


@pytest.fixture(scope="module")
def place_run(tmp_path_factory, synthetic_root):
    folder = tmp_path_factory.mktemp("place") / "run"
    return train_in_process(folder, *PLACE, f"data.root={synthetic_root}", *FAST, "trainer.max_epochs=3") | {
        "folder": folder}


@pytest.mark.slow
def test_a_task_of_its_own_trains_and_its_checkpoint_names_it(place_run):
    metrics = json.loads((place_run["folder"] / "metrics.json").read_text())
    room = 40 - 28
    # Guessing the middle of the room is off by room/4 = 3 pixels a coordinate on average: the network does better.
    assert metrics["test/mae"] == place_run["test/mae"] and 0 < metrics["test/mae"] < room / 4
    saved = torch.load(place_run["best_checkpoint"], map_location="cpu", weights_only=True)
    assert saved["mnistlab"]["task"] == "tests.toy_task.PlaceTask"
    assert saved["mnistlab"]["data"] == "tests.toy_task.FramedDigits"
    checkpoint = place_run["best_checkpoint"]
    module, data = load_task(checkpoint, "ckpt_path"), load_datamodule(checkpoint, {})
    assert type(module).__name__ == "PlaceTask" and type(data).__name__ == "FramedDigits" and data.frame_size == 40


@pytest.mark.slow
def test_the_tools_ask_the_task(place_run, tmp_path, capsys):
    checkpoint = str(place_run["best_checkpoint"])
    evaluated = evaluate(checkpoint, {}, "cpu", "32-true")
    assert evaluated["test/mae"] == pytest.approx(place_run["test/mae"], abs=0.05)
    shown = run_in_process(evaluate_main, f"ckpt_path={checkpoint}", "accelerator=cpu")
    assert shown.returncode == 0, shown.stderr
    assert f"\ntest/mae    {evaluated['test/mae']:.2f} pixels\n" in shown.stdout  # the task's rows, in eval's columns
    assert "framed digits of mnist" in shown.stdout
    ensemble = run_in_process(evaluate_main, f"ckpt_path=[{checkpoint},{checkpoint}]", "accelerator=cpu")
    assert ensemble.returncode == 2 and "PlaceTask checkpoints are not scored as an ensemble" in ensemble.stderr

    image = tmp_path / "framed.png"
    frame = torch.zeros(40, 40)
    frame[12:32, 4:24] = 1.0  # a bright square towards the left
    Image.fromarray((frame * 255).byte().numpy()).save(image)
    predicted = run_in_process(predict_main, f"ckpt_path={checkpoint}", f"images=[{image}]")
    assert predicted.returncode == 0, predicted.stderr
    assert predicted.stdout.startswith(f"{image}  digit at row ")

    (exported,) = export(checkpoint, ["torchscript"], str(tmp_path / "exported"))
    assert exported["max_abs_diff"] < 1e-4

    inspect_main([*PLACE, "batch_size=2"])
    table = capsys.readouterr().out
    assert table.startswith("ToyNet (") and "[2, 1, 40, 40]" in table and "[2, 2]" in table


@pytest.mark.slow
def test_the_benchmark_times_the_task_against_a_plain_loop_of_its_own(synthetic_root, tmp_path):
    out = tmp_path / "place.json"
    result = run_in_process(bench_main, "--data-root", str(synthetic_root), "--train-images", "600", "--val-size",
                            "200", "--repeats", "1", "--batch-sizes", "32", "--json", str(out), *PLACE)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "400 framed digits, 200 validation" in result.stdout
    (row,) = json.loads(out.read_text())["batch_sweep"]
    assert row["steps"] == 400 // 32 and all(t > 0 for t in (row["a2_seconds"], row["b_seconds"]))


@pytest.mark.slow
def test_a_checkpoint_names_only_known_tasks_and_their_data_modules(place_run, tmp_path):
    saved = torch.load(place_run["best_checkpoint"], map_location="cpu", weights_only=True)
    canvases = "mnistlab.data.canvas.CanvasDataModule"  # a real data module, but not the toy task's
    for key, named, expected in (
            ("task", "os.system", "its task 'os.system' is not a known mnistlab task, and nothing of it ran"),
            ("data", canvases, f"its data module '{canvases}' is not tests.toy_task.FramedDigits or an imported "
                               "subclass")):
        hostile = tmp_path / f"{key}.ckpt"
        torch.save({**saved, "mnistlab": {**saved["mnistlab"], key: named}}, hostile)
        with pytest.raises(ConfigError) as caught:
            load_task(hostile, "ckpt_path") if key == "task" else load_datamodule(hostile, {})
        assert str(caught.value).startswith(f"ckpt_path={hostile}: {expected}")
