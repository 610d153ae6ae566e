#!/usr/bin/env bash
# docs/images/report_html.png: a small real sweep on Debian's Fashion-MNIST (two settings x two seeds, and a setting
# that fails; 8 epochs on 10,000 images, about a minute on 2 CPU cores), its report, and report.html as headless
# Chromium shows it.   scripts/screenshot_report.sh [SWEEP_DIR]   (python: $PYTHON, else python)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python}
sweep=${1:-/tmp/report_html_sweep}
if [ -e "$sweep" ]; then
  echo "error: $sweep exists: give a folder that does not, as the sweep's" >&2
  exit 2
fi

"$python" train.py -m model.downsample=pool,stride,bogus seed=1,2 data=fashion_mnist \
    data.root=/usr/share/datasets/fashion-mnist data.download=false data.train_size=10000 data.batch_size=256 \
    trainer.max_epochs=8 callbacks=minimal hydra.sweep.dir="$sweep"
"$python" -m mnistlab.tools.report "$sweep"
# --no-sandbox: Chromium refuses to start as root without it
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$sweep/chromium" \
    --window-size=1280,1450 --screenshot=docs/images/report_html.png "file://$(realpath "$sweep")/report.html"
