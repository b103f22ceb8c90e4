#!/usr/bin/env bash
# The engine's tests on another Python and torch (not part of .ci/run: a torch for an older Python
# comes from PyPI as a CUDA build, several GB). Slicer 5.8 runs Python 3.9, whose newest torch is 2.8.
#
#   bash Testing/check_other_python.sh PYTHON TORCH_VERSION [VENV_DIR]
#   e.g. bash Testing/check_other_python.sh ~/.pyenv/versions/3.9.18/bin/python3.9 2.0.1
#
# Makes a virtual environment (default /tmp/voxelopt-py-TORCH_VERSION), installs torch, the engine
# with its test and fast extras, and runs every test outside Testing/slicer_module (slicer-core
# has no build for Python 3.9). Torch older than 2.3 is built for NumPy 1, so NumPy 1 is installed.
set -euo pipefail
python=${1:?usage: check_other_python.sh PYTHON TORCH_VERSION [VENV_DIR]}
torch_version=${2:?usage: check_other_python.sh PYTHON TORCH_VERSION [VENV_DIR]}
venv=${3:-/tmp/voxelopt-py-$torch_version}
cd "$(dirname "$0")/.."

"$python" -m venv "$venv"
numpy="numpy"
if "$venv/bin/python" -c "import sys; v = tuple(map(int, sys.argv[1].split('.')[:2])); sys.exit(0 if v < (2, 3) else 1)" "$torch_version"; then
    numpy="numpy<2"
fi
"$venv/bin/python" -m pip install -q "torch==$torch_version" "$numpy"
"$venv/bin/python" -m pip install -q -e "VoxelOptLib[test,fast]" "$numpy"
"$venv/bin/python" -c "import sys, torch, numpy; print('Python', sys.version.split()[0], 'torch', torch.__version__, 'numpy', numpy.__version__)"
"$venv/bin/python" -m pytest -q -p no:cacheprovider Testing --ignore=Testing/slicer_module
