#!/usr/bin/env bash
# Installs what sagellm needs to build and test: Debian packages by name, and the Python oracles
# (CPU-side torch, transformers, tokenizers) used only by the differential tests. Idempotent: a
# second run installs nothing.
set -euo pipefail

packages=(
  build-essential cmake pkg-config python3 python3-pip
  nlohmann-json3-dev libcpp-httplib-dev libcli11-dev libspdlog-dev libfmt-dev libpcre2-dev
  libopenblas-dev libgtest-dev libgmock-dev libbenchmark-dev
  chromium  # renders validate's report.html in a test
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  sudo=""
  if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
  echo "install-deps: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [[ "${SAGELLM_SKIP_PYTHON:-0}" != "1" ]]; then
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  py=${PYTHON:-python3}
  if ! "$py" - "$here/requirements-test.txt" <<'PY' 2>/dev/null; then
import sys
from importlib.metadata import version
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if not line:
        continue
    name, want = line.split("==")
    if version(name) != want:
        raise SystemExit(1)
PY
    echo "install-deps: installing Python test oracles"
    "$py" -m pip install -q --disable-pip-version-check -r "$here/requirements-test.txt"
  fi
fi
echo "install-deps: ok"
