"""The sweep report (same as the `mnistlab-report` command): python scripts/report.py MULTIRUN_DIR [--out DIR]"""

from mnistlab.tools.report import main

if __name__ == "__main__":
    main()
