"""Lightning callbacks that any task gets from its config (configs/callbacks/): checkpointing, progress, weight
averaging, stops, exact resuming, and the TensorBoard views."""
