"""The tasks: each a LightningModule that a `task` config's `_target_` names, training a network of models/."""
