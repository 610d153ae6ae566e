"""mnistlab-inspect: the seed document's shape walk for any model config. Each layer's output shape for a batch,
its parameter count with the formula, and the multiply-adds per image.

    mnistlab-inspect
    mnistlab-inspect model.downsample=stride model.batch_norm=true batch_size=64
    mnistlab-inspect +experiment=kernel3

The arguments are `python train.py` overrides (configs/inspect.yaml adds batch_size); the network is traced
with torch.fx and the shapes are propagated through it, so the table always matches the code.
"""

import torch
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from mnistlab.errors import ConfigError
from mnistlab.models.registry import build_config_network
from mnistlab.override_errors import one_line
from mnistlab.tools.cli import run_tool


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
        meta = node.meta.get("tensor_meta")
        if node.op == "output" or not hasattr(meta, "shape"):
            continue  # the result, or shape bookkeeping (an FCN reads its input's size to upsample to it)
        shape = list(meta.shape)
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


def inspect_command(cfg: DictConfig, _args: list[str]) -> None:
    if cfg.batch_size < 1:
        raise ConfigError(f"batch_size={cfg.batch_size} must be at least 1")
    try:
        model = OmegaConf.to_container(cfg.model, resolve=True)
        net = build_config_network(model)
    except HydraException as err:
        raise ConfigError(one_line(err)) from None
    settings = " ".join(f"{key}={value}" for key, value in model.items() if key != "_target_")
    print(f"{type(net).__name__} ({settings}), a batch of {cfg.batch_size}\n")
    print(render(*layer_table(net, cfg.batch_size)))


def main(argv: list[str] | None = None) -> None:
    run_tool(inspect_command, "inspect", __doc__, argv)
