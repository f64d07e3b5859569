#!/usr/bin/env bash
# Runs the test suite from .venv. Tests that start servers (Ray, MLflow) need a private network +
# PID namespace, so that Ray's listeners (which bind every interface) only see loopback and no
# other Ray cluster: as root the whole run goes into one (`unshare -n -p -f --mount-proc`);
# otherwise those tests are skipped with a reason. Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
PYTEST=(.venv/bin/python -m pytest -ra "$@")
if [ "$(id -u)" = 0 ] && unshare -n -p -f --mount-proc true 2>/dev/null; then
  export ACTIONLAB_TEST_NETNS=1
  unshare -n -p -f --mount-proc bash -c 'ip link set lo up && exec "$@"' bash "${PYTEST[@]}"
else
  echo "not root or no unshare: tests that start Ray/MLflow servers will be skipped" >&2
  "${PYTEST[@]}"
fi
rc=$?
if [ "$rc" = 5 ]; then
  echo "pytest collected no tests" >&2
  rc=0
fi
exit "$rc"
