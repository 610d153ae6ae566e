"""mnistlab's sweeper and launcher (`hydra/sweeper=mnistlab`, `hydra/launcher=mnistlab`, the defaults): Hydra's basic
ones, which run a sweep's jobs one after another in this process, except that a job whose config does not compose
(`model=seednet,resnet model.hidden=100`: the ResNet has no `hidden`) is recorded as failed (failure.json in its folder,
one `error:` line) and the sweep goes on, as for a job that fails while it runs. Hydra's sweeper would compose every
job first and stop them all."""

from dataclasses import dataclass

from hydra._internal.core_plugins.basic_sweeper import BasicSweeperConf
from hydra.core.config_store import ConfigStore


@dataclass
class MnistlabLauncherConf:
    _target_: str = "hydra_plugins.mnistlab_launcher.launcher.MnistlabLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="mnistlab", node=MnistlabLauncherConf, provider="mnistlab")


@dataclass
class MnistlabSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.mnistlab_launcher.launcher.MnistlabSweeper"


ConfigStore.instance().store(group="hydra/sweeper", name="mnistlab", node=MnistlabSweeperConf, provider="mnistlab")
