#!/usr/bin/env bash
# Install Fashion-MNIST from Debian's package where the system package manager can
# (root with apt-get); otherwise say nothing: `datamoat demo` then names the
# fallback dataset and this command in one line.
set -u
dir=/usr/share/datasets/fashion-mnist
[ -d "$dir" ] && exit 0
[ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || exit 0
echo "installing Debian's dataset-fashion-mnist into $dir" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
  || { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; } \
  || echo "could not install dataset-fashion-mnist: the demo falls back to scikit-learn's digits" >&2
exit 0
