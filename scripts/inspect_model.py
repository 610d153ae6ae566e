"""The shape walk of a model config (same as `mnistlab-inspect`): python scripts/inspect_model.py [OVERRIDES]"""

from mnistlab.summary import main

if __name__ == "__main__":
    main()
