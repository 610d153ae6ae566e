"""Bad input, generated from the config tree itself: every setting of the default run and of the ResNet gets a
value of the wrong type and, where it is a number, one out of range; each ends as one line and exit status 2,
before anything is written. A key added to configs/ is covered without touching this file."""

import sys

import pytest
from omegaconf import OmegaConf

from mnistlab import train
from mnistlab.config import compose_run_config

# Settings any string fits (folders, file names, Lightning's device strings such as "0,1"), and the metric a
# checkpoint watches, which only exists once the task logs it.
ANY_STRING = {"data.root", "trainer.default_root_dir", "trainer.devices", "callbacks.model_checkpoint.dirpath",
              "callbacks.model_checkpoint.filename", "callbacks.model_checkpoint.monitor",
              "logger.tensorboard.save_dir", "logger.tensorboard.name", "logger.tensorboard.version", "name",
              "task.metrics.monitor", "task.metrics.best"}


# Numbers for which -5 is in range: an ignore index may be any integer outside the classes (PyTorch's is -100).
ANY_INTEGER = {"data.ignore_index", "task.ignore_index"}


def leaves(node, path=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves(value, (*path, key))
    else:
        yield ".".join(path), node


def bad_values(base: tuple[str, ...]) -> list[tuple[str, str]]:
    """(override, why) for every setting of the config `base` composes: a wrong type, and out of range."""
    tree = OmegaConf.to_container(compose_run_config(list(base)), resolve=False)
    del tree["hydra"]
    cases = []
    for key, value in leaves(tree):
        if key.split(".")[-1].startswith("_") or key in ANY_STRING or key.startswith("hydra."):
            continue
        if isinstance(value, str) and value.startswith("${"):  # fed from another setting, which is checked there
            continue
        if isinstance(value, bool):
            cases.append((f"{key}=maybe", "wrong type"))
        elif isinstance(value, int | float):
            cases += [(f"{key}=abc", "wrong type")] + ([] if key in ANY_INTEGER else [(f"{key}=-5", "out of range")])
        elif isinstance(value, list):
            cases.append((f"{key}=abc", "wrong type"))
        elif isinstance(value, str):
            cases.append((f"{key}=no_such_choice", "not a choice"))
    return cases


BASES = {"default": (), "resnet": ("+experiment=resnet",), "segmentation": ("task=segmentation",)}
CASES = [(name, override, why) for name, base in BASES.items() for override, why in bad_values(base)]
# The default run's cases in the everyday loop; the other bases' with the slow tests.
PARAMS = [pytest.param(*case, marks=[pytest.mark.slow] if case[0] != "default" else [],
                       id=f"{case[0]}:{case[1]}") for case in CASES]


def test_the_generated_cases_cover_the_tree():
    keys = {override.split("=")[0] for _, override, _ in CASES}
    assert {"optimizer.lr", "data.batch_size", "model.widths", "model.conv_channels", "trainer.log_every_n_steps",
            "callbacks.validation_analysis.num_mistakes", "scheduler.warmup_epochs", "tricks.label_smoothing"} <= keys


@pytest.mark.parametrize(("base", "override", "why"), PARAMS)
def test_a_bad_value_is_one_line_and_exit_2(base, override, why, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py", *BASES[base], override])
    monkeypatch.setattr(train, "hydra_main", lambda: pytest.fail(f"{override} was accepted: the run would start"))
    with pytest.raises(SystemExit) as exit_:
        train.main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert override.split("=")[0] in err, err  # names the setting
    assert not any(tmp_path.iterdir())  # nothing written
