"""The sweeper class that Hydra's plugin scan finds. The search lives in _optuna.py, a module the scan skips, and is
imported when a search starts: a plain install, without the sweep extra's Optuna, loads this plugin silently."""

from hydra.plugins.sweeper import Sweeper


class OptunaSweeper(Sweeper):
    def __init__(self, **settings):
        from hydra_plugins.mnistlab_optuna_sweeper._optuna import OptunaSearch

        self.search = OptunaSearch(**settings)

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.search.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> list:
        return self.search.sweep(arguments)
