"""Write a checkpoint's conv filters and feature maps as PNG files (the pictures TensorBoard shows, for a README).

    python scripts/plot_filters.py logs/default/runs/<time>/checkpoints/last.ckpt --out docs/images

The feature maps need images: by default the first validation images of the run's own dataset (its settings are
saved in the checkpoint); --data-root and --dataset point elsewhere.
"""

import argparse
import sys
from pathlib import Path

from torchvision.utils import save_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mnistlab.callbacks.views import backbone_convolutions, feature_map_grids, filter_grids
from mnistlab.errors import MnistlabError
from mnistlab.tasks.registry import load_datamodule, load_task


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
        net = load_task(args.checkpoint, "checkpoint").net
        overrides = {"data.root": args.data_root, "data.name": args.dataset}
        data = load_datamodule(args.checkpoint, {key: value for key, value in overrides.items() if value})
        data.setup()
        images, _ = data.first_images("val", args.images)
    except MnistlabError as err:
        sys.exit(f"error: {err}")
    args.out.mkdir(parents=True, exist_ok=True)
    layers = backbone_convolutions(net)
    pictures = {f"filters_{name.replace('.', '_')}": grid
                for name, grid in filter_grids(net, layers, args.zoom).items()}
    pictures |= {f"feature_maps_{name.replace('.', '_')}": grid
                 for name, grid in feature_map_grids(net, images, layers, max(1, args.zoom // 2)).items()}
    for stem, grid in pictures.items():
        path = args.out / f"{stem}.png"
        save_image(grid, path)
        print(f"{path}  {grid.shape[2]}x{grid.shape[1]}")


if __name__ == "__main__":
    main()
