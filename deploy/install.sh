#!/usr/bin/env bash
# Set up edge-inspector in ./.venv on a fresh Debian/Ubuntu machine (or Jetson).
#   deploy/install.sh          run-time only: the line, ONNX Runtime, MQTT (no torch)
#   deploy/install.sh dev      + training/calibration (torch CPU build) + test tools + a Mosquitto broker binary
# Safe to run again: it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-runtime}"
case "$profile" in runtime|dev) ;; *) echo "usage: $0 [runtime|dev]" >&2; exit 2;; esac

apt_packages=()
# OpenCV's wheels link against libGL and glib.
ldconfig -p | grep -q 'libGL.so.1 ' || apt_packages+=(libgl1)
ldconfig -p | grep -q 'libglib-2.0.so.0 ' || apt_packages+=(libglib2.0-0)
# The tests start their own Mosquitto broker on a free port.
if [ "$profile" = dev ] && ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
  apt_packages+=(mosquitto)
fi
# The deploy-stack test checks the Prometheus config and every Grafana query with promtool (Debian's prometheus).
if [ "$profile" = dev ] && ! command -v promtool >/dev/null; then
  apt_packages+=(prometheus)
fi
# The TLS tests make throw-away certificates with openssl (mosquitto_passwd comes with mosquitto).
if [ "$profile" = dev ] && ! command -v openssl >/dev/null; then
  apt_packages+=(openssl)
fi
if [ ${#apt_packages[@]} -gt 0 ]; then
  echo "installing system packages: ${apt_packages[*]}"
  sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${apt_packages[@]}"
fi

python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ "$profile" = dev ]; then
  # The CPU build of torch; asking for plain 'torch' would pull a multi-GB CUDA build.
  .venv/bin/python -m pip install -q "torch==2.13.0"
  .venv/bin/python -m pip install -q -e ".[train,dev]"
else
  .venv/bin/python -m pip install -q -e .
fi
echo "edge-inspector ($profile) installed in .venv"
