"""The seed document's convolution demos (same as `mnistlab-conv-basics`):
python scripts/conv_basics.py --data-root DIR --out figures/"""

from mnistlab.tools.conv_basics import main

if __name__ == "__main__":
    main()
