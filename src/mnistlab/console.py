"""What a run prints. The console gets mnistlab's own lines (also in the run's train.log), the progress bar,
warnings and errors; Lightning's info lines (banners, tips, "Seed set to") and its warnings about settings
mnistlab makes on purpose go to train.log only. `verbose=true` brings them back to the console, with Lightning's
model summary."""

import logging
import re

LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning_fabric", "lightning")
# Lightning's warnings about what mnistlab does on purpose: short epochs against a fixed logging interval, a
# resume into its own folder, bf16 in the model summary, checkpoints it loads itself. Nothing to act on.
EXPECTED = re.compile("|".join([
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    r"Precision .* is not supported by the model summary",
    r"Checkpoint directory .* exists and is not empty",
    r"`weights_only` was not set",
    r"Tip: For seamless cloud logging",
]))
# warnings.formatwarning's "path:line: Category: message\n  source": the message alone reads better.
# Lightning's own format leaves the category out.
WARNING_TEXT = re.compile(r"^.*?\.py:\d+: (?:\w+Warning: )?(.*?)(?:\n|$)", re.DOTALL)


class ConsoleFormatter(logging.Formatter):
    """Info lines as they are; warnings and errors as `warning: message`, without the path of the line that
    raised them."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.name == "py.warnings":
            match = WARNING_TEXT.match(message)
            message = match.group(1) if match else message
        return message if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {message}"


class Quiet(logging.Filter):
    """Drops, from the console, Lightning's info lines and the expected warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return not record.name.startswith(LIGHTNING_LOGGERS)
        return not EXPECTED.search(record.getMessage())


def route_logs(verbose: bool) -> None:
    """Lightning's loggers and Python's warnings go through the root logger (Hydra's console and train.log
    handlers); the console is quiet unless `verbose`."""
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if type(h) is logging.StreamHandler]:
            logger.removeHandler(handler)  # Lightning's own console handler, which train.log would not see
        logger.propagate = True
    logging.captureWarnings(True)
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler:  # the console; FileHandler (train.log) subclasses it
            handler.setFormatter(ConsoleFormatter())
            for old in [f for f in handler.filters if isinstance(f, Quiet)]:
                handler.removeFilter(old)
            if not verbose:
                handler.addFilter(Quiet())
