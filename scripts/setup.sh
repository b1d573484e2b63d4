#!/usr/bin/env bash
# Installs what ddnn-fog needs on a fresh Debian machine: Debian packages for the trainer and the
# Fashion-MNIST data, then the npm dependencies. Safe to run again; it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=(python3-torch python3-onnx python3-numpy python3-pytest dataset-fashion-mnist mosquitto python3-paho-mqtt openssl)
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

# npm ci only when the lock file changed since the last install (node_modules/.package-lock.json
# is npm's own record of what it installed).
export ONNXRUNTIME_NODE_INSTALL=skip
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: npm ci"
  npm ci --no-audit --no-fund --prefer-offline --cache "$HOME/.cache/npm" --loglevel=error
fi
