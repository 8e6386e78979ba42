#!/usr/bin/env bash
# Set up edge-inspector in ./.venv on a fresh Debian/Ubuntu machine (or Jetson).
#   deploy/install.sh          run-time only: the line, ONNX Runtime, MQTT (no torch)
#   deploy/install.sh dev      + training/calibration (torch CPU build) + test and benchmark tools (the 'dev'
#                              extra, with the ELPV benchmark data) + a Mosquitto broker binary
#                              + Debian's chromium for the dashboard's browser test
# On a Jetson (/etc/nv_tegra_release exists) the venv sees the system's Python packages, so JetPack's own TensorRT
# (python3-libnvinfer) is used; TensorRT is never installed from PyPI there (PyPI's aarch64 wheels are for ARM
# servers and would shadow JetPack's). pycuda is built against JetPack's CUDA. On a desktop GPU, add the extra for
# your driver afterwards: .venv/bin/pip install -e '.[tensorrt-cu12]' (or tensorrt-cu13, driver 580+).
# Safe to run again: it only adds what is missing. DRY_RUN=1 prints the commands instead of running them.
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-runtime}"
case "$profile" in runtime|dev) ;; *) echo "usage: $0 [runtime|dev]" >&2; exit 2;; esac
tegra_release="${EDGE_INSPECTOR_TEGRA_RELEASE:-/etc/nv_tegra_release}"
jetson=""; [ -f "$tegra_release" ] && jetson=1

run() {
  if [ -n "${DRY_RUN:-}" ]; then echo "+ $*"; else "$@"; fi
}

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
# The dashboard test drives Debian's Chromium through Playwright (never Playwright's own browser download).
if [ "$profile" = dev ] && [ ! -x /usr/bin/chromium ]; then
  apt_packages+=(chromium)
fi
# The TLS tests make throw-away certificates with openssl (mosquitto_passwd comes with mosquitto).
if [ "$profile" = dev ] && ! command -v openssl >/dev/null; then
  apt_packages+=(openssl)
fi
# pycuda compiles on a Jetson: it needs a compiler and the Python headers (JetPack brings CUDA's).
if [ -n "$jetson" ]; then
  command -v g++ >/dev/null || apt_packages+=(g++)
  python3 -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))' \
    || apt_packages+=(python3-dev)
fi
if [ ${#apt_packages[@]} -gt 0 ]; then
  echo "installing system packages: ${apt_packages[*]}"
  sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  run $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive run $sudo_cmd apt-get install -y -qq --no-install-recommends "${apt_packages[@]}"
fi

python="${PYTHON:-python3}"
if [ -n "$jetson" ]; then
  echo "Jetson detected ($(head -n 1 "$tegra_release")): venv with system site packages, JetPack's TensorRT"
  # Re-running venv on an existing .venv keeps its packages and switches the system site packages on.
  run "$python" -m venv --system-site-packages .venv
else
  [ -x .venv/bin/python ] || run "$python" -m venv .venv
fi
run .venv/bin/python -m pip install -q --upgrade pip
extras=""
[ -n "$jetson" ] && extras="pycuda"
if [ "$profile" = dev ]; then
  # The CPU build of torch; asking for plain 'torch' would pull a multi-GB CUDA build.
  run .venv/bin/python -m pip install -q "torch==2.13.0"
  extras="${extras:+$extras,}train,dev"
fi
if [ -n "$jetson" ]; then
  PATH="/usr/local/cuda/bin:$PATH" run .venv/bin/python -m pip install -q -e ".[$extras]"
  if [ -z "${DRY_RUN:-}" ] && ! .venv/bin/python -c "import tensorrt" 2>/dev/null; then
    echo "JetPack's TensorRT is not visible: sudo apt-get install python3-libnvinfer (the line runs on ONNX Runtime until then)" >&2
  fi
else
  run .venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
fi
echo "edge-inspector ($profile) installed in .venv"
