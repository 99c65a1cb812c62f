#!/usr/bin/env bash
# Creates (or completes) the Python environment ltdet2 runs in.
#
#   bash scripts/setup_env.sh [VENV]        (default: .venv; `make setup` calls this)
#
# Steps, each reported as "[setup] step k/6"; a failed step says which and what to do.
# The environment is marked ready (VENV/.ltdet2-ready) only after the last step passed, so an
# interrupted set-up is never mistaken for a good one. A virtualenv whose creation by this script
# did not finish (VENV/.ltdet2-creating) is removed and made again; any other environment is
# completed in place by re-running the (idempotent) steps: an environment the user pointed at
# (VENV=/path/to/env) is never deleted, and torch / detectron2 already importable there (for example
# a CUDA build compiled from source) are left as they are.
#
# Versions: pyproject.toml states the ranges ltdet2 needs; constraints.txt (repo root) holds the exact
# tested versions (torch, torchvision, detectron2, ruff), and every install here runs under it (pip -c),
# except that a torch already in the environment is kept and the rest is constrained to it.
set -uo pipefail

VENV=${1:-.venv}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON_BOOTSTRAP=${PYTHON:-python3}
PINS="$ROOT/constraints.txt"
READY="$VENV/.ltdet2-ready"
CREATING="$VENV/.ltdet2-creating"
TOTAL=6
STEP=0

step() { STEP=$((STEP + 1)); echo "[setup] step $STEP/$TOTAL: $1"; }
fail() {
  echo "[setup] FAILED at step $STEP/$TOTAL: $1" >&2
  echo "[setup] what to do: $2" >&2
  echo "[setup] the environment in '$VENV' is NOT marked ready; rerun 'make setup' after fixing the cause." >&2
  exit 1
}

if [ -f "$READY" ]; then
  echo "[setup] $VENV is ready (remove $READY to force a re-check)"
  exit 0
fi

step "python environment in $VENV"
[ -f "$PINS" ] || fail "$PINS is missing (the tested versions the set-up installs)" "restore it: git checkout -- constraints.txt"
if [ -f "$CREATING" ]; then
  echo "[setup] creating $VENV did not finish last time: removing it and starting again"
  rm -rf "$VENV"
fi
if [ ! -e "$VENV" ]; then
  mkdir -p "$VENV" && touch "$CREATING"
  "$PYTHON_BOOTSTRAP" -m venv "$VENV" || fail "could not create a virtualenv with '$PYTHON_BOOTSTRAP -m venv $VENV'" \
    "install the venv module for Python >= 3.10 (Debian: apt-get install python3-venv), or set PYTHON=/path/to/python3"
  rm -f "$CREATING"
fi
PY="$VENV/bin/python"
[ -x "$PY" ] || fail "$VENV exists but has no bin/python" "remove $VENV (make clean-venv) or point VENV at a Python environment"
"$PY" -c 'import sys; assert sys.version_info >= (3, 10), sys.version' 2>/dev/null \
  || fail "$PY is older than Python 3.10" "point PYTHON at a Python >= 3.10 and remove $VENV"
"$PY" -m pip --version >/dev/null 2>&1 \
  || fail "$PY has no pip" "remove $VENV (make clean-venv) and rerun; on Debian install python3-venv first"
PIP=("$PY" -m pip --disable-pip-version-check)
if ! "$PY" -c 'import tomllib' 2>/dev/null; then  # Python 3.10 reads pyproject.toml with tomli
  "${PIP[@]}" install tomli || fail "pip could not install tomli" "check that PyPI is reachable"
fi

step "torch and torchvision"
if "$PY" -c 'import torch, torchvision' 2>/dev/null; then
  echo "[setup] keeping the installed $("$PY" -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)')"
else
  TORCH_REQS=$("$PY" "$ROOT/scripts/_read_requirements.py" "$ROOT/pyproject.toml" --only torch torchvision) \
    || fail "could not read the torch requirements from pyproject.toml" "check pyproject.toml is valid TOML"
  TORCH_PINS=$("$PY" "$ROOT/scripts/_read_requirements.py" "$PINS" --only torch torchvision) \
    || fail "could not read the torch pins from $PINS" "check $PINS (one name==version a line)"
  # TORCH=auto|cpu|cuda (scripts/_torch_variant.py): the CPU-only build where no NVIDIA GPU is seen
  TORCH_PLAN=$("$PY" "$ROOT/scripts/_torch_variant.py") \
    || fail "no torch build to install for TORCH=${TORCH:-auto} (the line above says why)" \
       "set TORCH_CPU_INDEX to a reachable mirror of the CPU index, or TORCH=cuda"
  TORCH_VARIANT=$(echo "$TORCH_PLAN" | sed -n 1p)
  TORCH_INDEX_ARGS=$(echo "$TORCH_PLAN" | sed -n 2p)
  # shellcheck disable=SC2086
  "${PIP[@]}" install -c "$PINS" $TORCH_INDEX_ARGS $TORCH_REQS \
    || fail "pip could not install $(echo $TORCH_PINS) (constraints.txt, $TORCH_VARIANT build)" \
       "check that the index is reachable and has these versions for $("$PY" -V); or install torch yourself in $VENV and rerun"
  # pip also reads extra indexes from its own configuration: make sure a CPU request did not get a CUDA build
  if [ "$TORCH_VARIANT" = cpu ]; then
    "$PY" -c 'import sys, torch; sys.exit(torch.version.cuda is not None)' \
      || fail "a CPU-only torch was asked for, but pip installed $("$PY" -c 'import torch; print(torch.__version__)') (a CUDA build; an extra index in pip's configuration served it)" \
         "remove $VENV and rerun with PIP_CONFIG_FILE=/dev/null, or TORCH=cuda"
  fi
fi
# Every later install runs under constraints.txt, with its torch and torchvision pins replaced by the
# versions now installed, so that no dependency can silently replace the torch there with another build.
CONSTRAINTS="$VENV/ltdet2-constraints.txt"
{
  "$PY" "$ROOT/scripts/_read_requirements.py" "$PINS" --exclude torch torchvision \
    && "$PY" - <<'PYEOF'
from importlib import metadata

import torch
import torchvision

for name, module in (("torch", torch), ("torchvision", torchvision)):
    try:  # the version pip sees (a PyPI CUDA build's torch.__version__ has a +cu suffix its metadata lacks)
        version = metadata.version(name)
    except metadata.PackageNotFoundError:  # importable without pip metadata (e.g. on PYTHONPATH)
        version = module.__version__
    print(f"{name}=={version}")
PYEOF
} > "$CONSTRAINTS" || fail "could not write $CONSTRAINTS (constraints.txt and the installed torch version)" \
  "check $PINS; reinstall torch in $VENV"

step "ltdet2's dependencies (from pyproject.toml)"
REQS="$VENV/ltdet2-requirements.txt"
"$PY" "$ROOT/scripts/_read_requirements.py" "$ROOT/pyproject.toml" --extra test --exclude torch torchvision > "$REQS" \
  || fail "could not read the dependencies from pyproject.toml" "check pyproject.toml is valid TOML"
"${PIP[@]}" install -c "$CONSTRAINTS" -r "$REQS" \
  || fail "pip could not install the dependencies listed in $REQS" "read pip's message above; check PyPI is reachable"

step "detectron2"
if "$PY" -c 'import detectron2.modeling' 2>/dev/null; then
  echo "[setup] keeping the installed detectron2 $("$PY" -c 'import detectron2; print(detectron2.__version__, "from", detectron2.__path__[0])')"
else
  # detectron2's authors do not publish it on PyPI. $DETECTRON2_PIN is upstream detectron2's Python
  # sources packaged as a cp310 wheel; its pure-Python part runs on newer Pythons (the compiled _C
  # is not loaded; ltdet2 needs none of rotated boxes, deformable conv or the C++ COCO evaluator).
  # Its own requirements were installed in the previous step.
  DETECTRON2_PIN=$("$PY" "$ROOT/scripts/_read_requirements.py" "$PINS" --only sal-detectron2)
  [ -n "$DETECTRON2_PIN" ] || fail "$PINS pins no sal-detectron2" "add the line sal-detectron2==0.7.2 to $PINS"
  STAGE=$(mktemp -d)
  "${PIP[@]}" install --no-deps --only-binary=:all: --python-version 3.10 --implementation cp \
      --target "$STAGE" "$DETECTRON2_PIN" \
    || { rm -rf "$STAGE"; fail "pip could not download $DETECTRON2_PIN" "check PyPI is reachable, or install detectron2 from source into $VENV and rerun"; }
  SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  # Only the package and its metadata: the wheel's top-level tools/ would shadow other 'tools' packages.
  rm -rf "$SITE/detectron2" "$SITE"/sal_detectron2-*.dist-info
  mv "$STAGE/detectron2" "$STAGE"/sal_detectron2-*.dist-info "$SITE/" \
    || { rm -rf "$STAGE"; fail "could not move detectron2 into $SITE" "check that $SITE is writable"; }
  rm -rf "$STAGE"
fi

step "ltdet2 itself (editable)"
"${PIP[@]}" install --no-deps --no-build-isolation -e "$ROOT" \
  || fail "pip could not install ltdet2 from $ROOT" "read pip's message above"

step "check the environment"
"$PY" - <<'PYEOF' || fail "the environment does not import" "read the traceback above"
import torch, torchvision, detectron2, numpy, faster_coco_eval, lvis, pycocotools, scipy, tensorboard, submitit
from detectron2.modeling import build_model  # noqa: F401
import ltdet2
print(f"[setup] torch {torch.__version__} (cuda available: {torch.cuda.is_available()}), "
      f"detectron2 {detectron2.__version__}, numpy {numpy.__version__}, ltdet2 {ltdet2.__version__}")
PYEOF

touch "$READY"
echo "[setup] $VENV is ready"
