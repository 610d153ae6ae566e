"""Write a checkpoint's conv filters and feature maps as PNG files (the pictures TensorBoard shows, for a README).

    python scripts/plot_filters.py logs/default/runs/<time>/checkpoints/last.ckpt --out docs/images

The feature maps need images: by default the first validation images of the run's own dataset, found through
the run folder's .hydra/config.yaml; --data-root and --dataset point elsewhere.
"""

import argparse
import sys
from pathlib import Path

from omegaconf import OmegaConf
from torchvision.utils import save_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mnistlab.data import MNISTDataModule
from mnistlab.errors import MnistlabError
from mnistlab.inspection import feature_map_grids, filter_grids
from mnistlab.module import load_classifier


def data_settings(checkpoint: Path, root: str | None, dataset: str | None) -> dict:
    """The run's data config (when the checkpoint sits in a run folder), with --data-root/--dataset on top."""
    config_file = checkpoint.resolve().parents[1] / ".hydra" / "config.yaml"
    settings = {}
    if config_file.is_file():
        data = OmegaConf.to_container(OmegaConf.load(config_file).data)
        settings = {k: v for k, v in data.items() if k in ("name", "root", "mean", "std", "val_size")}
    if root:
        settings["root"] = root
    if dataset:
        settings["name"] = dataset
    if "root" not in settings:
        raise MnistlabError(f"{checkpoint}: not inside a run folder (no {config_file}); pass --data-root DIR")
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--out", type=Path, default=Path("figures"), help="folder for the PNG files")
    parser.add_argument("--data-root", help="folder with the IDX files (default: the run's data.root)")
    parser.add_argument("--dataset", help="mnist, fashion_mnist or kmnist (default: the run's)")
    parser.add_argument("--images", type=int, default=4, help="validation images for the feature maps")
    parser.add_argument("--zoom", type=int, default=8, help="pixels per weight / activation")
    args = parser.parse_args()
    try:
        net = load_classifier(args.checkpoint, "checkpoint").net
        settings = data_settings(args.checkpoint, args.data_root, args.dataset)
        data = MNISTDataModule(download=False, **settings)
        data.setup()
        images, _ = data.first_images("val", args.images)
    except MnistlabError as err:
        sys.exit(f"error: {err}")
    args.out.mkdir(parents=True, exist_ok=True)
    layers = ("conv1", "conv2")
    pictures = {f"filters_{name}": grid for name, grid in filter_grids(net, layers, args.zoom).items()}
    pictures |= {f"feature_maps_{name}": grid
                 for name, grid in feature_map_grids(net, images, layers, max(1, args.zoom // 2)).items()}
    for stem, grid in pictures.items():
        path = args.out / f"{stem}.png"
        save_image(grid, path)
        print(f"{path}  {grid.shape[2]}x{grid.shape[1]}")


if __name__ == "__main__":
    main()
