#!/usr/bin/env bash
# Run on a machine with PyPI, in the repository root, before copying the checkout to a GPU node
# without internet: downloads the Python 3.12 wheels that archbench needs and the GPU image lacks
# (pydantic, plotly, fla) into .whl/, which git ignores; checks.sh installs them. See docs/gpu-nodes.md.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 \
  plotly==7.1.0 flash-linear-attention==0.6.0 fla-core==0.6.0
ls -la .whl && du -sh .whl
