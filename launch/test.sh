#!/usr/bin/env bash
# Runs the test suite. Extra arguments go to pytest (e.g. -k models).
set -euo pipefail
source "$(dirname "$0")/setup_env.sh"

set +e
python -m pytest -q tests "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure." >&2
  exit 1
fi
exit "$status"
