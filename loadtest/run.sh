#!/usr/bin/env bash
# make loadtest: Locust, headless, against a running edgefit ($EDGEFIT_URL).
#   loadtest/run.sh [--shape steady|ramp|spike] [more locust options...]
# Writes <shape>_*.csv, <shape>.html and <shape>-summary.json under $LOADTEST_RESULTS_DIR
# (default loadtest/results/); exits non-zero when the locustfile's thresholds are missed.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ${1:-} == --shape ]]; then
    export LOADTEST_SHAPE=$2
    shift 2
fi
export LOADTEST_SHAPE=${LOADTEST_SHAPE:-steady}
export EDGEFIT_SAMPLE_DIR=${EDGEFIT_SAMPLE_DIR:-../shared/imagenet-sample}
URL=${EDGEFIT_URL:-http://127.0.0.1:8000}
RESULTS=${LOADTEST_RESULTS_DIR:-loadtest/results}
LOCUST=${LOCUST:-.venv/bin/locust}
mkdir -p "$RESULTS"
export LOADTEST_SUMMARY="$RESULTS/$LOADTEST_SHAPE-summary.json"

# The shape classes set users and duration; --headless stops when the shape does.
exec "$LOCUST" -f loadtest/locustfile.py --headless --host "$URL" \
    --csv "$RESULTS/$LOADTEST_SHAPE" --html "$RESULTS/$LOADTEST_SHAPE.html" \
    --only-summary --loglevel INFO "$@"
