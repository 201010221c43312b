#!/usr/bin/env bash
# Install the OpenMMLab detection engine -- mmcv 2.1.0 with its compiled ops, mmengine 0.10.7, mmdet 3.3.0 -- into
# the current Python environment, against the torch already installed there (which it never replaces).
#
#   bash scripts/install_detection.sh
#
# mmcv 2.1.0 is on PyPI only as source and does not build as is against torch 2.14 (its setup.py needs pkg_resources
# and asks for C++17; torch's headers need C++20), so this script builds it from the sdist with setuptools < 82 and
# -std=c++20 (about 6 minutes on 2 cores), keeps the wheel in a cache folder and installs from there next time
# (seconds). Nothing to do when `import mmdet, mmcv.ops` already works with these versions.
#
# Environment:
#   PYTHON=python3            the interpreter whose environment receives the packages (default: python3 on PATH)
#   AIMV2_EVAL_MMCV_CUDA=1    also build mmcv's CUDA ops (needs nvcc and a CUDA build of torch); default: CPU ops only
#   MAX_JOBS=N                parallel compile jobs (default: the number of CPU cores, at most 8)
#   AIMV2_EVAL_CACHE=DIR      where built wheels and logs are kept (default: ${XDG_CACHE_HOME:-~/.cache}/aimv2-eval)
#   AIMV2_EVAL_REBUILD=1      ignore a cached wheel, build mmcv again and reinstall
#
# On failure it prints one line naming the step that failed and what to try, keeps the full output in a log file
# under $AIMV2_EVAL_CACHE/logs/, and exits with status 1.
set -euo pipefail

MMCV_VERSION=2.1.0
MMENGINE_VERSION=0.10.7
MMDET_VERSION=3.3.0

PY="${PYTHON:-python3}"
CUDA_OPS="${AIMV2_EVAL_MMCV_CUDA:-0}"
CACHE="${AIMV2_EVAL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/aimv2-eval}"
START=$SECONDS
LOG=""
WORK=""

say() { echo "aimv2-eval: $*"; }
# fail STEP REASON HINT -- the one line a user sees when something goes wrong.
fail() {
    local where=""
    [[ -n "$LOG" ]] && where="; see $LOG"
    echo "aimv2-eval: $1 failed ($2)$where; $3" >&2
    exit 1
}
cleanup() { [[ -n "$WORK" ]] && rm -rf "$WORK"; return 0; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 1. the Python environment and its torch --------------------------------------------------------------------------
command -v "$PY" >/dev/null 2>&1 \
    || fail "finding Python" "no '$PY' on PATH" "activate the environment to install into, or set PYTHON=/path/to/python"
# Prints, tab-separated: torch version, torch CUDA version (or none), python tag, prefix, torch location.
TORCH_INFO_PY='
import importlib.metadata as md, os, sys
import torch
print(md.version("torch"), torch.version.cuda or "none", "cp%d%d" % sys.version_info[:2], sys.prefix,
      os.path.dirname(torch.__file__), sep="\t")
'
torch_info() { "$PY" -c "$TORCH_INFO_PY" 2>/dev/null; }
TORCH_BEFORE="$(torch_info)" \
    || fail "importing torch with $PY" "torch is not installed or does not import" \
        "install it first: $PY -m pip install torch==2.14.1 torchvision==0.29.1 (README, Quick start)"
IFS=$'\t' read -r TORCH_VERSION TORCH_CUDA PY_TAG PREFIX _ <<<"$TORCH_BEFORE"

if [[ "$CUDA_OPS" == 1 ]]; then
    VARIANT="cuda$TORCH_CUDA"
    [[ "$TORCH_CUDA" != none ]] \
        || fail "checking for CUDA" "torch $TORCH_VERSION is a CPU-only build" \
            "install a CUDA build of torch, or unset AIMV2_EVAL_MMCV_CUDA for CPU ops"
    NVCC="${CUDA_HOME:+$CUDA_HOME/bin/}nvcc"
    command -v "$NVCC" >/dev/null 2>&1 \
        || fail "checking for CUDA" "no nvcc on PATH or in \$CUDA_HOME/bin" \
            "install the CUDA toolkit $TORCH_CUDA (matching torch) and set CUDA_HOME, or unset AIMV2_EVAL_MMCV_CUDA for CPU ops"
else
    VARIANT=cpu
fi
OPS_LABEL="$([[ "$VARIANT" == cpu ]] && echo "CPU ops" || echo "CPU+CUDA ops")"

# --- 2. already installed? --------------------------------------------------------------------------------------------
CHECK_PY='
import sys
import mmcv, mmdet, mmengine
import mmcv.ops
from mmcv.ops import RoIAlign, nms
want = dict(mmcv=sys.argv[1], mmengine=sys.argv[2], mmdet=sys.argv[3])
have = dict(mmcv=mmcv.__version__, mmengine=mmengine.__version__, mmdet=mmdet.__version__)
assert have == want, f"have {have}, want {want}"
if sys.argv[4] == "1":
    assert mmcv.ops.get_compiling_cuda_version() != "not available", "mmcv was built without CUDA ops"
'
installed_ok() { "$PY" -c "$CHECK_PY" "$MMCV_VERSION" "$MMENGINE_VERSION" "$MMDET_VERSION" "$CUDA_OPS" >/dev/null 2>&1; }

if [[ "${AIMV2_EVAL_REBUILD:-0}" != 1 ]] && installed_ok; then
    say "mmcv $MMCV_VERSION, mmengine $MMENGINE_VERSION and mmdet $MMDET_VERSION already work with torch $TORCH_VERSION in $PREFIX; nothing to do"
    exit 0
fi

mkdir -p "$CACHE/logs" || fail "creating the cache folder $CACHE" "not writable" "set AIMV2_EVAL_CACHE to a writable folder"
LOG="$CACHE/logs/install_detection-$(date +%Y%m%d-%H%M%S)-$$.log"
{
    echo "# $(date -Is) install_detection.sh: mmcv $MMCV_VERSION ($VARIANT), mmengine $MMENGINE_VERSION, mmdet $MMDET_VERSION"
    echo "# python: $(command -v "$PY") ($PY_TAG, prefix $PREFIX); torch $TORCH_VERSION (CUDA $TORCH_CUDA)"
} >"$LOG"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/aimv2-eval-mmcv.XXXXXX")"
pip_() { "$PY" -m pip --disable-pip-version-check "$@"; }
# step NAME REASON HINT -- CMD...: run CMD with its output in the log; on failure, the one line and exit 1.
step() {
    local name="$1" reason="$2" hint="$3"
    shift 4
    echo "# --- $name: $*" >>"$LOG"
    "$@" >>"$LOG" 2>&1 || fail "$name" "$reason" "$hint"
}

# --- 3. the mmcv wheel: from the cache, or built from source ----------------------------------------------------------
# A wheel with compiled ops only works with the torch (and Python) it was built against: that is the cache key.
WHEEL_DIR="$CACHE/wheels/mmcv-$MMCV_VERSION/$PY_TAG-torch$TORCH_VERSION-$VARIANT"
wheel_in_cache() { compgen -G "$WHEEL_DIR/mmcv-$MMCV_VERSION-*.whl" | head -n 1; }
WHEEL="$(wheel_in_cache || true)"
if [[ -n "$WHEEL" && "${AIMV2_EVAL_REBUILD:-0}" != 1 ]]; then
    say "using the mmcv $MMCV_VERSION wheel built before for torch $TORCH_VERSION ($OPS_LABEL): $WHEEL"
else
    # Preflight: what a compile needs, checked before a 6-minute build rather than after it.
    PY_INCLUDE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
    [[ -f "$PY_INCLUDE/Python.h" ]] \
        || fail "checking the Python headers" "no Python.h in $PY_INCLUDE" \
            "install your Python's development package (Debian/Ubuntu: apt-get install python3-dev)"
    # torch compiles with $CXX (default c++) and links with $CC when it is set: both must work, the first with C++20.
    printf 'int main() { return 0; }\n' >"$WORK/probe.c"
    read -ra CXX_CMD <<<"${CXX:-c++}"
    echo "# --- checking the C++ compiler: ${CXX_CMD[*]} -std=c++20" >>"$LOG"
    "${CXX_CMD[@]}" -std=c++20 -x c++ "$WORK/probe.c" -o "$WORK/probe" >>"$LOG" 2>&1 \
        || fail "checking the C++ compiler" "'${CXX:-c++}' is missing or cannot compile C++20" \
            "you need gcc/g++ >= 10 (Debian/Ubuntu: apt-get install build-essential), or point CXX at one"
    if [[ -n "${CC:-}" ]]; then
        read -ra CC_CMD <<<"$CC"
        echo "# --- checking the C compiler/linker: ${CC_CMD[*]}" >>"$LOG"
        "${CC_CMD[@]}" "$WORK/probe.c" -o "$WORK/probe" >>"$LOG" 2>&1 \
            || fail "checking the C compiler" "CC='$CC' is missing or does not work" \
                "unset CC or point it at a working gcc/cc"
    fi

    # Build tools go into a private folder put first on PYTHONPATH: the environment's own setuptools is left alone.
    TOOLS="$WORK/tools"
    TOOL_PKGS=("setuptools>=64,<82")
    command -v ninja >/dev/null 2>&1 || TOOL_PKGS+=("ninja")   # without ninja the ops compile one file at a time
    step "installing the build tools (${TOOL_PKGS[*]})" "pip could not install them" \
        "check that pip can reach your package index" -- \
        pip_ install --no-input --target "$TOOLS" "${TOOL_PKGS[@]}"
    BUILD_ENV=(env "PYTHONPATH=$TOOLS${PYTHONPATH:+:$PYTHONPATH}" "PATH=$TOOLS/bin:$PATH")

    step "downloading the mmcv $MMCV_VERSION source" "pip could not download the sdist" \
        "check that pip can reach your package index (mmcv $MMCV_VERSION is on PyPI as source only)" -- \
        "${BUILD_ENV[@]}" "$PY" -m pip --disable-pip-version-check download --no-input --no-deps \
            --no-build-isolation --no-binary :all: "mmcv==$MMCV_VERSION" -d "$WORK/src"
    step "unpacking the mmcv $MMCV_VERSION source" "tar failed" "check the free space in ${TMPDIR:-/tmp}" -- \
        tar xzf "$WORK/src/mmcv-$MMCV_VERSION.tar.gz" -C "$WORK/src"
    SRC="$WORK/src/mmcv-$MMCV_VERSION"
    # torch >= 2.10's headers need C++20; mmcv 2.1.0 asks for C++17 (C++14 in places).
    step "patching mmcv's setup.py for C++20" "sed failed" "report this" -- \
        sed -i "s/c++17/c++20/g; s/-std=c++14/-std=c++20/g" "$SRC/setup.py"
    if grep -q -- "-std=c++1[47]" "$SRC/setup.py" || ! grep -q -- "-std=c++20" "$SRC/setup.py"; then
        fail "patching mmcv's setup.py for C++20" "the source does not look like mmcv $MMCV_VERSION's" "report this"
    fi

    NCPU="$(nproc 2>/dev/null || echo 2)"
    JOBS="${MAX_JOBS:-$((NCPU < 8 ? NCPU : 8))}"
    if [[ "$VARIANT" == cpu ]]; then
        # mmcv's setup.py builds the CUDA ops whenever torch sees a GPU; hide it for a CPU-ops build.
        OPS_ENV=(FORCE_CUDA=0 CUDA_VISIBLE_DEVICES=)
        say "building mmcv $MMCV_VERSION from source with CPU ops, $JOBS jobs (about 6 minutes on 2 cores); log: $LOG"
    else
        OPS_ENV=(FORCE_CUDA=1)
        say "building mmcv $MMCV_VERSION from source with CPU and CUDA $TORCH_CUDA ops, $JOBS jobs (long: tens of minutes); log: $LOG"
    fi
    echo "# --- building mmcv $MMCV_VERSION from source" >>"$LOG"
    if ! "${BUILD_ENV[@]}" MMCV_WITH_OPS=1 "${OPS_ENV[@]}" MAX_JOBS="$JOBS" CFLAGS="${CFLAGS:-} -g0" \
        "$PY" -m pip --disable-pip-version-check wheel -v --no-input --no-deps --no-build-isolation --use-pep517 \
            -w "$WORK/wheel" "$SRC" >>"$LOG" 2>&1; then
        # Name the likely cause from the log.
        if grep -q "Python.h: No such file" "$LOG"; then
            fail "building mmcv $MMCV_VERSION from source" "Python headers missing" \
                "install your Python's development package (Debian/Ubuntu: apt-get install python3-dev)"
        elif grep -qE "Killed|internal compiler error|virtual memory exhausted|out of memory" "$LOG"; then
            fail "building mmcv $MMCV_VERSION from source" "the compiler ran out of memory" \
                "retry with fewer parallel jobs: MAX_JOBS=1 bash scripts/install_detection.sh"
        elif grep -qE "\.(cpp|cu|h|hpp|cuh):[0-9]+:[0-9]+: (fatal )?error" "$LOG"; then
            fail "building mmcv $MMCV_VERSION from source" "compiler error" \
                "you need gcc/g++ >= 10 with C++20 support, the Python headers and torch's own headers"
        elif grep -qE "ninja: build stopped|error: command .* failed|No such file or directory: '[^']*(cc|\+\+|nvcc)'|CalledProcessError: Command '\['[^']*(cc|\+\+|nvcc|false)'|FAILED: " "$LOG"; then
            fail "building mmcv $MMCV_VERSION from source" "the compiler did not run" \
                "you need a working gcc/g++ >= 10 (check \$CC/\$CXX: CC=${CC:-unset}, CXX=${CXX:-unset})"
        else
            fail "building mmcv $MMCV_VERSION from source" "setup.py failed" \
                "the last lines of the log say why; you need gcc/g++ >= 10 and the Python headers"
        fi
    fi
    BUILT="$(compgen -G "$WORK/wheel/mmcv-$MMCV_VERSION-*.whl" | head -n 1 || true)"
    [[ -n "$BUILT" ]] || fail "building mmcv $MMCV_VERSION from source" "pip produced no wheel" "see the end of the log"
    mkdir -p "$WHEEL_DIR" || fail "storing the mmcv wheel" "$WHEEL_DIR is not writable" "set AIMV2_EVAL_CACHE"
    WHEEL="$WHEEL_DIR/$(basename "$BUILT")"
    # Copy then rename, so that an interrupted copy never leaves a half wheel that a later run would trust.
    { cp "$BUILT" "$WHEEL.part" && mv -f "$WHEEL.part" "$WHEEL"; } \
        || fail "storing the mmcv wheel" "could not copy it to $WHEEL_DIR" "check the free space there"
    say "built mmcv $MMCV_VERSION in $((SECONDS - START)) s; wheel kept in $WHEEL_DIR"
fi

# --- 4. install, without touching torch ---------------------------------------------------------------------------------
# Every later pip call is constrained to the torch (and torchvision, numpy) that are installed now.
PINS_PY='
import importlib.metadata as md
for name in ("torch", "torchvision", "numpy"):
    try:
        print(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        pass
'
"$PY" -c "$PINS_PY" >"$WORK/constraints.txt"
echo "mmcv==$MMCV_VERSION" >>"$WORK/constraints.txt"
{ echo "# constraints:"; cat "$WORK/constraints.txt"; } >>"$LOG"

# --no-deps: mmcv's own requirements are pure Python and installed next, under the constraints.
step "installing the mmcv $MMCV_VERSION wheel" "pip could not install $WHEEL" \
    "delete $WHEEL_DIR and run again to rebuild it" -- \
    pip_ install --no-input --no-deps --force-reinstall "$WHEEL"
# mmcv 2.1.0's requirements/runtime.txt (addict, mmengine, numpy, packaging, Pillow, pyyaml, yapf; opencv from its
# setup.py), then mmengine and mmdet, whose own requirements (matplotlib, pycocotools, scipy, shapely, six,
# terminaltables, tqdm, rich, termcolor) pip resolves; none of them asks for torch.
step "installing mmengine $MMENGINE_VERSION, mmdet $MMDET_VERSION and mmcv's requirements" \
    "pip could not resolve them without changing torch $TORCH_VERSION" \
    "check that pip can reach your package index; the constraints pip was given are in the log" -- \
    pip_ install --no-input -c "$WORK/constraints.txt" addict numpy packaging Pillow pyyaml yapf opencv-python \
        "mmengine==$MMENGINE_VERSION" "mmdet==$MMDET_VERSION"

TORCH_AFTER="$(torch_info || echo "missing")"
if [[ "$TORCH_AFTER" != "$TORCH_BEFORE" ]]; then
    fail "keeping torch unchanged" "torch was '$TORCH_BEFORE' before and is '$TORCH_AFTER' now" \
        "reinstall it: $PY -m pip install torch==$TORCH_VERSION, and report this"
fi

# --- 5. check ---------------------------------------------------------------------------------------------------------
VERIFY_PY='
import os, torch
import mmdet
from mmcv.ops import RoIAlign, nms
from mmengine.config import Config
dets, keep = nms(torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.float32),
                 torch.tensor([0.9, 0.8, 0.7]), 0.5)
assert keep.tolist() == [0, 2], keep
RoIAlign((7, 7), 1.0, 0)(torch.rand(1, 4, 16, 16), torch.tensor([[0, 0, 0, 8, 8]], dtype=torch.float32))
Config.fromfile(os.path.join(os.path.dirname(mmdet.__file__), ".mim/configs/_base_/models/mask-rcnn_r50_fpn.py"))
'
step "checking the installed engine (mmcv.ops nms/RoIAlign, a Mask R-CNN config)" "it does not run" \
    "run again with AIMV2_EVAL_REBUILD=1; if that fails too, report this with the log" -- \
    "$PY" -c "$VERIFY_PY"
installed_ok || fail "checking the installed versions" "import mmdet, mmcv.ops gives other versions" \
    "another mmcv/mmdet may shadow this one on sys.path; run again with AIMV2_EVAL_REBUILD=1"

say "installed mmcv $MMCV_VERSION ($OPS_LABEL), mmengine $MMENGINE_VERSION, mmdet $MMDET_VERSION with torch $TORCH_VERSION in $PREFIX in $((SECONDS - START)) s (log: $LOG)"
