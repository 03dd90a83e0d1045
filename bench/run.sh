#!/usr/bin/env bash
# make bench: the benchmark of BENCH.md (bench/run.py), after the concurrency models
# (bench/concurrency.py), after making sure the peer's own virtualenv exists. BENCH_QUICK=1 for a
# fast smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
PEER_VENV=bench/.venv-peer
# Rebuilt when the requirements change; the stamp holds the hash of what was installed.
want=$(sha256sum bench/peer/requirements.txt | cut -d' ' -f1)
if [[ ! -x $PEER_VENV/bin/bentoml || "$(cat $PEER_VENV/.installed 2>/dev/null)" != "$want" ]]; then
    echo "[bench] creating $PEER_VENV (BentoML, once)" >&2
    python3 -m venv "$PEER_VENV"
    "$PEER_VENV/bin/pip" install --quiet --upgrade pip
    "$PEER_VENV/bin/pip" install --quiet -r bench/peer/requirements.txt
    echo "$want" > "$PEER_VENV/.installed"
fi

export EDGEFIT_SAMPLE_DIR=${EDGEFIT_SAMPLE_DIR:-../shared/imagenet-sample}
"$PY" bench/concurrency.py
exec "$PY" bench/run.py "$@"
