#!/usr/bin/env bash
# Installs what the search demo and the smoke test need from Debian's packages:
# Fashion-MNIST (IDX files under /usr/share/datasets/fashion-mnist, MIT licence) and Graphviz
# (`dot`, to render the cell pictures). Idempotent; prints where the data is.
set -euo pipefail
need=()
[ -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need+=(dataset-fashion-mnist)
command -v dot >/dev/null 2>&1 || need+=(graphviz)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
echo "Fashion-MNIST: /usr/share/datasets/fashion-mnist"
echo "Graphviz: $(command -v dot)"
