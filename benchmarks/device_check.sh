#!/usr/bin/env bash
# `make device-check`: on the GPU machine, install the carried wheels (.whl/, from `make device-wheels`) into a
# target folder, without an index or a venv, then run benchmarks/device_check.py with the machine's own python3.
# DRY=1 runs the same sequence on the CPU with this checkout's .venv (or python3) and installs nothing.
# Variables: OUT, DRY, PROFILE, COMMIT, PYTHON, BUDGET (seconds), STEPS (ids, comma-separated), LIMITS ("id=s ..."),
# WORK (step dirs and the compile cache), HALF (fp16 or bf16 on the GPU), SITE (where the wheels go).
set -uo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
args=(--started "$started")
[ -n "${OUT:-}" ] && args+=(--out "$OUT")
if [ "${DRY:-0}" = 1 ]; then
  if [ -z "${PYTHON:-}" ]; then PYTHON=python3; [ -x .venv/bin/python ] && PYTHON=.venv/bin/python; fi
  args+=(--dry)
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
else
  PYTHON=${PYTHON:-python3}
  SITE=${SITE:-/tmp/audioldm2-fast-site}
  if compgen -G ".whl/*.whl" >/dev/null; then
    PIP_ROOT_USER_ACTION=ignore "$PYTHON" -m pip install -q --disable-pip-version-check --no-index --no-deps \
      --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
      || echo "device-check: installing .whl/ failed; the environment step will show what is missing" >&2
    export PYTHONPATH="$SITE:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
    echo "device-check: installed $(ls .whl/*.whl | wc -l) wheels into $SITE in $(($(date +%s) - started)) s"
  else
    echo "device-check: no .whl/ here (run make device-wheels and carry .whl); using $PYTHON's own packages" >&2
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi
[ "${PROFILE:-0}" = 1 ] && args+=(--profile)
[ -n "${COMMIT:-}" ] && args+=(--commit "$COMMIT")
[ -n "${BUDGET:-}" ] && args+=(--budget-s "$BUDGET")
[ -n "${STEPS:-}" ] && args+=(--steps "$STEPS")
[ -n "${WORK:-}" ] && args+=(--work "$WORK")
[ -n "${HALF:-}" ] && args+=(--half "$HALF")
for limit in ${LIMITS:-}; do args+=(--limit "$limit"); done
exec "$PYTHON" benchmarks/device_check.py "${args[@]}"
