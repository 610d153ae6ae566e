"""Train from the repository root: `python train.py +experiment=mixup`; every option lives in configs/."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))  # works before `pip install -e .` too

from mnistlab.train import main

if __name__ == "__main__":
    main()
