#!/usr/bin/env bash
# Installs what ddnn-fog needs on a fresh Debian machine: Debian packages for the trainer and the
# Fashion-MNIST data, then the npm dependencies. Safe to run again; it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# The trainer's and the tests' Python side (Debian's /usr/bin/python3) and the data set, then the
# package of every program the tests run (scripts/programs.txt).
python_packages=(python3-torch python3-onnx python3-numpy python3-pytest python3-paho-mqtt dataset-fashion-mnist)
# Libraries the generated C device programs build against (ddnn codegen c): the ARM C libraries
# for static cross builds, zlib, libmosquitto and cJSON for ddnn-device, and an OpenCL platform.
build_packages=(gcc-12-arm-linux-gnueabihf gcc-12-aarch64-linux-gnu libc6-dev-armhf-cross libc6-dev-arm64-cross zlib1g-dev libmosquitto-dev libcjson-dev pocl-opencl-icd ocl-icd-opencl-dev)
mapfile -t program_table < <(grep -vE '^\s*(#|$)' scripts/programs.txt)
program_packages=()
for row in "${program_table[@]}"; do program_packages+=("$(awk '{ print $2 }' <<<"$row")"); done
mapfile -t apt_packages < <(printf '%s\n' "${python_packages[@]}" "${build_packages[@]}" "${program_packages[@]}" | sort -u)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# A program the tests need that is still missing stops here, named with its package: never a
# test that times out waiting for it.
absent=()
for row in "${program_table[@]}"; do
  read -r program package <<<"$row"
  command -v "$program" >/dev/null 2>&1 || [ -x "/usr/sbin/$program" ] || absent+=("$program (Debian package $package)")
done
/usr/bin/python3 -c 'import torch, onnx, numpy, pytest, paho.mqtt' 2>/dev/null ||
  absent+=("/usr/bin/python3 modules torch, onnx, numpy, pytest, paho.mqtt (Debian packages ${python_packages[*]:0:5})")
for f in t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz; do
  [ -f "/usr/share/datasets/fashion-mnist/$f" ] || absent+=("/usr/share/datasets/fashion-mnist/$f (Debian package dataset-fashion-mnist)")
done
if ((${#absent[@]})); then
  printf 'setup: missing after install: %s\n' "${absent[@]}" >&2
  exit 1
fi

# npm ci only when the lock file changed since the last install (node_modules/.package-lock.json
# is npm's own record of what it installed).
export ONNXRUNTIME_NODE_INSTALL=skip
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: npm ci"
  npm ci --no-audit --no-fund --prefer-offline --cache "$HOME/.cache/npm" --loglevel=error
fi
