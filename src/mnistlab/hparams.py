"""The HPARAMS record of a run: the settings that tell runs apart, beside their final metrics, in TensorBoard's
HPARAMS tab (and every tracker's params)."""


import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger

# What the HPARAMS tab compares: every setting of these groups, these trainer settings, and the top-level values.
COMPARED_GROUPS = ("data", "model", "optimizer", "scheduler", "tricks")
COMPARED_TRAINER = ("max_epochs", "precision", "accumulate_grad_batches", "gradient_clip_val")
PLUMBING = ("data.root", "data.download", "data.seed", "data.eval_batch_size")  # where and how, not what


def compared_settings(config: dict, overridden: list[str] = ()) -> dict:
    """The settings a user compares runs by, flattened (`tricks.mixup_alpha`): the groups that shape the
    training, a few trainer options, the top-level values, each group's chosen class or function, the callbacks'
    names, and every key given on the command line (in a sweep, the ones that vary). No `_target_`, `_partial_` or
    callback internals."""
    flat = flatten(config)
    keep = {}
    for key, value in flat.items():
        group, _, name = key.partition(".")
        wanted = ((group in COMPARED_GROUPS and key not in PLUMBING) or key in overridden
                  or (group == "trainer" and name in COMPARED_TRAINER) or (not name and group != "ckpt_path"))
        if wanted and not key.rsplit(".", 1)[-1].startswith("_"):
            keep[key] = value
    for group in ("task", "model", "optimizer", "scheduler"):  # which class or function each group chose
        keep[group] = ((config.get(group) or {}).get("_target_") or "none").rsplit(".", 1)[-1]
    keep["callbacks"] = ", ".join(config.get("callbacks") or {})
    return keep


def log_hparams(trainer: pl.Trainer, config: dict, metrics: dict, overridden: list[str] = ()) -> None:
    """The HPARAMS tab: the settings compared (compared_settings) with the final metrics, so a sweep's runs line
    up side by side. Written once the run is over, when the metrics exist."""
    final = {key: value for key, value in metrics.items() if value is not None}  # None: no validation
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(compared_settings(config, overridden), metrics=final, step=trainer.global_step)
            logger.finalize("success")


def flatten(config: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}: the keys as Hydra overrides spell them."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
