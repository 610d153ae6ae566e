"""Training speed (same as the `mnistlab-bench` command): python scripts/benchmark.py [--data-root DIR] [--json OUT]"""

from mnistlab.tools.benchmark import main

if __name__ == "__main__":
    main()
