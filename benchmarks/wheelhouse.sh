#!/usr/bin/env bash
# Fill .asv/wheelhouse with the wheels asv's virtualenvs install (the matrix
# of asv.conf.json, the build-system requirements of pyproject.toml, and what
# asv itself installs: asv_runner, build, pympler, pip, wheel), once, with
# network access;
# afterwards `asv continuous` / `asv run` build and benchmark commits offline:
#
#     bash benchmarks/wheelhouse.sh
#     PIP_NO_INDEX=1 PIP_FIND_LINKS=$PWD/.asv/wheelhouse asv continuous main HEAD
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python -m pip download --only-binary=:all: -d .asv/wheelhouse \
    numpy scipy scikit-learn threadpoolctl Cython setuptools asv_runner build pympler pip wheel
