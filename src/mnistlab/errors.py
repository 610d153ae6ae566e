"""Errors a user can fix; the entry points print them as one line and exit non-zero."""


class MnistlabError(Exception):
    """Bad input (config, data, paths): the message says what is wrong, where, and what is allowed."""


class DataError(MnistlabError):
    """Missing, corrupt or inconsistent dataset files."""


class ConfigError(MnistlabError):
    """A config value that is out of range or unknown."""


class NonFiniteLossError(MnistlabError):
    """The training loss became nan or inf: the run diverged."""


class NotLearningError(MnistlabError):
    """The training loss stayed at chance level: the network answers every image alike."""


class DiskFullError(MnistlabError):
    """A checkpoint did not fit on its disk; the earlier checkpoints are intact."""
