"""The seed's explorations as tools (mnistlab-inspect, conv_basics) and the checkpoint tools (mnistlab-eval,
-predict, -export), run as users run them, on a real trained checkpoint: their `main` with a command line, in
process; the console scripts themselves once, in subprocesses."""

import json
import re
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from mnistlab.data.idx import read_idx
from mnistlab.data.synthetic import write_synthetic_dataset
from mnistlab.image_files import fit_to_frame
from mnistlab.tasks.registry import load_datamodule, load_task
from mnistlab.tools import conv_basics, evaluate, export, inspect_model, predict
from mnistlab.tools.conv_basics import receptive_field, true_convolution
from mnistlab.tools.inspect_model import layer_table

from .conftest import FAST, REPO, network, offline_env, older_checkpoint, run_in_process, train_in_process

TOOLS = {"mnistlab-eval": evaluate.main, "mnistlab-predict": predict.main, "mnistlab-export": export.main,
         "mnistlab-inspect": inspect_model.main}


def tool(name: str, *args: str) -> subprocess.CompletedProcess:
    """A tool with a command line, in process."""
    return run_in_process(TOOLS[name], *args)


def console_scripts(*commands: tuple[str, ...]) -> list[subprocess.CompletedProcess]:
    """Console scripts of the installed package, as a user runs them; started together, so that their start-ups
    (each imports torch) overlap."""
    started = [(command, subprocess.Popen([str(Path(sys.executable).with_name(command[0])), *command[1:]], cwd=REPO,
                                          env=offline_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True)) for command in commands]
    outputs = [(command, process.communicate(timeout=300), process.returncode) for command, process in started]
    return [subprocess.CompletedProcess(command, code, out, err) for command, (out, err), code in outputs]


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_root):
    """A finished run on the synthetic data: (its best checkpoint, its metrics.json)."""
    metrics = train_in_process(tmp_path_factory.mktemp("tools") / "run", f"data.root={synthetic_root}", *FAST,
                               "callbacks=minimal")
    return Path(metrics["best_checkpoint"]), metrics


@pytest.mark.slow
def test_console_scripts_take_hydra_overrides(trained, tmp_path):
    checkpoint, metrics = trained
    lightning_named = tmp_path / "epoch=1-step=38.ckpt"  # Lightning's own file names hold '=' in the value
    shutil.copy(checkpoint, lightning_named)
    result, typo = console_scripts(
        ("mnistlab-eval", f"ckpt_path={lightning_named}", "data=mnist", "accelerator=cpu"),
        ("mnistlab-eval", f"ckpt_path={checkpoint}", "acelerator=cpu"))
    assert result.returncode == 0, result.stderr
    assert f"test/acc    {metrics['test/acc']:.4f}" in result.stdout
    assert_one_line_error(typo, "unknown key 'acelerator'", "did you mean accelerator?")


def test_each_tool_is_an_installed_console_script_with_its_usage():
    # The processes above show that an installed script runs its main; each tool's script is installed, names that
    # main, and its --help lists the groups it takes.
    scripts = {entry.name: entry for entry in entry_points(group="console_scripts") if entry.name in TOOLS}
    assert sorted(scripts) == sorted(TOOLS)
    usages = {}
    for name, main in TOOLS.items():
        assert scripts[name].load() is main and Path(sys.executable).with_name(name).is_file(), name
        usages[name] = tool(name, "--help")
        assert usages[name].returncode == 0 and usages[name].stdout.startswith(f"{name}:"), usages[name].stdout
    assert "  data           fashion_mnist, kmnist, mnist" in usages["mnistlab-eval"].stdout
    assert re.search(r"\n  \+experiment +amp, ", usages["mnistlab-inspect"].stdout)


# --- mnistlab-inspect -----------------------------------------------------------------------------------------

def table_rows(stdout: str) -> dict[str, list[str]]:
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("layer"))
    return {line.split()[0]: line for line in lines[header + 1 :] if line.strip()}


@pytest.mark.slow
def test_inspect_walks_the_seed_shapes_with_parameter_formulas():
    result = tool("mnistlab-inspect")
    assert result.returncode == 0, result.stderr
    shapes = [line.split("[", 1)[1].split("]")[0] for line in result.stdout.splitlines() if "[64," in line]
    # The seed document's walk: [64, 1, 28, 28] -> conv1 -> relu -> pool -> conv2 -> relu -> pool -> flatten ...
    assert shapes == ["64, 1, 28, 28", "64, 20, 24, 24", "64, 20, 24, 24", "64, 20, 12, 12", "64, 50, 8, 8",
                      "64, 50, 8, 8", "64, 50, 4, 4", "64, 800", "64, 500", "64, 500", "64, 10"]
    rows = table_rows(result.stdout)
    net = network("SeedNet")
    conv1 = net.backbone.conv1.weight
    assert f"{conv1.shape[0]} x {conv1.shape[1]} x 5 x 5 + {conv1.shape[0]}" in rows["backbone.conv1"]
    assert f"{net.backbone.conv1.weight.numel() + net.backbone.conv1.bias.numel():,}" in rows["backbone.conv1"]
    assert f"{sum(p.numel() for p in net.parameters()):,}" in rows["total"]


@pytest.mark.parametrize("settings", [{}, {"batch_norm": True}, {"downsample": "stride"}, {"kernel_size": 3},
                                      {"dilation": 2}])
def test_inspect_counts_match_torch_parameters_and_flop_counter(settings):
    net = network("SeedNet", **settings)
    _, params, macs = layer_table(net, batch_size=1)
    assert params == sum(p.numel() for p in net.parameters())
    with FlopCounterMode(display=False) as counter:  # torch's own count: 2 FLOPs per multiply-add
        net.eval()(torch.zeros(1, *net.input_shape))
    assert 2 * macs == counter.get_total_flops()


def test_inspect_stride_and_pool_variants_have_the_same_shapes():
    pool, _, _ = layer_table(network("SeedNet", downsample="pool"), 4)
    stride, _, _ = layer_table(network("SeedNet", downsample="stride"), 4)
    # A stride-2 conv gives what conv + max-pool gives, and fc1's input is the same 800 features.
    pooled = [shape for _, name, shape, *_ in pool if name.startswith("MaxPool2d")]
    strided = [shape for layer, _, shape, *_ in stride if layer.startswith("backbone.conv")]
    assert pooled == strided == [[4, 20, 12, 12], [4, 50, 4, 4]]
    tail = [[shape for _, name, shape, *_ in rows if name == "Flatten" or name.startswith("Linear")]
            for rows in (pool, stride)]
    assert tail[0] == tail[1] == [[4, 800], [4, 500], [4, 10]]


@pytest.mark.slow
def test_inspect_takes_train_overrides_and_rejects_bad_ones():
    result = tool("mnistlab-inspect", "model.downsample=stride", "model.batch_norm=true", "batch_size=8")
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout)
    assert "stride=2" in rows["backbone.conv1"] and "[8, 20, 12, 12]" in rows["backbone.conv1"]
    assert "BatchNorm2d(20)" in rows["backbone.bn1"]
    assert "500 x 800 " in rows["head.fc1"] and "+ 500" not in rows["head.fc1"]  # fc1 lost its bias to BatchNorm
    assert_one_line_error(tool("mnistlab-inspect", "model.downsample=avg"), "model.downsample='avg'", "pool, stride")
    assert_one_line_error(tool("mnistlab-inspect", "model.kernel_siz=3"), "model.kernel_siz")


# --- conv_basics ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_conv_basics_runs_the_seed_demos_on_a_real_image(tmp_path, synthetic_root):
    out = tmp_path / "figures"
    result = run_in_process(conv_basics.main, "--data-root", str(synthetic_root), "--out", str(out))
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "output  [2, 1, 1]" in text  # conv1d: width 2 - 2 + 1
    assert "padding=1 -> output [1, 1, 28, 28]" in text
    # Equal up to float rounding: oneDNN's convolution sums in another order than the definition does.
    flipped = re.search(r"max \|F\.conv2d\(x, flip\(k\)\) - convolution\(x, k\)\|\s+= (\S+)", text)
    assert flipped and float(flipped.group(1)) < 1e-5, text
    unflipped = re.search(r"max \|F\.conv2d\(x, k\) - convolution\(x, k\)\|\s+= (\S+)", text)
    assert unflipped and float(unflipped.group(1)) > 0.01, text
    assert "same shape: True; same values: False" in text
    assert "dilation 2: 5x5 window, 9 pixels used" in text
    assert "[10, 5, 2, 2] = 200, [10] = 10; total 210" in text
    with Image.open(out / "conv2d_edge.png") as png:
        assert png.size[0] > png.size[1] > 100  # two panels side by side


def test_conv_basics_math():
    image, kernel = torch.randn(7, 6), torch.randn(3, 2)
    flipped = F.conv2d(image[None, None], kernel.flip(0, 1)[None, None])[0, 0]
    assert torch.allclose(true_convolution(image, kernel), flipped, atol=1e-6)
    assert not torch.allclose(true_convolution(image, kernel), F.conv2d(image[None, None], kernel[None, None])[0, 0])
    seen = receptive_field(3, 2)
    assert seen.shape == (5, 5) and seen.sum() == 9 and seen[::2, ::2].all()


@pytest.mark.slow
def test_conv_basics_without_images_is_one_line(tmp_path):
    result = run_in_process(conv_basics.main, "--data-root", str(tmp_path))
    assert_one_line_error(result, str(tmp_path), "t10k-images-idx3-ubyte")


# --- mnistlab-eval --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_eval_reproduces_the_metrics_training_reported(trained, tmp_path):
    checkpoint, metrics = trained
    out = tmp_path / "eval.json"
    result = tool("mnistlab-eval", f"ckpt_path={checkpoint}", f"json={out}")
    assert result.returncode == 0, result.stderr
    evaluated = json.loads(out.read_text())
    assert abs(evaluated["test/acc"] - metrics["test/acc"]) < 1e-3
    assert abs(evaluated["test/loss"] - metrics["test/loss"]) < 1e-3
    assert evaluated["images"] == 300 and list(evaluated["per_class_acc"]) == [str(d) for d in range(10)]
    assert f"test/acc    {evaluated['test/acc']:.4f}" in result.stdout


@pytest.mark.slow
def test_eval_on_another_folder_needs_only_its_test_files(trained, tmp_path):
    checkpoint, _ = trained
    other = write_synthetic_dataset(tmp_path / "other", n_train=10, n_test=120, seed=7)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (other / name).unlink()
    result = tool("mnistlab-eval", f"ckpt_path={checkpoint}", f"data.root={other}", f"json={tmp_path / 'e.json'}")
    assert result.returncode == 0, result.stderr
    evaluated = json.loads((tmp_path / "e.json").read_text())
    labels = read_idx(other / "t10k-labels-idx1-ubyte.gz")
    per_class = evaluated["per_class_acc"]
    weighted = sum(per_class[str(c)] * int((labels == c).sum()) for c in range(10)) / len(labels)
    assert evaluated["images"] == 120 and abs(weighted - evaluated["test/acc"]) < 1e-4


@pytest.mark.slow
def test_an_older_checkpoint_loads_as_a_classifier_and_resumes_with_its_best_so_far(trained, tmp_path, synthetic_root):
    checkpoint, metrics = trained
    older = older_checkpoint(checkpoint, tmp_path / "older.ckpt")
    module, data = load_task(older, "ckpt_path"), load_datamodule(older, {})
    assert type(module).__name__ == "Classifier" and type(data).__name__ == "MNISTDataModule"
    assert float(module.val_best.compute()) == pytest.approx(metrics["val/acc_best"])
    resumed = train_in_process(tmp_path / "resumed", f"data.root={synthetic_root}", *FAST, "callbacks=minimal",
                               f"ckpt_path={older}", "trainer.max_epochs=3")
    assert resumed["epochs"] == 3 and resumed["val/acc_best"] >= metrics["val/acc_best"]


@pytest.mark.slow
def test_eval_takes_a_data_group_choice_as_train_py_does(trained, tmp_path, synthetic_root):
    checkpoint, _ = trained
    out = tmp_path / "fashion.json"
    result = tool("mnistlab-eval", f"ckpt_path={checkpoint}", "data=fashion_mnist", f"data.root={synthetic_root}",
                  f"json={out}")
    assert result.returncode == 0, result.stderr
    evaluated = json.loads(out.read_text())
    assert evaluated["dataset"] == "fashion_mnist" and evaluated["root"] == str(synthetic_root)
    assert list(evaluated["per_class_acc"])[:2] == ["T-shirt/top", "Trouser"]
    assert_one_line_error(tool("mnistlab-eval", f"ckpt_path={checkpoint}", "data=emnist"),
                          "unknown data 'emnist' (override data=emnist); choose one of: fashion_mnist, kmnist, mnist")


@pytest.mark.slow
def test_eval_scores_a_list_of_checkpoints_as_their_ensemble(trained, tmp_path):
    checkpoint, _ = trained
    saved = torch.load(checkpoint, weights_only=True)
    torch.manual_seed(0)
    saved["state_dict"] = {name: tensor + 0.05 * torch.randn_like(tensor) if name.startswith("net.head.") else tensor
                           for name, tensor in saved["state_dict"].items()}
    other = tmp_path / "other.ckpt"
    torch.save(saved, other)
    out = tmp_path / "ensemble.json"
    result = tool("mnistlab-eval", f"ckpt_path=[{checkpoint},{other}]", "precision=32-true", f"json={out}")
    assert result.returncode == 0, result.stderr
    evaluated = json.loads(out.read_text())
    members = [load_task(path, "ckpt_path").eval() for path in (checkpoint, other)]
    data = load_datamodule(checkpoint, {})
    data.setup("test")
    x, y = (torch.cat(parts) for parts in zip(*data.test_dataloader(), strict=True))
    with torch.no_grad():
        logits = (members[0](x) + members[1](x)) / 2
    assert evaluated["test/acc"] == pytest.approx((logits.argmax(1) == y).float().mean().item(), abs=1e-6)
    assert evaluated["test/loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-4)
    assert evaluated["checkpoint"] == [str(checkpoint), str(other)]
    assert f"checkpoint  the ensemble of {checkpoint}, {other}" in result.stdout
    assert_one_line_error(tool("mnistlab-eval", "ckpt_path=[]"), "ckpt_path=[]", "a list [A,B,...]")
    saved["datamodule_hyper_parameters"]["mean"] = 0.5  # another normalisation than the first member's
    renormalised = tmp_path / "renormalised.ckpt"
    torch.save(saved, renormalised)
    assert_one_line_error(tool("mnistlab-eval", f"ckpt_path=[{checkpoint},{renormalised}]"), str(renormalised),
                          "mean 0.5", "an ensemble's members must share their data")
    alone = tool("mnistlab-eval", f"ckpt_path=[{checkpoint}]")
    assert alone.returncode == 0 and f"checkpoint  {checkpoint}\n" in alone.stdout


@pytest.mark.slow
def test_eval_bad_checkpoints_are_one_line(trained, tmp_path):
    checkpoint, _ = trained
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(checkpoint.read_bytes()[:4000])
    mismatched = tmp_path / "mismatched.ckpt"
    saved = torch.load(checkpoint, weights_only=True)
    saved["hyper_parameters"]["model"]["hidden"] = 400  # weights of a 500-unit fc1 under a 400-unit config
    torch.save(saved, mismatched)
    assert_one_line_error(tool("mnistlab-eval", f"ckpt_path={tmp_path / 'none.ckpt'}"), "none.ckpt",
                          "no such checkpoint file")
    assert_one_line_error(tool("mnistlab-eval", f"ckpt_path={truncated}"), str(truncated), "corrupt")
    assert_one_line_error(tool("mnistlab-eval", f"ckpt_path={mismatched}"), str(mismatched),
                          "do not fit the model config", "head.fc1.weight")
    assert_one_line_error(tool("mnistlab-eval", f"ckpt_path={checkpoint}", "data.image_size=32"),
                          "takes 1x28x28 images", "1x32x32")
    assert_one_line_error(tool("mnistlab-eval", f"ckpt_path={checkpoint}", "data.rot=x"), "'data.rot'",
                          "data.root")
    assert_one_line_error(tool("mnistlab-eval"), "missing ckpt_path")


# --- mnistlab-predict -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_predict_reads_any_size_and_polarity(trained, synthetic_root, tmp_path):
    checkpoint, _ = trained
    images = read_idx(synthetic_root / "t10k-images-idx3-ubyte.gz")[:4].numpy()
    labels = read_idx(synthetic_root / "t10k-labels-idx1-ubyte.gz")[:4].tolist()
    paths = []
    for i, image in enumerate(images):
        picture = Image.fromarray(image).resize((84, 84), Image.NEAREST)
        if i % 2:  # dark ink on a light background, as a colour JPEG
            picture = Image.fromarray(255 - np.asarray(picture)).convert("RGB")
        paths.append(tmp_path / f"image{i}.{'jpg' if i % 2 else 'png'}")
        picture.save(paths[-1], quality=95)
    result = tool("mnistlab-predict", f"ckpt_path={checkpoint}", f"images=[{','.join(map(str, paths))}]",
                  "fit=whole")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 4
    for line, path, label in zip(lines, paths, labels, strict=True):
        fields = line.split()
        assert fields[0] == str(path) and fields[1] == str(label), line  # the top class is the true one
        probabilities = [float(p.rstrip("%")) for p in fields[2:8:2]]
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 100.05
        assert line.endswith("(inverted)") == path.name.endswith(".jpg")


def test_fit_to_frame_centres_the_ink_like_mnist():
    canvas = torch.zeros(100, 140)
    canvas[10:60, 20:45] = 1.0  # a 50 x 25 blob off-centre in a larger image
    framed = fit_to_frame(canvas, 28, 20 / 28)
    rows, cols = (framed > 0.5).any(1).nonzero()[:, 0], (framed > 0.5).any(0).nonzero()[:, 0]
    assert framed.shape == (28, 28)
    assert (int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)) == (20, 10)  # 50 x 25 scaled to 20 x 10
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    centre = (float((ys * framed).sum() / framed.sum()), float((xs * framed).sum() / framed.sum()))
    assert abs(centre[0] - 13.5) <= 0.5 and abs(centre[1] - 13.5) <= 0.5


@pytest.mark.slow
def test_predict_bad_images_are_one_line(trained, tmp_path):
    checkpoint, _ = trained
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    assert_one_line_error(tool("mnistlab-predict", f"ckpt_path={checkpoint}", f"images=[{broken}]"),
                          str(broken), "cannot decode")
    assert_one_line_error(tool("mnistlab-predict", f"ckpt_path={checkpoint}", "images=[]"), "images=[]")
    assert_one_line_error(tool("mnistlab-predict", f"ckpt_path={checkpoint}", f"images={tmp_path / 'no.png'}"),
                          "no.png", "no such file")


# --- mnistlab-export ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_export_round_trips_every_format(trained, tmp_path):
    checkpoint, _ = trained
    result = tool("mnistlab-export", f"ckpt_path={checkpoint}", f"out={tmp_path}")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 3
    import onnxruntime

    module, data = load_task(checkpoint, "ckpt_path").eval(), load_datamodule(checkpoint, {})
    pixels = torch.rand(5, 1, 28, 28)  # a batch size other than the one traced
    with torch.no_grad():
        expected = module(data.normalize(pixels * 255))
    session = onnxruntime.InferenceSession(str(tmp_path / f"{checkpoint.stem}.onnx"))
    outputs = {
        "onnx": torch.from_numpy(session.run(None, {"pixels": pixels.numpy()})[0]),
        "torchscript": torch.jit.load(str(tmp_path / f"{checkpoint.stem}.torchscript.pt"))(pixels),
        "torch_export": torch.export.load(tmp_path / f"{checkpoint.stem}.pt2").module()(pixels),
    }
    for name, logits in outputs.items():
        assert logits.shape == (5, 10) and torch.allclose(logits, expected, atol=1e-4), name


@pytest.mark.slow
def test_export_rejects_unknown_formats(trained):
    checkpoint, _ = trained
    assert_one_line_error(tool("mnistlab-export", f"ckpt_path={checkpoint}", "formats=[tflite]"), "tflite",
                          "onnx, torchscript, torch_export")
