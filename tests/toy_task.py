"""A task that only follows the task contract (src/mnistlab/tasks/classification.py): where in a frame is the digit?
Each digit sits at a random place in a larger black frame; the network regresses the place (row and column of
its top-left corner, scaled to [0, 1]). No mnistlab module names it: its config group is tests/configs."""

import torch
import torch.nn.functional as F
from torchmetrics import MeanAbsoluteError, MinMetric
from torchvision.transforms.v2 import functional as TF

from mnistlab.data.digits import MNISTDataModule
from mnistlab.errors import ConfigError
from mnistlab.image_files import read_grayscale
from mnistlab.tasks.classification import Classifier


class FramedDigits(MNISTDataModule):
    """MNISTDataModule's digits, each at a random place (fixed per seed and split) in a square image of
    `frame_size` pixels a side, labelled with that place. (Not `frame`: Lightning's save_hyperparameters skips an
    argument of that name.)"""

    ITEMS = "framed digits"

    def __init__(self, *, frame_size: int, **digits):
        super().__init__(**digits)
        self.save_hyperparameters(logger=False)
        if frame_size < self.image_size:
            raise ConfigError(f"data.frame_size={frame_size} is smaller than a digit ({self.image_size})")
        self.frame_size = frame_size

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        for offset, split in enumerate(("train", "val", "test")):
            if split in self.splits and self.splits[split][1].ndim == 1:  # digit labels: not framed yet
                images = self.splits[split][0]
                generator = torch.Generator(images.device).manual_seed(self.seed * 1000 + offset)
                self.splits[split] = self.place(images, generator)

    def place(self, digits: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        count, size, room = len(digits), self.image_size, self.frame_size - self.image_size
        corners = torch.randint(0, room + 1, (count, 2), generator=generator, device=digits.device)
        frames = torch.zeros(count, 1, self.frame_size, self.frame_size, dtype=torch.uint8, device=digits.device)
        offsets = torch.arange(size, device=digits.device)
        rows = (corners[:, 0, None] + offsets)[:, :, None]
        cols = (corners[:, 1, None] + offsets)[:, None, :]
        frames[torch.arange(count, device=digits.device)[:, None, None], 0, rows, cols] = digits[:, 0]
        return frames, corners.float() / max(room, 1)

    def epoch_description(self) -> str:
        return f"{self.training_items()} framed digits, {len(self.splits['val'][1])} validation"


class PlaceTask(Classifier):
    """Regresses a digit's place in its frame: mean squared error on the scaled corner, mean absolute error in
    pixels as the metric."""

    TRAIN_ACCURACY = "train/within_1px"
    DATA_MODULE = FramedDigits
    ENSEMBLES = False

    def __init__(self, model: dict, optimizer: dict, scheduler: dict | None = None, **tricks):
        super().__init__(model, optimizer, scheduler, **tricks)
        self.val_mae, self.test_mae = MeanAbsoluteError(), MeanAbsoluteError()
        self.val_mae_best = MinMetric()
        self.val_mae_best.persistent(True)

    def room(self) -> int:
        data = self.trainer.datamodule
        return data.frame_size - data.image_size

    def training_loss(self, x, y):
        predicted = self(x)
        return F.mse_loss(predicted.float(), y), predicted, y

    def answer_counts(self, predicted, places):
        """Places within a pixel on both axes (the scale is the frame's room, read from the data)."""
        room = self.room() if self._trainer is not None else 1
        close = ((predicted.float() - places).abs() * room <= 1).all(1)
        return close.sum(), torch.full((), len(places), device=places.device)

    def loss(self, predicted, places):
        return F.mse_loss(predicted.float(), places)

    def _evaluate(self, batch, stage: str, metric):
        x, y = batch
        predicted = self(x).float()
        metric.update(predicted * self.room(), y * self.room())
        self.log(f"{stage}/loss", F.mse_loss(predicted, y), on_epoch=True, batch_size=len(y))
        return predicted

    def validation_step(self, batch, batch_idx: int):
        return self._evaluate(batch, "val", self.val_mae)

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_mae)

    def on_validation_epoch_end(self) -> None:
        mae = self.val_mae.compute()
        self.val_mae.reset()
        self.log("val/mae", mae, prog_bar=True)
        if not self.trainer.sanity_checking:
            self.val_mae_best.update(mae)
            self.log("val/mae_best", self.val_mae_best.compute())

    def on_test_epoch_end(self) -> None:
        self.log("test/mae", self.test_mae.compute())
        self.test_mae.reset()

    @classmethod
    def recognises(cls, saved: dict) -> bool:
        return False  # its checkpoints always name it

    def check_data(self, data, what: str) -> None:
        if self.net.input_shape[1] != data.frame_size:
            raise ConfigError(f"{what}: the network takes {self.net.input_shape[1]}-pixel frames, the data has "
                              f"{data.frame_size}")

    def evaluation(self, trainer, data, results: dict) -> dict:
        return {"test/mae": results["test/mae"], "test/loss": results["test/loss"],
                "frames": len(data.splits["test"][1])}

    @staticmethod
    def evaluation_rows(metrics: dict) -> list[tuple[str, str]]:
        return [("test set", f"{metrics['frames']} framed digits of {metrics['dataset']}"),
                ("test/mae", f"{metrics['test/mae']:.2f} pixels")]

    def predict_images(self, data, paths: list[str], settings) -> list[dict]:
        rows = []
        for path in paths:
            frame = TF.resize(read_grayscale(path)[None, None], [data.frame_size, data.frame_size], antialias=True)
            with torch.no_grad():
                row, col = (self(data.normalize(frame * 255))[0].float() * (data.frame_size - data.image_size)).tolist()
            rows.append({"image": path, "inverted": False, "place": (row, col),
                         "answer": f"digit at row {row:.1f}, column {col:.1f}"})
        return rows
