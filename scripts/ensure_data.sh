#!/usr/bin/env bash
# Install the Fashion-MNIST proxy data set from Debian's package when it is missing.
set -euo pipefail
dir=${1:-/usr/share/datasets/fashion-mnist}
[ -f "$dir/train-images-idx3-ubyte.gz" ] && exit 0
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "Installing Fashion-MNIST (Debian package dataset-fashion-mnist) ..."
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist libjemalloc2 >/dev/null
else
    echo "Fashion-MNIST is missing from $dir. Install it with 'sudo apt-get install dataset-fashion-mnist'," >&2
    echo "or pass --data-dir with the four idx files (train/t10k images/labels) to run_search.py." >&2
    exit 1
fi
