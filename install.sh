#!/usr/bin/env bash
# Set up slimtrain on a fresh Debian/Ubuntu machine: the system packages of the speech case studies
# (apt-packages.txt), the unpacked extra corpora (apt-unpack.txt), a virtual environment .venv with the
# CPU build of torch and slimtrain with its [dev] extras. The README's set-up command and CI (.ci/run)
# both run this script, so what CI tests is what a user gets.
#
#   bash install.sh            # everything (uses sudo for apt when not root)
#   SLIMTRAIN_SKIP_APT=1 bash install.sh   # Python only (the speech-corpus tests then fail under CI=true)
set -euo pipefail
cd "$(dirname "$0")"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo > /dev/null || { echo "install.sh: not root and no sudo: run as root, or set SLIMTRAIN_SKIP_APT=1" >&2; exit 1; }
  SUDO="sudo"
fi

if [ "${SLIMTRAIN_SKIP_APT:-0}" != "1" ]; then
  command -v apt-get > /dev/null || { echo "install.sh: apt-get not found: install the packages of apt-packages.txt by hand, then rerun with SLIMTRAIN_SKIP_APT=1" >&2; exit 1; }
  export DEBIAN_FRONTEND=noninteractive
  echo "== system packages (apt-packages.txt)"
  $SUDO apt-get update -qq || echo "apt-get update failed; trying the package lists already on this machine"
  # python3 and python3-venv: a minimal Debian has no python3, and no venv module without python3-venv
  $SUDO apt-get install -y -qq --no-install-recommends python3 python3-venv $(grep -v '^#' apt-packages.txt) > /dev/null
  # packages that conflict with the ones above are unpacked instead (extended corpora; see apt-unpack.txt)
  DEB_DIR="${SLIMTRAIN_DEB_DIR:-/opt/slimtrain/debs}"
  TMP_DEBS="$(mktemp -d)"
  chmod 755 "$TMP_DEBS"  # apt's download user must be able to write there
  echo "== unpacked corpora (apt-unpack.txt) -> $DEB_DIR"
  for p in $(grep -v '^#' apt-unpack.txt); do
    (cd "$TMP_DEBS" && apt-get download -qq "$p" 2> /dev/null) || { echo "install.sh: could not download $p" >&2; exit 1; }
    $SUDO mkdir -p "$DEB_DIR/$p"
    $SUDO dpkg-deb -x "$TMP_DEBS/${p}"_*.deb "$DEB_DIR/$p"
    dpkg-deb -f "$TMP_DEBS/${p}"_*.deb Version | $SUDO tee "$DEB_DIR/$p/VERSION" > /dev/null
  done
  rm -rf "$TMP_DEBS"
fi

echo "== Python environment (.venv)"
python3 -m venv .venv
. .venv/bin/activate
# the CPU build of torch (a plain `pip install torch` would pull a multi-GB CUDA build)
python -m pip install --quiet torch==2.13.0
python -m pip install --quiet -e ".[dev]"
echo "== installed: activate with  . .venv/bin/activate"
