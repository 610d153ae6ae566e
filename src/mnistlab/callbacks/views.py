"""What a run shows in TensorBoard besides Lightning's scalars: filters, feature maps, the first training
batch, validation mistakes, the confusion matrix, calibration, per-class accuracy, histograms and the embedding
projector.

Each callback is one entry of configs/callbacks/default.yaml (drop one with `~callbacks.NAME`), which states its
settings: they have no defaults here (a setting the yaml leaves out, such as the zoom, keeps its own). None of them
reads the device every step: images and histograms are drawn once per epoch (or every N), validation
statistics accumulate on the device and are read once at the epoch's end.
"""

import contextlib
import math
import warnings

import matplotlib.pyplot as plt
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import TensorBoardLogger
from torch.utils.tensorboard import SummaryWriter
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError, MulticlassConfusionMatrix
from torchvision.utils import make_grid

from mnistlab.execution import first_batch

# Equal-width histogram bins: a third of the time of TensorBoard's default ~1500 exponential edges, which sort
# every value (fc1 alone has 400,000), and TensorBoard re-bins to 30 for display anyway.
BINS = 64


def tensorboard_writer(trainer: pl.Trainer) -> SummaryWriter | None:
    """The run's TensorBoard writer, or None when the run has no TensorBoard logger or this is not rank 0."""
    if not trainer.is_global_zero:
        return None
    return next((logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)), None)


def tile_grid(tiles: torch.Tensor, per_row: int, zoom: int) -> torch.Tensor:
    """[N, 1, h, w] -> one [3, H, W] image: each tile scaled to [0, 1] on its own and enlarged `zoom` times
    (nearest neighbour, so a 5x5 filter stays 25 visible squares), 2 pixels between tiles."""
    tiles = tiles.detach().float().cpu()
    # make_grid's scale_each loops over the tiles in Python (1000 of them for conv2): one vectorised min-max.
    low, high = tiles.amin(dim=(1, 2, 3), keepdim=True), tiles.amax(dim=(1, 2, 3), keepdim=True)
    tiles = (tiles - low) / (high - low).clamp_min(1e-5)
    tiles = F.interpolate(tiles, scale_factor=zoom, mode="nearest")
    return make_grid(tiles, nrow=per_row, padding=2, pad_value=1.0)


@contextlib.contextmanager
def evaluating(module: torch.nn.Module):
    """Eval mode without gradients (BatchNorm uses its statistics and does not update them), then back."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield module
    finally:
        module.train(was_training)


def every_nth_or_last(index: int, every: int, last: bool) -> bool:
    """The schedule of every periodic view: the first, every N-th after it, and the last; never when N is 0."""
    return every > 0 and (index % every == 0 or last)


def due(trainer: pl.Trainer, every_n_epochs: int) -> bool:
    """Every N-th epoch from the first, and the last of a run that reaches trainer.max_epochs."""
    epoch = trainer.current_epoch
    return every_nth_or_last(epoch, every_n_epochs, epoch == trainer.max_epochs - 1)


class ModelGraph(pl.Callback):
    """The network's graph in the GRAPHS tab, traced once when fitting starts."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        writer = tensorboard_writer(trainer)
        if writer is None:
            return
        example = pl_module.example_input_array.to(pl_module.device)
        with evaluating(pl_module.net), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.trace's deprecation; add_graph uses it
            writer.add_graph(pl_module.net, example)


def backbone_convolutions(net: torch.nn.Module) -> list[str]:
    """The names (relative to the network) of its backbone's convolutions."""
    return [f"backbone.{name}" for name, layer in net.backbone.named_modules() if isinstance(layer, torch.nn.Conv2d)]


def feature_layers(net: torch.nn.Module) -> list[str]:
    """What the feature-map view shows by default: the network's stages when it names them (`feature_layers`),
    else every convolution of its backbone."""
    return list(getattr(net, "feature_layers", None) or backbone_convolutions(net))


def filter_layers(net: torch.nn.Module) -> list[str]:
    """What the filter view shows by default: the first convolution of each of the network's feature layers."""
    names = []
    for name in feature_layers(net):
        module = net.get_submodule(name)
        first = next((f"{name}.{inner}".rstrip(".") for inner, layer in module.named_modules()
                      if isinstance(layer, torch.nn.Conv2d)), None)
        names += [first] if first else []
    return names


class FilterImages(pl.Callback):
    """The seed's "how do we get the convolution filters?" (`model.conv1.weight`): each layer's weights as an
    image grid, every N epochs. `layers`: names relative to the network; None: see filter_layers."""

    def __init__(self, *, layers: tuple[str, ...] | None, every_n_epochs: int, zoom: int = 4):
        self.layers, self.every_n_epochs, self.zoom = layers, every_n_epochs, zoom

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        writer = tensorboard_writer(trainer)
        if writer is None or not due(trainer, self.every_n_epochs):
            return
        layers = self.layers or filter_layers(pl_module.net)
        for name, grid in filter_grids(pl_module.net, layers, self.zoom).items():
            writer.add_image(f"filters/{name}", grid, trainer.global_step)


def filter_grids(net: torch.nn.Module, layers, zoom: int) -> dict[str, torch.Tensor]:
    """{layer: [3, H, W] image of its filters}: a row per output channel, a column per input channel
    (ten filters a row when there is one input channel)."""
    grids = {}
    for name in layers:
        weight = net.get_submodule(name).weight  # [out, in, kH, kW]
        out_channels, in_channels, height, width = weight.shape
        per_row = in_channels if in_channels > 1 else 10
        grids[name] = tile_grid(weight.reshape(out_channels * in_channels, 1, height, width), per_row, zoom)
    return grids


class FeatureMaps(pl.Callback):
    """The outputs of the chosen layers for a fixed set of validation images (the first `num_images`), after
    every N-th validation: one row per image, one tile per channel, beside the inputs themselves. `layers`: names
    relative to the network; None: its feature layers (see feature_layers)."""

    def __init__(self, *, layers: tuple[str, ...] | None, num_images: int, every_n_epochs: int, zoom: int = 2):
        self.layers, self.num_images, self.every_n_epochs, self.zoom = layers, num_images, every_n_epochs, zoom

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        writer = tensorboard_writer(trainer)
        if writer is None or trainer.sanity_checking or not due(trainer, self.every_n_epochs):
            return
        images, _ = trainer.datamodule.first_images("val", self.num_images)
        layers = self.layers or feature_layers(pl_module.net)
        for name, grid in feature_map_grids(pl_module.net, images, layers, self.zoom).items():
            writer.add_image(f"feature_maps/{name}", grid, trainer.global_step)


def feature_map_grids(net: torch.nn.Module, images: torch.Tensor, layers, zoom: int) -> dict[str, torch.Tensor]:
    """{"input" and each layer: [3, H, W] image}: the layer's output channels for each image, a row per image."""
    outputs = {}
    hooks = [net.get_submodule(name).register_forward_hook(
        lambda _module, _inputs, output, name=name: outputs.__setitem__(name, output)) for name in layers]
    try:
        with evaluating(net):
            net(images)
    finally:
        for hook in hooks:
            hook.remove()
    grids = {"input": tile_grid(images, len(images), zoom)}
    for name, maps in outputs.items():
        count, channels, height, width = maps.shape
        grids[name] = tile_grid(maps.reshape(count * channels, 1, height, width), channels, zoom)
    return grids


class TrainingBatchImages(pl.Callback):
    """The first training batch as the network sees it (augmented, and mixed when mixup/CutMix is on), once.

    The mix shown is drawn with a forked random state, so logging it leaves training's draws unchanged.
    """

    def __init__(self, *, num_images: int, zoom: int = 2):
        self.num_images, self.zoom = num_images, zoom

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step != 0 or batch_idx != 0:  # checked first: this hook runs every step
            return
        writer = tensorboard_writer(trainer)
        if writer is None:
            return
        images, labels = (t[: self.num_images] for t in first_batch(batch))
        if pl_module.mixer is not None:
            with torch.random.fork_rng(devices=[images.device] if images.is_cuda else []):
                images, _ = pl_module.mixer(images, labels)
        shown = trainer.datamodule.denormalize(images)
        writer.add_image("train/first_batch", tile_grid(shown, 8, self.zoom), 0)


class ValidationAnalysis(pl.Callback):
    """Per-class accuracy and expected calibration error after every validation pass (sanity check excluded),
    as `val/acc_class/NAME` and `val/ece`; the confusion matrix and a grid of misclassified images at the first
    validation, every N-th after it, and the last of a run that reaches trainer.max_epochs. Those two are
    matplotlib figures, about 0.34 s the pair on a CPU core: drawn every epoch they would add 6% to a CPU epoch."""

    def __init__(self, *, num_mistakes: int, calibration_bins: int, figures_every_n_epochs: int,
                 confusion_matrix: bool = True):
        self.num_mistakes, self.calibration_bins = num_mistakes, calibration_bins
        self.confusion_matrix, self.figures_every_n_epochs = confusion_matrix, figures_every_n_epochs
        self.drawing, self.validations = False, 0
        self.mistakes: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.metrics: MetricCollection | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        classes = pl_module.net.num_classes
        self.metrics = MetricCollection({
            "per_class": MulticlassAccuracy(classes, average=None, validate_args=False),
            "ece": MulticlassCalibrationError(classes, n_bins=self.calibration_bins, validate_args=False),
            "confusion": MulticlassConfusionMatrix(classes, validate_args=False),
        }, compute_groups=False)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.metrics.to(pl_module.device).reset()
        self.mistakes = []
        self.drawing = (not trainer.sanity_checking and tensorboard_writer(trainer) is not None
                        and self.count_and_check_due(trainer))

    def count_and_check_due(self, trainer: pl.Trainer) -> bool:
        """Counts this validation pass; true when it draws the figures. Counted in passes, not epochs, so that
        trainer.check_val_every_n_epoch > 1 still draws, and the last pass is the last that validates."""
        passes, self.validations = self.validations, self.validations + 1
        last = trainer.current_epoch + (trainer.check_val_every_n_epoch or 1) >= trainer.max_epochs
        return every_nth_or_last(passes, self.figures_every_n_epochs, last)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0):
        if trainer.sanity_checking:
            return
        images, labels = batch
        logits = outputs.float()
        self.metrics.update(logits, labels)
        found = sum(len(m[0]) for m in self.mistakes)
        if self.drawing and found < self.num_mistakes:  # reads the device only until the grid is full
            predicted = logits.argmax(1)
            wrong = (predicted != labels).nonzero().squeeze(1)[: self.num_mistakes - found]
            self.mistakes.append((images[wrong].cpu(), labels[wrong].cpu(), predicted[wrong].cpu()))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        names = trainer.datamodule.class_names
        results = self.metrics.compute()
        pl_module.log_dict({f"val/acc_class/{name.replace('/', '_')}": acc
                            for name, acc in zip(names, results["per_class"], strict=True)})
        pl_module.log("val/ece", results["ece"])
        if not self.drawing:
            return
        writer = tensorboard_writer(trainer)
        if self.confusion_matrix:
            figure, _ = self.metrics["confusion"].plot(results["confusion"].cpu(), labels=names)
            figure.set_size_inches(7, 6)
            writer.add_figure("val/confusion_matrix", figure, trainer.global_step)
        if self.mistakes and any(len(m[0]) for m in self.mistakes):
            images, labels, predicted = (torch.cat(parts) for parts in zip(*self.mistakes, strict=True))
            shown = trainer.datamodule.denormalize(images.float())
            writer.add_figure("val/mistakes", mistakes_figure(shown, labels, predicted, names), trainer.global_step)


def mistakes_figure(images: torch.Tensor, labels: torch.Tensor, predicted: torch.Tensor, names: list[str]):
    """One image of the misclassified digits, each titled with its true class over the predicted one, in red (a
    single axes: fast to draw). Six to a row, the titles large enough to read at TensorBoard's thumbnail size."""
    per_row = 6
    rows = math.ceil(len(images) / per_row)
    height, width = images.shape[-2:]
    pad = height  # room for each two-line title
    grid = make_grid(images.float(), nrow=per_row, padding=pad, pad_value=1.0)[0]
    figure, axes = plt.subplots(figsize=(per_row * 1.8, rows * 2.1))
    axes.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1)
    axes.set_axis_off()
    for i, (true, guess) in enumerate(zip(labels.tolist(), predicted.tolist(), strict=True)):
        row, col = divmod(i, per_row)
        x = pad + col * (width + pad) + width / 2
        y = pad + row * (height + pad) - 1
        axes.text(x, y - height / 2.5, names[true], ha="center", va="bottom", fontsize=10)
        axes.text(x, y, names[guess], ha="center", va="bottom", fontsize=10, color="crimson")
    figure.tight_layout(pad=0.2)
    return figure


def colour_masks(masks: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """Class masks [N, H, W] -> colour images [N, 3, H, W] in [0, 1]: the background (class 0) black, each other
    class a colour of matplotlib's tab10/tab20, pixels of `ignore_index` white."""
    colours = plt.get_cmap("tab10" if num_classes <= 11 else "tab20").colors[: num_classes - 1]
    palette = torch.tensor([(0.0, 0.0, 0.0), *colours, (1.0, 1.0, 1.0)], device=masks.device)
    index = torch.where(masks == ignore_index, num_classes, masks).clamp(0, num_classes)
    return palette[index].permute(0, 3, 1, 2)


class SegmentationViews(pl.Callback):
    """What a segmentation run shows besides its scalars (per-class IoU, mIoU): after the first validation, every
    N-th and the last, the first `num_images` validation canvases as rows of input | truth | prediction (colours:
    see colour_masks), and the pixels' confusion matrix (rows: the true class, normalised to sum to 1)."""

    def __init__(self, *, num_images: int, every_n_epochs: int, zoom: int = 2):
        self.num_images, self.every_n_epochs, self.zoom = num_images, every_n_epochs, zoom
        self.confusion: MulticlassConfusionMatrix | None = None
        self.drawing = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.confusion = MulticlassConfusionMatrix(pl_module.net.num_classes, ignore_index=pl_module.ignore_index,
                                                   normalize="true", validate_args=False)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.drawing = (not trainer.sanity_checking and tensorboard_writer(trainer) is not None
                        and due(trainer, self.every_n_epochs))
        self.confusion.to(pl_module.device).reset()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0):
        if self.drawing:
            self.confusion.update(outputs.argmax(1), batch[1])

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.drawing:
            return
        writer, data = tensorboard_writer(trainer), trainer.datamodule
        if self.num_images > 0:
            images, masks = data.first_images("val", self.num_images)
            with evaluating(pl_module.net) as net:
                predicted = net(images.to(pl_module.device)).argmax(1)
            classes, ignore = pl_module.net.num_classes, pl_module.ignore_index
            shown = data.denormalize(images.float()).clamp(0, 1).to(predicted.device).expand(-1, 3, -1, -1)
            rows = torch.stack([shown, colour_masks(masks.to(predicted.device), classes, ignore),
                                colour_masks(predicted, classes, ignore)], 1).flatten(0, 1)
            rows = F.interpolate(rows.float().cpu(), scale_factor=self.zoom, mode="nearest")
            grid = make_grid(rows, nrow=3, padding=2, pad_value=1.0)
            writer.add_image("val/segmentation", grid, trainer.global_step)
        figure, _ = self.confusion.plot(self.confusion.compute().cpu(), labels=data.class_names)
        figure.set_size_inches(9, 8)
        writer.add_figure("val/confusion_matrix", figure, trainer.global_step)


class Histograms(pl.Callback):
    """Histograms of every parameter (`weights/...`) and of its gradient at the epoch's first step
    (`gradients/...`, after AMP unscaling), every N epochs."""

    def __init__(self, *, every_n_epochs: int):
        self.every_n_epochs = every_n_epochs
        self.gradients_pending = False

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.gradients_pending = due(trainer, self.every_n_epochs)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        if not self.gradients_pending:  # checked first: this hook runs every step
            return
        self.gradients_pending = False
        writer = tensorboard_writer(trainer)
        if writer is None:
            return
        for name, parameter in pl_module.net.named_parameters():
            if parameter.grad is not None:
                writer.add_histogram(f"gradients/{name}", parameter.grad.float(), trainer.global_step, bins=BINS)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        writer = tensorboard_writer(trainer)
        if writer is None or not due(trainer, self.every_n_epochs):
            return
        for name, parameter in pl_module.net.named_parameters():
            writer.add_histogram(f"weights/{name}", parameter.detach().float(), trainer.global_step, bins=BINS)


class EmbeddingProjector(pl.Callback):
    """TensorBoard's projector at the end of training: the penultimate features (the network's pre_logits) of the first
    `num_images` validation images (training images when there is no validation split), with their labels and
    an image sprite. 0 images: off."""

    def __init__(self, *, num_images: int):
        self.num_images = num_images

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        writer = tensorboard_writer(trainer)
        if writer is None or self.num_images <= 0:
            return
        split = "val" if "val" in trainer.datamodule.splits else "train"
        images, labels = trainer.datamodule.first_images(split, self.num_images)
        with evaluating(pl_module.net) as net:
            features = net.pre_logits(images.to(pl_module.device))
        names = trainer.datamodule.class_names
        writer.add_embedding(features.float().cpu(), metadata=[names[i] for i in labels.tolist()],
                             label_img=trainer.datamodule.denormalize(images).cpu(), global_step=trainer.global_step,
                             tag="val/penultimate")
