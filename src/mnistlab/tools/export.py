"""mnistlab-export: a checkpoint as ONNX, TorchScript and torch.export files, each checked against PyTorch.

    mnistlab-export ckpt_path=CKPT                               # every format, beside the checkpoint
    mnistlab-export ckpt_path=CKPT formats=[onnx] out=deploy/

The exported model takes pixels in [0, 1] shaped [N, 1, 28, 28] (any N) and returns the class logits: the
training set's standardisation is built in, so a deployment needs no mean or std. ONNX needs the `export`
extra (pip install 'mnistlab[export]': onnx, onnxscript, and onnxruntime for the check).
"""

import contextlib
import io
import warnings
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from mnistlab.checkpoints import load_network
from mnistlab.errors import ConfigError
from mnistlab.tasks.registry import load_datamodule
from mnistlab.tools.cli import run_tool

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "torch_export": ".pt2"}


class PixelClassifier(nn.Module):
    """The network with the dataset's standardisation in front: [N, C, H, W] pixels in [0, 1] -> logits."""

    def __init__(self, net: nn.Module, mean: float, std: float):
        super().__init__()
        self.net, self.mean, self.std = net, mean, std

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net((pixels - self.mean) / self.std)


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    try:
        import onnx  # noqa: F401  (torch.onnx needs onnx and onnxscript; say so before it fails deep inside)
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ConfigError(f"formats=[onnx] needs the export extra: pip install 'mnistlab[export]' ({err})") from None
    batch = torch.export.Dim("batch")
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates each of its passes
        torch.onnx.export(model, (example,), path, dynamo=True, external_data=False, input_names=["pixels"],
                          output_names=["logits"], dynamic_shapes={"pixels": {0: batch}})


def run_onnx(path: Path, pixels: torch.Tensor) -> torch.Tensor | None:
    """The ONNX file's output under onnxruntime, or None when onnxruntime is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"pixels": pixels.numpy()})[0])


def export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch deprecates TorchScript; C++ runtimes still load it
        torch.jit.save(torch.jit.trace(model, example), str(path))


def run_torchscript(path: Path, pixels: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path))(pixels)


def export_program(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    program = torch.export.export(model, (example,), dynamic_shapes={"pixels": {0: torch.export.Dim("batch")}})
    torch.export.save(program, path)


def run_program(path: Path, pixels: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No complete tensor found")  # torch.export.load's CPU notice
        return torch.export.load(path).module()(pixels)


EXPORTERS = {"onnx": (export_onnx, run_onnx), "torchscript": (export_torchscript, run_torchscript),
             "torch_export": (export_program, run_program)}


def export(checkpoint: str, formats: list[str], out: str = "") -> list[dict]:
    """Write each format and compare its logits with the PyTorch model's on a batch of 7 random images."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ConfigError(f"formats={formats}: choose from {', '.join(FORMATS)}")
    if out and Path(out).exists() and not Path(out).is_dir():
        raise ConfigError(f"out={out}: that is a file; give the folder to write the exported files into")
    net = load_network(checkpoint, "ckpt_path")
    data = load_datamodule(checkpoint, {})
    model = PixelClassifier(net, data.mean, data.std).eval()
    shape = net.input_shape
    example, check = torch.rand(2, *shape), torch.rand(7, *shape, generator=torch.Generator().manual_seed(0))
    folder = Path(out) if out else Path(checkpoint).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"out={folder}: cannot make that folder ({err.strerror or err})") from None
    with torch.no_grad():
        expected = model(check)
    results = []
    for name in formats:
        write, run = EXPORTERS[name]
        path = folder / (Path(checkpoint).stem + FORMATS[name])
        write(model, example, path)
        with torch.no_grad():
            got = run(path, check)
        difference = None if got is None else float((got - expected).abs().max())
        results.append({"format": name, "path": str(path), "bytes": path.stat().st_size, "max_abs_diff": difference})
    return results


def export_command(cfg: DictConfig, _args: list[str]) -> None:
    formats = list(cfg.formats) if OmegaConf.is_list(cfg.formats) else [str(cfg.formats)]
    for row in export(cfg.ckpt_path, formats, cfg.out or ""):
        check = ("not checked: onnxruntime is not installed" if row["max_abs_diff"] is None
                 else f"max |logit difference| vs PyTorch {row['max_abs_diff']:.1e} on 7 images")
        print(f"{row['format']:<13} {row['path']}  ({row['bytes'] / 1e6:.1f} MB; {check})")


def main(argv: list[str] | None = None) -> None:
    run_tool(export_command, "export", __doc__, argv)
