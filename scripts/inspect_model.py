"""The shape walk of a model config (same as `mnistlab-inspect`): python scripts/inspect_model.py [OVERRIDES]"""

from mnistlab.tools.inspect_model import main

if __name__ == "__main__":
    main()
