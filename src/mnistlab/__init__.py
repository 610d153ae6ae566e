"""mnistlab: the seed CNN on MNIST-style data, with Lightning, Hydra and TensorBoard."""

__version__ = "0.1.0"
