#!/usr/bin/env bash
# The Python packages bench/gpu_checks.sh needs that a lent GPU machine lacks, as wheels to carry there.
#
# Why: the device machine has python 3.12 with torch (CUDA), torchvision, Pillow, numpy, OpenCV and lxml, and no
# package registry (../shared/tools/device-dali/README.md); DALI travels in parts. The checks also import pytest
# (the CUDA tests), tensorboard + protobuf (the trainer's log), webdataset + braceexpand + pyyaml (the shard
# reader), tqdm and simplejpeg (the shard JPEG rule). Pure Python but for two cp312 wheels (pyyaml,
# simplejpeg), about 9 MB in all: small enough to carry with a DALI part. tensorboard's server-side dependencies
# (grpcio, werkzeug, ...) are left out: writing event files needs none of them.
#
#   bash bench/gpu_wheels.sh download [DIR]   # here (a registry, the project's .venv): wheels into DIR (.gpuwheels)
#   bash bench/gpu_wheels.sh install DIR      # there: install them into python3, offline
#
# Versions: those installed in the project's .venv (pinned by pyproject.toml), so both machines run the same code.
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS=(tensorboard absl-py protobuf pytest pluggy iniconfig pygments packaging webdataset braceexpand pyyaml tqdm simplejpeg)
cmd=${1:-}
dir=${2:-.gpuwheels}
case $cmd in
download)
    PY=${PYTHON:-.venv/bin/python}
    specs=$("$PY" - "${PKGS[@]}" <<'PYEOF'
import sys
from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in sys.argv[1:]))
PYEOF
)
    mkdir -p "$dir"
    # shellcheck disable=SC2086
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --abi cp312 --abi abi3 --abi none --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux_2_28_x86_64 --platform any -d "$dir" $specs
    ls "$dir"
    du -sh "$dir"
    ;;
install)
    # No pip needed (the machine may have none): a wheel is a zip laid out for site-packages. A package the machine
    # already has is left alone (its own version, which its other packages were installed with).
    [ -d "$dir" ] || { echo "no wheel folder $dir (carry .gpuwheels and copy it there first)"; exit 1; }
    python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' || {
        echo "the wheels are for CPython 3.12, python3 here is $(python3 -V 2>&1): not installing"; exit 1; }
    python3 - "$dir" <<'PYEOF'
import importlib.util
import pathlib
import sys
import sysconfig
import zipfile

MODULES = {"absl_py": "absl", "protobuf": "google.protobuf", "pyyaml": "yaml"}  # distribution -> import name
site = sysconfig.get_paths()["purelib"]
for whl in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    dist = whl.name.split("-")[0].lower()
    module = MODULES.get(dist, dist)
    try:
        present = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        present = False
    if present:
        print(f"have {module}")
    else:
        zipfile.ZipFile(whl).extractall(site)
        print(f"installed {whl.name}")
PYEOF
    python3 -c "import pytest, tensorboard, google.protobuf, webdataset, yaml, tqdm, simplejpeg; print('gpu wheels: ready')"
    ;;
*)
    echo "usage: bash bench/gpu_wheels.sh download [DIR] | install DIR"
    exit 2
    ;;
esac
