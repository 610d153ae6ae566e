"""mnistlab-inspect: the seed document's shape walk for any model config. Each layer's output shape for a batch,
its parameter count with the formula, and the multiply-adds per image.

    mnistlab-inspect
    mnistlab-inspect model.downsample=stride model.batch_norm=true --batch-size 64
    mnistlab-inspect +experiment=kernel3

The arguments are `python train.py` overrides; the network is traced with torch.fx and the shapes are
propagated through it, so the table always matches the code.
"""

import argparse
import sys

import torch
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from mnistlab.config import CONFIG_DIR, one_line, unknown_choice
from mnistlab.errors import MnistlabError


def describe(module: nn.Module) -> tuple[str, str, int, int]:
    """(name, parameter formula, parameter count, multiply-adds per output element) of a layer."""
    if isinstance(module, nn.Conv2d):
        out, into, (kh, kw) = module.out_channels, module.in_channels // module.groups, module.kernel_size
        extras = "".join(f", {key}={value[0]}" for key, value in (("stride", module.stride),
                                                                    ("dilation", module.dilation)) if value[0] != 1)
        bias = f" + {out}" if module.bias is not None else ""
        return f"Conv2d({module.in_channels}, {out}, {kh}x{kw}{extras})", f"{out} x {into} x {kh} x {kw}{bias}", \
            out * into * kh * kw + (out if bias else 0), into * kh * kw
    if isinstance(module, nn.Linear):
        bias = f" + {module.out_features}" if module.bias is not None else ""
        count = module.out_features * module.in_features + (module.out_features if bias else 0)
        return (f"Linear({module.in_features}, {module.out_features})",
                f"{module.out_features} x {module.in_features}{bias}", count, module.in_features)
    if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
        return f"{type(module).__name__}({module.num_features})", f"2 x {module.num_features} (gamma, beta)", \
            2 * module.num_features, 0
    if isinstance(module, nn.MaxPool2d):
        return f"MaxPool2d({module.kernel_size})", "", 0, 0
    return type(module).__name__, "", sum(p.numel() for p in module.parameters()), 0


def layer_table(net: nn.Module, batch_size: int) -> tuple[list[tuple], int, int]:
    """Rows (layer, module, output shape, parameters, formula, mult-adds per image), total parameters and
    total multiply-adds per image, from a torch.fx trace of `net` fed a [batch, *input_shape] batch."""
    graph = fx.symbolic_trace(net.eval())
    ShapeProp(graph).propagate(torch.zeros(batch_size, *net.input_shape))
    rows, total_params, total_macs = [], 0, 0
    for node in graph.graph.nodes:
        if node.op == "output":
            continue
        shape = list(node.meta["tensor_meta"].shape)
        if node.op == "call_module":
            module = graph.get_submodule(node.target)
            if isinstance(module, nn.Identity):
                continue  # a switched-off BatchNorm or dropout
            name, formula, params, macs_per_output = describe(module)
            macs = macs_per_output * (torch.Size(shape).numel() // batch_size)
            # A module called twice (the shared max-pool) owns its parameters once.
            params = params if node.target not in {row[0] for row in rows} else 0
        else:
            name, formula, params, macs = ("input" if node.op == "placeholder" else node.name.split("_")[0]), "", 0, 0
        rows.append((str(node.target) if node.op == "call_module" else "", name, shape, params, formula, macs))
        total_params, total_macs = total_params + params, total_macs + macs
    return rows, total_params, total_macs


HEADER = ("layer", "module", "output shape", "parameters", "formula", "mult-adds/image")
RIGHT_ALIGNED = (3, 5)


def render(rows: list[tuple], total_params: int, total_macs: int) -> str:
    lines = [(layer, name, str(shape), f"{params:,}" if params else "", formula, f"{macs:,}" if macs else "")
             for layer, name, shape, params, formula, macs in rows]
    lines.append(("total", "", "", f"{total_params:,}", "", f"{total_macs:,}"))
    widths = [max(len(row[i]) for row in [HEADER, *lines]) for i in range(len(HEADER))]
    return "\n".join("  ".join(cell.rjust(w) if i in RIGHT_ALIGNED else cell.ljust(w)
                               for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
                     for row in [HEADER, *lines])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="train.py overrides, e.g. model.batch_norm=true")
    parser.add_argument("--batch-size", type=int, default=64, help="the batch whose shapes are shown (default 64)")
    args = parser.parse_args(argv)
    try:
        problem = unknown_choice(args.overrides)
        if problem:
            raise MnistlabError(problem)
        if args.batch_size < 1:
            raise MnistlabError(f"--batch-size {args.batch_size} must be at least 1")
        try:
            with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
                cfg = compose("train", overrides=args.overrides)
            model = OmegaConf.to_container(cfg.model, resolve=True)
            net = instantiate(model)
        except HydraException as err:
            raise MnistlabError(one_line(err)) from None
    except MnistlabError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    settings = " ".join(f"{key}={value}" for key, value in model.items() if key != "_target_")
    print(f"{type(net).__name__} ({settings}), a batch of {args.batch_size}\n")
    print(render(*layer_table(net, args.batch_size)))
