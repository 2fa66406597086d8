#!/usr/bin/env bash
# Runs the test suite (or the pytest arguments given) N times in a row while N_LOOPS CPU-bound
# shell loops keep the cores busy beside it: issue 12's check that tests hold on a busy machine.
# Appends one line per run to bench/results/suite_under_load.log (commit, exit code, seconds,
# pytest's summary); each run's output goes to bench/results/suite_under_load_<i>.log.
#
#   bench/suite_under_load.sh                        # the whole suite, 3 runs, 2 loops
#   RUNS=5 bench/suite_under_load.sh tests/test_faults.py
#
# Nothing else should run on the machine meanwhile: more load than the loops is not the check.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUNS=${RUNS:-3}
N_LOOPS=${N_LOOPS:-2}
mkdir -p bench/results
loops=()
for _ in $(seq "$N_LOOPS"); do (while :; do :; done) & loops+=($!); done
trap 'kill "${loops[@]}" 2>/dev/null' EXIT
for i in $(seq "$RUNS"); do
  out=bench/results/suite_under_load_$i.log
  start=$(date +%s)
  "$PY" -m pytest -q -p no:cacheprovider "$@" > "$out" 2>&1
  rc=$?
  echo "$(date -u +%FT%TZ) run $i/$RUNS $(git rev-parse --short HEAD) loops=$N_LOOPS rc=$rc" \
    "$(( $(date +%s) - start ))s $(tail -1 "$out")" >> bench/results/suite_under_load.log
done
