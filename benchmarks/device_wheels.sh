#!/usr/bin/env bash
# `make device-wheels`: fill .whl/ (git-ignored) with the wheels that the GPU machine lacks, so that `make device-check`
# installs them there with no package index. That machine's python3 (3.12, x86_64) already has torch, transformers,
# accelerate, huggingface-hub, safetensors, numpy, scipy, matplotlib, tqdm, pytest, pyyaml, packaging and zipp.
# Run it here, where PyPI is reachable. Usage: benchmarks/device_wheels.sh [extra==version ...]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEST=${DEST:-.whl}
# One pinned version of each: a second version of a package in .whl/ stops `pip install --no-index` there.
PKGS=(
  diffusers==0.42.1 hydra-core==1.3.8 omegaconf==2.3.1 importlib_metadata==10.2.0 lazy-importer==0.1.0
  soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 pyloudnorm==0.2.0
  torchsde==0.2.6 trampoline==0.1.2 pytest-timeout==2.4.0 submitit==1.5.4 hydra-submitit-launcher==1.2.0
  "$@"
)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
rm -rf "$DEST.tmp" && mkdir -p "$DEST.tmp"
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
  --abi abi3 --abi none "${PLATFORMS[@]}" -d "$DEST.tmp" "${PKGS[@]}"
# antlr4-python3-runtime 4.9.3 (what omegaconf 2.3 needs) is published as a source archive only: build its pure wheel.
"$PYTHON" -m pip wheel -q --no-deps -w "$DEST.tmp" antlr4-python3-runtime==4.9.3
rm -rf "$DEST" && mv "$DEST.tmp" "$DEST"
# Refuse two versions of one package (names normalised as pip does).
dupes=$(ls "$DEST"/*.whl | xargs -n1 basename | cut -d- -f1 | tr 'A-Z.-' 'a-z__' | sort | uniq -d)
[ -z "$dupes" ] || { echo "device-wheels: more than one version of: $dupes" >&2; exit 1; }
ls -l "$DEST"
du -sh "$DEST"
