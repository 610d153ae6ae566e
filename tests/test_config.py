import copy
import inspect
import subprocess
import sys
from collections.abc import Callable

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mnistlab.build import device_for_job
from mnistlab.config import CONFIG_DIR, compose_run_config, group_options, groups, spell_trainer_overrides
from mnistlab.data.digits import MNISTDataModule
from mnistlab.errors import ConfigError
from mnistlab.models import FCN, ResNet, SeedNet
from mnistlab.models.registry import build_network
from mnistlab.override_errors import unknown_choice

from .conftest import REPO, classifier, configured, network, train_main

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


def compose_train(*overrides: str):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_config_dir_is_the_repository_configs_in_a_checkout():
    assert CONFIG_DIR == REPO / "configs"
    assert "baseline" in EXPERIMENTS


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_with_plus_and_builds_its_parts(experiment):
    cfg = compose_train(f"+experiment={experiment}")
    assert cfg.name == experiment
    net = build_network(OmegaConf.to_container(cfg.model, resolve=True))
    assert isinstance(net, (SeedNet, ResNet, FCN))
    scores = net.eval()(torch.zeros(2, *net.input_shape))
    pixels = tuple(net.input_shape[1:]) if isinstance(net, FCN) else ()  # segmentation scores every pixel
    assert scores.shape == (2, net.num_classes, *pixels)
    optimizer = instantiate(cfg.optimizer, params=net.parameters())
    assert isinstance(optimizer, torch.optim.Optimizer)
    assert isinstance(instantiate(cfg.data), MNISTDataModule)


def test_the_experiment_group_is_not_in_the_defaults_list():
    assert "experiment" not in compose_train()


@pytest.mark.parametrize(("dataset", "mean", "std"), [("mnist", 0.1307, 0.3081),
                                                      ("fashion_mnist", 0.2860, 0.3530),
                                                      ("kmnist", 0.1918, 0.3483)])
def test_dataset_choices_set_name_and_statistics(dataset, mean, std):
    cfg = compose_train(f"data={dataset}", "data.root=/somewhere")
    assert (cfg.data.name, cfg.data.mean, cfg.data.std, cfg.data.root) == (dataset, mean, std, "/somewhere")
    assert cfg.model.num_classes == 10 and cfg.model.image_size == 28  # the model follows the data


def test_trainer_choices_and_pass_through_options():
    assert compose_train().trainer.accelerator == "auto"
    cfg = compose_train("trainer=cpu", "trainer.max_epochs=3", "trainer.precision=bf16-mixed")
    assert (cfg.trainer.accelerator, cfg.trainer.max_epochs, cfg.trainer.precision) == ("cpu", 3, "bf16-mixed")
    assert compose_train("trainer=gpu").trainer.accelerator == "gpu"


@pytest.mark.parametrize(("args", "problem"), [
    (["data=emnist"], "unknown data 'emnist' (override data=emnist); choose one of: fashion_mnist, kmnist, mnist"),
    (["-m", "data=mnist,emnist"], "unknown data 'emnist'"),
    (["+experiment=nope"], "unknown experiment 'nope' (override +experiment=nope); choose one of: "),
    (["trainer=tpu"], "unknown trainer 'tpu'"),
    (["data=mnist", "trainer=cpu", "+experiment=baseline", "data.batch_size=3"], None),
    (["-m", "+experiment=glob(*)", "seed=1,2"], None),
    (["-m", "experiment=baseline,mixup"], "experiment=baseline,mixup needs a +: +experiment=baseline,mixup "
                                          "(experiment is not in the defaults list, so it is added)"),
])
def test_unknown_group_choices_are_named(args, problem):
    found = unknown_choice(args)
    assert found == problem if problem is None else problem in found


def test_a_group_that_the_primary_config_does_not_list_needs_a_plus():
    """Known from the defaults lists themselves, not from the text of Hydra's error."""
    assert unknown_choice(["model=resnet"], "eval").startswith("model=resnet needs a +: +model=resnet")
    assert unknown_choice(["data=kmnist"], "eval") is None and unknown_choice(["model=resnet"], "inspect") is None


def test_unknown_dataset_on_the_command_line_is_one_line_and_exit_2(monkeypatch):
    result = train_main(monkeypatch, "data=emnist")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: unknown data 'emnist' (override data=emnist); choose one of: fashion_mnist, kmnist, mnist"]


def test_parallel_sweep_jobs_take_one_gpu_each():
    assert device_for_job(None, gpus=4) == 1  # a single run: one device, Lightning picks it
    assert [device_for_job(n, gpus=4) for n in range(6)] == [[0], [1], [2], [3], [0], [1]]
    assert device_for_job(5, gpus=1) == 1 and device_for_job(5, gpus=0) == 1  # one GPU or the CPU: nothing to spread


def test_any_trainer_argument_is_set_without_plus():
    spelled = spell_trainer_overrides(["trainer.limit_train_batches=5", "trainer.max_epochs=3,5", "model.hidden=10",
                                       "+trainer.max_time=null", "--cfg"])
    assert spelled == ["++trainer.limit_train_batches=5", "++trainer.max_epochs=3,5", "model.hidden=10",
                       "+trainer.max_time=null", "--cfg"]
    cfg = compose_run_config(["trainer.limit_train_batches=5", "trainer.gradient_clip_val=1.5", "trainer.max_epochs=2"])
    assert (cfg.trainer.limit_train_batches, cfg.trainer.gradient_clip_val, cfg.trainer.max_epochs) == (5, 1.5, 2)
    trainer = instantiate(cfg.trainer, callbacks=[], logger=False)
    assert trainer.limit_train_batches == 5 and trainer.gradient_clip_val == 1.5


@pytest.mark.parametrize(("arg", "says"), [
    ("trainer.max_epoch=3", "unknown key trainer.max_epoch in 'trainer.max_epoch=3': did you mean trainer.max_epochs?"),
    ("trainer.limit_trian_batches=3", "unknown key trainer.limit_trian_batches in 'trainer.limit_trian_batches=3': "
                                      "did you mean trainer.limit_train_batches?"),
])
def test_a_trainer_typo_names_the_closest_argument(arg, says):
    with pytest.raises(ConfigError) as info:
        spell_trainer_overrides([arg])
    assert str(info.value) == says


@pytest.mark.slow
def test_a_trainer_typo_is_one_line_from_train_py(tmp_path):
    result = subprocess.run([sys.executable, "train.py", "trainer.max_epoch=3", f"hydra.run.dir={tmp_path / 'run'}"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: unknown key trainer.max_epoch in 'trainer.max_epoch=3': did you mean "
                                     "trainer.max_epochs?")
    assert not (tmp_path / "run").exists()


WARMUP_KEYS = ("warmup_epochs", "warmup_start_factor", "warmup_min_steps")


def test_the_warmup_settings_are_written_once_and_every_schedule_with_a_warmup_composes_them():
    """Four scheduler configs each repeated the three warmup keys; configs/scheduler/_warmup.yaml states them, and a
    schedule writes one again only to give it another value (cosine's half epoch)."""
    import yaml
    from hydra.utils import get_method

    shared = yaml.safe_load((CONFIG_DIR / "scheduler" / "_warmup.yaml").read_text())
    assert sorted(shared) == sorted(WARMUP_KEYS)
    for option in group_options("scheduler"):
        own = yaml.safe_load((CONFIG_DIR / "scheduler" / f"{option}.yaml").read_text())
        assert [key for key in WARMUP_KEYS if key in own and own[key] == shared[key]] == [], option
        parameters = inspect.signature(get_method(own["_target_"])).parameters
        if all(key in parameters for key in WARMUP_KEYS):  # onecycle takes warmup_epochs only, to refuse it
            settings = compose_train(f"scheduler={option}", "scheduler.warmup_epochs=2").scheduler
            assert {key: settings[key] for key in WARMUP_KEYS} == {**shared, "warmup_epochs": 2}, option
    assert compose_train("+experiment=warmup").scheduler.warmup_epochs == 1
    assert "_warmup" not in group_options("scheduler")  # part of a schedule, not a choice


def test_the_not_learning_tolerance_has_one_rule_and_the_stop_takes_every_value_it_allows():
    """The rules table allowed tolerance=0 and the stop refused it: every allowed value must build the stop."""
    from mnistlab.validation import check_config

    for allowed in (1e-6, 0.02, 0.999):
        check_config(compose_run_config([f"callbacks.not_learning.tolerance={allowed}"]))
        assert configured("callbacks.not_learning", num_classes=10, tolerance=allowed).tolerance == allowed
    for refused in (0, 1, -0.1):
        with pytest.raises(ConfigError, match=rf"^callbacks.not_learning.tolerance={refused} must be in \(0, 1\)$"):
            check_config(compose_run_config([f"callbacks.not_learning.tolerance={refused}"]))


def saved_checkpoint(path, data: dict, **saved) -> str:
    """A checkpoint as mnistlab writes one, its data module's settings `data` (those of an older mnistlab lack the
    settings added since); its weights and model do not matter to the data."""
    from mnistlab.checkpoints import CHECKPOINT_FORMAT, MNISTLAB_KEY

    torch.save({"state_dict": {}, "pytorch-lightning_version": "2.6.0", "epoch": 0, "global_step": 1,
                MNISTLAB_KEY: {"version": "0.1.0", "format": CHECKPOINT_FORMAT},
                "hyper_parameters": {"model": {"_target_": "mnistlab.models.SeedNet"}},
                "datamodule_hyper_parameters": data, **saved}, path)
    return str(path)


def test_a_checkpoint_without_a_data_setting_gets_it_as_configs_states_it(tmp_path):
    """The data module's signature said seed=0 and steps_per_execution=1 where configs/data/mnist.yaml says ${seed}
    and auto, so a checkpoint saved before a setting existed loaded another value than its run had; the canvases'
    eval_batch_size was 1000 there, 250 in configs/task/segmentation.yaml."""
    from mnistlab.tasks.registry import load_datamodule

    digits = load_datamodule(saved_checkpoint(tmp_path / "digits.ckpt", {"name": "fashion_mnist", "root": "x"}), {})
    cfg = compose_train("data=fashion_mnist")
    assert (digits.seed, digits.steps_per_execution, digits.val_size) == (cfg.seed, "auto", cfg.data.val_size)
    assert digits.hparams.recipe_augment is None  # fashion_mnist's own, not mnist's
    canvases = load_datamodule(saved_checkpoint(tmp_path / "canvases.ckpt", {"name": "mnist", "canvas_size": 48}), {})
    cfg = compose_train("task=segmentation")
    assert (canvases.canvas_size, canvases.eval_batch_size, canvases.seed) == (48, cfg.data.eval_batch_size, cfg.seed)
    assert canvases.canvases == {split: cfg.data[f"{split}_canvases"] for split in ("train", "val", "test")}


@pytest.mark.parametrize(("choices", "dropped"), [((), "channels_last"), (("task=segmentation",), "ignore_index")])
def test_a_checkpoint_without_a_trick_or_task_setting_gets_it_as_configs_states_it(tmp_path, choices, dropped):
    """The tricks' defaults were written in configs/train.yaml and again in the Classifier's signature (the
    segmentation task's ignore_index in configs/task/segmentation.yaml and the Segmenter's): a checkpoint saved
    before a setting existed gets it from configs/ alone."""
    import pytorch_lightning as pl
    from omegaconf import open_dict

    from mnistlab.build import build_task
    from mnistlab.tasks.registry import load_task

    cfg = compose_run_config(list(choices))
    with open_dict(cfg):
        del cfg["hydra"]
    trainer = pl.Trainer(accelerator="cpu", logger=False)
    trainer.strategy.connect(build_task(cfg))
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    saved = torch.load(tmp_path / "m.ckpt", weights_only=True)
    del saved["hyper_parameters"][dropped]
    saved["datamodule_hyper_parameters"] = OmegaConf.to_container(cfg.data, resolve=True)  # canvases or digits
    torch.save(saved, tmp_path / "older.ckpt")
    loaded = load_task(tmp_path / "older.ckpt", "ckpt_path")
    stated = cfg.task[dropped] if dropped in cfg.task else cfg.tricks[dropped]
    assert loaded.hparams[dropped] == stated and type(loaded).__name__ == cfg.task._target_.rsplit(".", 1)[1]


@pytest.mark.parametrize("option", group_options("hparams_search"))
def test_a_search_config_states_only_what_it_changes_of_its_sweepers_settings(option):
    """configs/hparams_search/optuna.yaml repeated five of the sweeper's own defaults (direction, storage, n_trials,
    n_jobs, pruner): the sweeper's config (its dataclass in src/hydra_plugins/) states them once."""
    import yaml
    from hydra.core.config_store import ConfigStore

    import hydra_plugins.mnistlab_optuna_sweeper  # noqa: F401  (registers its sweeper's config)

    search = yaml.safe_load((CONFIG_DIR / "hparams_search" / f"{option}.yaml").read_text())
    (sweeper,) = [entry["override /hydra/sweeper"] for entry in search["defaults"]
                  if isinstance(entry, dict) and "override /hydra/sweeper" in entry]
    own = ConfigStore.instance().load(f"hydra/sweeper/{sweeper}.yaml").node
    changed = search["hydra"]["sweeper"]
    assert [key for key, value in changed.items() if key in own and own[key] == value] == []


def test_a_checkpoint_without_a_model_setting_gets_it_as_configs_states_it(tmp_path):
    """The networks' defaults were written in configs/model/ and again in their signatures: a model config saved
    before a setting existed (dropout, say), or an FCN's backbone that names its network alone, gets the setting from
    configs/model/ alone."""
    from mnistlab.checkpoints import load_network

    net = network("SeedNet")
    state = {f"net.{name}": tensor for name, tensor in net.state_dict().items()}
    older = {"_target_": "mnistlab.model.SeedNet", "num_classes": 10, "batch_norm": False}  # before models/
    path = saved_checkpoint(tmp_path / "older.ckpt", {}, state_dict=state, hyper_parameters={"model": older})
    loaded = load_network(path, "ckpt_path")
    stated = compose_train().model
    assert loaded.head.fc1.out_features == stated.hidden
    assert loaded.backbone.conv1.kernel_size == (stated.kernel_size, stated.kernel_size)
    assert isinstance(loaded.head.dropout, torch.nn.Identity) == (stated.dropout == 0)
    fcn = network("FCN", backbone={"_target_": "mnistlab.models.ResNet"}, image_size=32)
    assert fcn.feature_layers == ResNet.feature_layers and fcn.input_shape == (1, 32, 32)


# Every composition a user can pick: train.yaml alone, with each experiment, with each option of each group.
COMPOSITIONS = [(), *((f"+experiment={name}",) for name in EXPERIMENTS),
                *((f"{group}={option}",) for group in groups() if group not in ("experiment", "hydra")
                  for option in group_options(group))]
# A target whose settings another class takes: the Optuna sweeper hands them to its search (which imports Optuna).
CONSUMERS = {"hydra_plugins.mnistlab_optuna_sweeper.sweeper.OptunaSweeper":
             "hydra_plugins.mnistlab_optuna_sweeper._optuna.OptunaSearch"}


def of_mnistlab(obj) -> bool:
    return obj.__module__.startswith(("mnistlab.", "hydra_plugins.mnistlab"))


def configured_targets(cfg: dict) -> list[tuple[str, str, set[str]]]:
    """(where, target, the keys the config gives it) for every `_target_` of mnistlab's in a composed config; the
    task's arguments are its config's and the tricks (train.build_task)."""
    found = []

    def walk(node, where: str) -> None:
        items = enumerate(node) if isinstance(node, list) else node.items() if isinstance(node, dict) else ()
        for key, value in items:
            walk(value, f"{where}[{key}]" if isinstance(node, list) else f"{where}.{key}" if where else key)
        target = node.get("_target_") if isinstance(node, dict) else None
        if isinstance(target, str) and target.startswith(("mnistlab.", "hydra_plugins.mnistlab")):
            keys = {key for key in node if not key.startswith("_")}
            if where == "task":
                keys = (keys - {"metrics"}) | set(cfg["tricks"])
            found.append((where, target, keys))

    walk(cfg, "")
    return found


def signature_defaults(target: str) -> dict:
    """The arguments with a default of `target` (a function, or a class and the classes of mnistlab it passes its
    **kwargs to)."""
    from hydra.utils import get_object

    obj = get_object(CONSUMERS.get(target, target))
    found = {}
    for cls in inspect.getmro(obj) if inspect.isclass(obj) else (obj,):
        if inspect.isclass(cls) and (not of_mnistlab(cls) or "__init__" not in vars(cls)):
            continue
        parameters = inspect.signature(cls).parameters.values()
        found |= {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            break
    return found


@pytest.mark.parametrize("choices", COMPOSITIONS, ids=lambda choices: " ".join(choices) or "train.yaml")
def test_a_setting_that_configs_gives_has_no_default_in_what_it_configures(choices):
    """Each default stated once, in configs/ or in the signature, never both: they disagreed (the data module's
    signature said seed=0 and steps_per_execution=1 where configs/data/mnist.yaml says ${seed} and auto; the
    schedules' warmup_min_steps was 0 where configs/scheduler/ said 100)."""
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = OmegaConf.to_container(compose("train", overrides=list(choices), return_hydra_config=True))
    targets = configured_targets(cfg)  # unresolved: the keys are what counts
    assert {target for _, target, _ in targets} >= {cfg["data"]["_target_"], cfg["model"]["_target_"]}
    stated_twice = [f"{where}.{key} ({target})" for where, target, keys in targets
                    for key in sorted(keys & set(signature_defaults(target)))]
    assert stated_twice == []


# Values of a setting's own kind (a number for a number, a string for a string) that a rule may refuse.
REFUSED = (-1, -0.5, 1.5, 181, 2**32, "nope")
# Between them every setting of the rules table that mnistlab's code takes: the FCN, the canvases and their views
# come with task=segmentation.
RULE_COMPOSITIONS = [(), ("task=segmentation",), ("model=resnet",)]


def taker(parts: dict, key: str) -> Callable[[object], object] | None:
    """What builds, as a run builds it, what takes the setting `key` of the run `parts` (a resolved config), given
    a value past the rules table; None where mnistlab's code does not take it (Lightning's, torch's, a top-level
    setting, the task's metric names)."""
    from hydra.utils import get_object

    section, *path = key.split(".")
    if section == "callbacks":
        section, *path = f"callbacks.{path[0]}", *path[1:]
    node = OmegaConf.select(OmegaConf.create(parts), section)
    if not OmegaConf.is_dict(node):
        return None
    base = OmegaConf.to_container(node)
    target = parts["task"]["_target_"] if section == "tricks" else base.get("_target_", "")
    if not target.startswith("mnistlab."):
        return None
    if path[0] not in (set(parts["tricks"]) if section == "tricks" else signature_parameters(target)):
        return None

    def build(value):
        settings = copy.deepcopy(base)
        node = settings
        for part in path[:-1]:  # data.augment.degrees, where augment may be null
            node[part] = node[part] if isinstance(node.get(part), dict) else {}
            node = node[part]
        node[path[-1]] = value
        if path[0] == "recipe_augment":
            settings["augment"] = "recipe"  # what takes the recipe's settings
        if section == "tricks":
            return classifier(parts["model"], parts["optimizer"], None, **settings)
        if section == "model":
            return build_network(settings)
        if section == "scheduler":
            return instantiate(settings)(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), 1000, 100)
        return get_object(settings.pop("_target_"))(**settings)

    return build


def signature_parameters(target: str) -> set[str]:
    """The arguments `target` takes (a class's and those of mnistlab's classes it passes its **kwargs to)."""
    from hydra.utils import get_object

    obj = get_object(target)
    return {name for cls in (inspect.getmro(obj) if inspect.isclass(obj) else (obj,)) if of_mnistlab(cls)
            for name in inspect.signature(cls).parameters}


def test_a_rule_of_the_rules_table_is_not_stated_again_where_the_value_is_taken():
    """Each range in one place, the rules table (checked on a run's config before anything is built) or the code
    that takes the value, never both: the warmup's and the augmentation's ranges were in both, the dataset names and
    the seed network's downsampling modes too, and the Classifier ran the tricks' rules again. Every value a rule
    refuses, given past the table to what takes it, draws no error of that rule's from it."""
    from mnistlab.validation import RULES

    runs = []
    for choices in RULE_COMPOSITIONS:
        cfg = compose_run_config(list(choices))
        runs.append((cfg, {key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key])
                           else cfg[key] for key in cfg if key != "hydra"}))
    tried = []
    for key, (check, _) in RULES.items():
        for cfg, parts in runs:
            build = taker(parts, key)
            if build is None or (OmegaConf.select(cfg, key) is None and ".augment." not in key):
                continue
            stated = OmegaConf.select(cfg, key)
            kind = type(stated) if isinstance(stated, str | bool) else (int, float)  # a switch has no range
            for value in [value for value in REFUSED if isinstance(value, kind) and not check(value)]:
                try:
                    build(value)
                except ConfigError as err:
                    assert not str(err).startswith(f"{key}="), str(err)
                except Exception:
                    pass  # a value out of range may break what takes it, in any way but a rule of its own
                tried.append(key)
            break
    assert len(set(tried)) >= 40, sorted(set(tried))  # most rules are of settings that mnistlab's code takes
