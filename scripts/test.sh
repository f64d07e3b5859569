#!/usr/bin/env bash
# Runs the test suite from .venv. Tests that start servers (Ray, MLflow) need a private network +
# PID namespace, so that Ray's listeners (which bind every interface) only see loopback and no
# other Ray cluster: as root each pytest run goes into one (`unshare -n -p -f --mount-proc`);
# otherwise those tests are skipped with a reason.
#
# With no arguments (CI), runs both tiers, the fast one first, and prints each tier's wall time:
# `-m "not integration"` (no servers, no Ray) and `-m integration` (real local servers, one shared
# `ray start --head` per run). With arguments, runs pytest once with them, e.g. `-m "not integration"`.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1

if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  echo "chromium is not installed: the MLflow UI test (tests/test_mlflow_server.py) will be skipped;" \
       "install it with \`apt-get install chromium\` (as root; .ci/run does)" >&2
fi

run_pytest() {
  local pytest=(.venv/bin/python -m pytest -ra "$@") rc
  if [ "$(id -u)" = 0 ] && unshare -n -p -f --mount-proc true 2>/dev/null; then
    ACTIONLAB_TEST_NETNS=1 unshare -n -p -f --mount-proc bash -c 'ip link set lo up && exec "$@"' bash "${pytest[@]}"
  else
    echo "not root or no unshare: tests that start Ray/MLflow servers will be skipped" >&2
    "${pytest[@]}"
  fi
  rc=$?
  if [ "$rc" = 5 ]; then
    echo "pytest collected no tests" >&2
    rc=0
  fi
  return "$rc"
}

if [ "$#" -gt 0 ]; then
  run_pytest "$@"
  exit $?
fi
status=0
for tier in "not integration" "integration"; do
  start=$SECONDS
  run_pytest -m "$tier" --durations=20
  rc=$?
  echo "tier -m \"$tier\": exit $rc, $((SECONDS - start)) s wall" >&2
  [ "$rc" = 0 ] || status=$rc
done
exit "$status"
