"""The command-line tools besides training (mnistlab-eval, -predict, -export, -inspect, -report, -bench,
-conv-basics), each taking Hydra overrides or a folder as documented in its module."""
