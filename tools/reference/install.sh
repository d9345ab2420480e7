#!/usr/bin/env bash
# Installs the PyTorch reference's Python environment into tools/reference/.venv (about 4.4 GB,
# a few minutes): see README.md for why it is the full PyPI wheel and what is left out.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv"
python="${PYTHON:-python3}"

"$python" -m venv "$venv"
# Keep the environment out of git without touching the project's .gitignore.
echo '*' > "$venv/.gitignore"
"$venv/bin/pip" install --quiet -r "$here/requirements.txt"
# Triton (1 GB) only serves torch.compile and GPU kernels; `import torch` works without it.
"$venv/bin/pip" uninstall --quiet --yes triton
"$venv/bin/python" - <<'PY'
import torch
x = torch.randn(2, 3, 8, 8, requires_grad=True)
torch.nn.Conv2d(3, 4, 3, padding=1)(x).sum().backward()
print(f"torch {torch.__version__} works on the CPU ({torch.get_num_threads()} threads)")
PY
