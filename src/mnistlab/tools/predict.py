"""mnistlab-predict: what a trained network makes of image files of any size and format, as its task renders it: a
classifier's top classes, a segmentation network's colour mask of each pixel's class.

    mnistlab-predict ckpt_path=CKPT images=[seven.png,shoe.jpg]
    mnistlab-predict ckpt_path=CKPT images=[scan.png] invert=false top=5
    mnistlab-predict ckpt_path=CKPT images=[crop.png] fit=whole
    mnistlab-predict ckpt_path=SEGMENTATION_CKPT images=[page.jpg] output=masks    # masks/page.mask.png

Each image becomes what the network was trained on: grayscale, light ink on a dark background (MNIST's
polarity; `invert=auto` flips images whose border is bright, `true`/`false` force it), cropped to its ink and
scaled into the frame as the dataset was built (MNIST: a 20x20 box centred by centre of mass in 28x28;
Fashion-MNIST and KMNIST: the whole frame), then standardised with the training set's mean and std.
`fit=whole` skips the cropping and resizes the whole image, for images already framed like the dataset's.

A segmentation network labels a whole page: the image, made light-on-dark the same way, is scaled so that its
digits are as tall as the training digits (`digit_height=auto` measures them: the median height of the bands
of rows that hold ink, one band per line of digits; or give their height in pixels), labelled, and the labels
scaled back to the image's size: `NAME.mask.png` (background black, each class its colour, as in TensorBoard) in
`output` (default: beside the image), and per image the classes found with their share of the labelled pixels.
"""


from omegaconf import DictConfig, OmegaConf

from mnistlab.config import CONFIG_DIR
from mnistlab.errors import ConfigError
from mnistlab.image_files import INVERT_CHOICES
from mnistlab.tasks.registry import load_datamodule, load_task
from mnistlab.tools.cli import run_tool


def predict(checkpoint: str, paths: list[str], **settings) -> list[dict]:
    """The checkpoint's task's answer for each image file (configs/predict.yaml's settings, `settings` on top)."""
    chosen = OmegaConf.merge(OmegaConf.load(CONFIG_DIR / "predict.yaml"), settings)
    invert = str(chosen.invert).lower()
    if invert not in INVERT_CHOICES:
        raise ConfigError(f"invert={chosen.invert}: choose one of {', '.join(INVERT_CHOICES)}")
    if not paths:
        raise ConfigError("images=[] names no image: give one or more files, e.g. images=[a.png,b.jpg]")
    module = load_task(checkpoint, "ckpt_path").eval()
    return module.predict_images(load_datamodule(checkpoint, {}), paths, chosen)


def predict_command(cfg: DictConfig, _args: list[str]) -> None:
    images = list(cfg.images) if OmegaConf.is_list(cfg.images) else [str(cfg.images)]
    settings = {key: value for key, value in cfg.items() if key not in ("ckpt_path", "images")}
    rows = predict(cfg.ckpt_path, images, **settings)
    width = max(len(row["image"]) for row in rows)
    for row in rows:
        print(f"{row['image']:<{width}}  {row['answer']}{' (inverted)' if row['inverted'] else ''}")


def main(argv: list[str] | None = None) -> None:
    run_tool(predict_command, "predict", __doc__, argv)
