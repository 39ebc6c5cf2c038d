#!/usr/bin/env bash
# Set up the aarch64 emulation target under <repo>/.aarch64 (git-ignored), idempotently:
#   sysroot/    Debian bookworm arm64 Python 3.11 (+ its shared libraries), unpacked with `apt-get download` + dpkg -x
#   pylib/      aarch64 wheels from PyPI (onnxruntime, numpy, pillow), unzipped; used as PYTHONPATH under qemu
#               + optionally openvino (+ openvino-telemetry) at the x86 venv's version; pylib/.openvino says
#               "ok <version>" or why not (no aarch64 wheel, or it does not import under qemu); OPENVINO=0 skips it
#   qemu/       qemu-aarch64 (static) from Debian bookworm-backports `qemu-user` 10.x (bookworm's 7.2 segfaults on ORT)
#   READY       written last, with the versions; benchmarks/bench_edge.py --aarch64 looks for it
# Uses a private apt configuration (no change to the system's apt state) and the Debian mirror host already
# configured in /etc/apt/sources.list*; override with AARCH64_DEBIAN_MIRROR=http://host/debian.
# ExecuTorch is not set up: its Python bindings take torch tensors, and torch is not in the guest.
# Versions: ORT_VERSION / NUMPY_VERSION / PILLOW_VERSION / OPENVINO_VERSION default to those of the x86 venv (.venv),
# so both sides run the same library versions. Re-running skips finished steps; FORCE=1 redoes everything; deleting
# READY redoes only the unfinished or optional steps (e.g. to retry OpenVINO once a wheel exists: rm .aarch64/READY).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ROOT="${AARCH64_ROOT:-$REPO/.aarch64}"
PY_HOST="${PY_HOST:-$REPO/.venv/bin/python}"
[ -x "$PY_HOST" ] || PY_HOST="$(command -v python3)"

step() { echo "[setup-aarch64] $*"; }
fail() { echo "error: aarch64 setup failed at step '$CURRENT': $*" >&2; exit 1; }
trap 'fail "command exited with status $? (line $LINENO: $BASH_COMMAND)"' ERR
CURRENT="start"

[ "${FORCE:-0}" = 1 ] && rm -rf "$ROOT"
mkdir -p "$ROOT"
if [ -f "$ROOT/READY" ] && grep -q '^openvino:' "$ROOT/READY"; then  # a READY without it predates step 4b
  step "already set up ($ROOT/READY):"; cat "$ROOT/READY"; exit 0
fi

# ---- 1. Debian mirror from the machine's own apt configuration -------------------------------------------------
CURRENT="find Debian mirror"
MIRROR="${AARCH64_DEBIAN_MIRROR:-}"
if [ -z "$MIRROR" ]; then
  MIRROR="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
    | grep -v '^\s*#' | grep -oE 'https?://[^ ]+/debian/?( |$)' | grep -v security | head -n1 | tr -d ' ' || true)"
fi
[ -n "$MIRROR" ] || fail "no Debian mirror found in /etc/apt/sources.list*; set AARCH64_DEBIAN_MIRROR=http://host/debian"
MIRROR="${MIRROR%/}"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
[ -f "$KEYRING" ] || fail "$KEYRING missing (apt-get install debian-archive-keyring)"
step "mirror: $MIRROR"

apt_private() {  # apt_private <name> <arch> <sources line...>: a private apt state under $ROOT/apt/<name>
  local name="$1" arch="$2"; shift 2
  local d="$ROOT/apt/$name"
  mkdir -p "$d/lists/partial" "$d/cache/archives/partial"
  printf '%s\n' "$@" >"$d/sources.list"
  : >"$d/status"
  APT_OPTS=(-o "Dir::Etc::SourceList=$d/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
            -o "Dir::State::Lists=$d/lists" -o "Dir::State::status=$d/status" -o "Dir::Cache=$d/cache"
            -o "APT::Architecture=$arch" -o "APT::Architectures=$arch" -o "Debug::NoLocking=1"
            -o "APT::Sandbox::User=root")
}

# ---- 2. qemu-aarch64 from bookworm-backports (amd64, static) -----------------------------------------------------
CURRENT="qemu-user from bookworm-backports"
QEMU="$ROOT/qemu/usr/bin/qemu-aarch64"
if [ ! -x "$QEMU" ]; then
  apt_private qemu amd64 "deb [arch=amd64 signed-by=$KEYRING] $MIRROR bookworm-backports main"
  step "apt-get update (bookworm-backports, amd64)"
  apt-get "${APT_OPTS[@]}" -qq update
  mkdir -p "$ROOT/debs/qemu"
  (cd "$ROOT/debs/qemu" && apt-get "${APT_OPTS[@]}" -qq download qemu-user)
  for f in "$ROOT"/debs/qemu/qemu-user_*.deb; do dpkg -x "$f" "$ROOT/qemu"; done
  [ -x "$QEMU" ] || fail "qemu-user package has no usr/bin/qemu-aarch64"
fi
QEMU_VERSION="$("$QEMU" --version | head -n1)"
case "$QEMU_VERSION" in *"version "[0-7].*) fail "need qemu-user >= 8 (got: $QEMU_VERSION)";; esac
step "$QEMU_VERSION"

# ---- 3. arm64 Python 3.11 sysroot --------------------------------------------------------------------------------
CURRENT="arm64 Python 3.11 sysroot"
SYSROOT="$ROOT/sysroot"
if [ ! -x "$SYSROOT/usr/bin/python3.11" ] || [ ! -f "$SYSROOT/.complete" ]; then
  apt_private arm64 arm64 "deb [arch=arm64 signed-by=$KEYRING] $MIRROR bookworm main"
  step "apt-get update (bookworm, arm64)"
  apt-get "${APT_OPTS[@]}" -qq update
  # Every library python3.11 and onnxruntime (libstdc++) need; perl/dpkg/tar are install-time only.
  PKGS="$(apt-cache "${APT_OPTS[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
           --no-replaces --no-enhances python3.11 libstdc++6 libgomp1 \
         | grep -vE '^\s|^<' | sort -u | grep -vE '^(perl|perl-base|perl-modules-.*|libperl.*|dpkg|tar|install-info|debconf)$')"
  step "downloading $(echo "$PKGS" | wc -w) arm64 packages"
  mkdir -p "$ROOT/debs/arm64"
  (cd "$ROOT/debs/arm64" && apt-get "${APT_OPTS[@]}" -qq download $PKGS)
  rm -rf "$SYSROOT"; mkdir -p "$SYSROOT"
  for f in "$ROOT"/debs/arm64/*.deb; do dpkg -x "$f" "$SYSROOT"; done
  touch "$SYSROOT/.complete"
fi
[ -x "$SYSROOT/usr/bin/python3.11" ] || fail "python3.11 not in the sysroot"

# ---- 4. aarch64 wheels (same versions as the x86 venv) ------------------------------------------------------------
CURRENT="aarch64 wheels from PyPI"
host_version() { "$PY_HOST" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true; }
ORT_VERSION="${ORT_VERSION:-$(host_version onnxruntime)}"
NUMPY_VERSION="${NUMPY_VERSION:-$(host_version numpy)}"
PILLOW_VERSION="${PILLOW_VERSION:-$(host_version pillow)}"
pin() { if [ -n "$2" ]; then echo "$1==$2"; else echo "$1"; fi; }
PYLIB="$ROOT/pylib"
if [ ! -f "$PYLIB/.complete" ]; then
  mkdir -p "$ROOT/wheels"
  step "pip download $(pin onnxruntime "$ORT_VERSION") $(pin numpy "$NUMPY_VERSION") $(pin pillow "$PILLOW_VERSION") (manylinux_2_28_aarch64, cp311)"
  "$PY_HOST" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 --implementation cp \
    --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 \
    -d "$ROOT/wheels" "$(pin onnxruntime "$ORT_VERSION")" "$(pin numpy "$NUMPY_VERSION")" "$(pin pillow "$PILLOW_VERSION")"
  rm -rf "$PYLIB"; mkdir -p "$PYLIB"
  for w in "$ROOT"/wheels/*aarch64*.whl; do
    "$PY_HOST" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$w" "$PYLIB"
  done
  touch "$PYLIB/.complete"
fi

# ---- 4b. optional: the aarch64 OpenVINO wheel (same version as the x86 venv) ---------------------------------------
CURRENT="optional OpenVINO aarch64 wheel"
OPENVINO_VERSION="${OPENVINO_VERSION:-$(host_version openvino)}"
TELEMETRY_VERSION="${TELEMETRY_VERSION:-$(host_version openvino-telemetry)}"
if [ "${OPENVINO:-1}" = 0 ]; then
  echo "skipped (OPENVINO=0)" >"$PYLIB/.openvino"
elif [ -z "$OPENVINO_VERSION" ]; then
  echo "skipped (openvino is not installed in the x86 venv, nothing to compare with)" >"$PYLIB/.openvino"
elif ! grep -q "^ok $OPENVINO_VERSION\$" "$PYLIB/.openvino" 2>/dev/null; then
  rm -rf "$ROOT/wheels-openvino"; mkdir -p "$ROOT/wheels-openvino"
  step "pip download openvino==$OPENVINO_VERSION $(pin openvino-telemetry "$TELEMETRY_VERSION") (aarch64, cp311; optional)"
  # OpenVINO's aarch64 wheels are tagged manylinux_2_35 (2026.x): accept every tag bookworm's glibc 2.36 runs (pip
  # does not expand manylinux_2_X --platform tags downwards, so list them).
  PLATFORMS=(--platform manylinux2014_aarch64)
  for v in $(seq 17 36); do PLATFORMS+=(--platform "manylinux_2_${v}_aarch64"); done
  if OUT="$("$PY_HOST" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 --implementation cp \
        "${PLATFORMS[@]}" -d "$ROOT/wheels-openvino" "openvino==$OPENVINO_VERSION" \
        "$(pin openvino-telemetry "$TELEMETRY_VERSION")" 2>&1)"; then
    rm -rf "$PYLIB"/openvino "$PYLIB"/openvino-*.dist-info "$PYLIB"/openvino_telemetry*  # another version's files
    for w in "$ROOT"/wheels-openvino/*.whl; do
      "$PY_HOST" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$w" "$PYLIB"
    done
    echo "ok $OPENVINO_VERSION" >"$PYLIB/.openvino"
  else
    echo "no aarch64 wheel of openvino==$OPENVINO_VERSION for cp311 fetched: $(echo "$OUT" | grep -i error | head -n1 \
      | cut -c1-200)" >"$PYLIB/.openvino"
    step "note: OpenVINO skipped: $(cat "$PYLIB/.openvino")"
  fi
fi

# ---- 5. smoke check under emulation --------------------------------------------------------------------------------
CURRENT="import check under qemu"
step "checking: python3.11 + onnxruntime under qemu-aarch64 (takes ~10-30 s)"
CHECK="$(env -i PATH=/usr/bin:/bin PYTHONPATH="$PYLIB" PYTHONNOUSERSITE=1 "$QEMU" -L "$SYSROOT" \
  "$SYSROOT/usr/bin/python3.11" -c \
  "import platform, numpy, onnxruntime as ort; print(platform.machine(), 'python', platform.python_version(), 'numpy', numpy.__version__, 'onnxruntime', ort.__version__, ort.get_available_providers())" 2>&1)" \
  || fail "python under qemu failed: $CHECK"
CHECK="$(echo "$CHECK" | grep '^aarch64 python' | head -n1)" || true
[ -n "$CHECK" ] || fail "python under qemu did not report aarch64"
echo "$CHECK"

CURRENT="OpenVINO import check under qemu (optional)"
OV_STATE="$(cat "$PYLIB/.openvino")"
if [ "${OV_STATE%% *}" = ok ]; then
  step "checking: openvino under qemu-aarch64 (optional)"
  if OV_CHECK="$(env -i PATH=/usr/bin:/bin PYTHONPATH="$PYLIB" PYTHONNOUSERSITE=1 timeout 600 "$QEMU" -cpu cortex-a76 \
      -L "$SYSROOT" "$SYSROOT/usr/bin/python3.11" -c \
      "import openvino as ov; print('openvino', ov.get_version().split('-')[0], ov.Core().available_devices)" 2>&1)" \
     && OV_LINE="$(echo "$OV_CHECK" | grep '^openvino ' | head -n1)" && [ -n "$OV_LINE" ]; then
    OV_STATE="$OV_LINE"
  else
    OV_STATE="$OPENVINO_VERSION installed but does not import under qemu: $(echo "$OV_CHECK" | tail -n1 | cut -c1-200)"
  fi
  echo "$OV_STATE"
fi

{ echo "qemu: $QEMU_VERSION"; echo "guest: $CHECK"; echo "openvino: $OV_STATE"
  echo "executorch: not set up (its Python bindings need torch in the guest)"; echo "mirror: $MIRROR"
  date -u +"set up: %Y-%m-%dT%H:%M:%SZ"; } \
  >"$ROOT/READY.tmp" && mv "$ROOT/READY.tmp" "$ROOT/READY"
step "done: $ROOT"
