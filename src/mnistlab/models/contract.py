"""The contract every mnistlab network follows, so that code outside a model never names its layers:

- `backbone`: images [N, C, H, W] -> feature maps [N, C', H', W'] (what transfer learning copies and freezes,
  and what the filter and feature-map views show: its convolutions);
- `head`: feature maps -> logits [N, num_classes], whose last layer is a Linear;
- `pre_logits(x)`: the head's input to that last layer, [N, D] (distillation's and the projector's features);
- `num_classes` and `input_shape` (C, H, W) attributes;
- optionally `feature_layers`: the names of the modules whose outputs mark its stages (a ResNet's stem and
  stages), what the feature-map and filter views show by default; without it, they show every convolution of
  the backbone.

A network that renamed its layers keeps loading its old checkpoints through `LEGACY_KEYS` (old -> new prefixes),
and a network that moved keeps loading through `LEGACY_TARGETS` (old -> new `_target_`).
"""

LEGACY_TARGETS = {"mnistlab.model.SeedNet": "mnistlab.models.SeedNet"}


def current_target(model: dict) -> dict:
    """A saved model config with its `_target_` as it is spelled now."""
    target = model.get("_target_")
    return {**model, "_target_": LEGACY_TARGETS.get(target, target)}


def rename_legacy_keys(state: dict, renames: dict[str, str], prefix: str = "") -> None:
    """Rename, in place, the keys of a state dict saved before a network took the contract's shape:
    `prefix + old` -> `prefix + new` for each (old, new) of `renames`, so old checkpoints keep loading."""
    for key in list(state):
        for old, new in renames.items():
            if key.startswith(prefix + old):
                state[prefix + new + key[len(prefix + old):]] = state.pop(key)
                break
