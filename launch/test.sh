#!/usr/bin/env bash
# Runs the test suite. Extra arguments go to pytest (e.g. -k models, or
# tests/test_train.py to run one file).
set -euo pipefail
source "$(dirname "$0")/setup_env.sh"

# The whole suite, unless the arguments name test files or folders.
case " $* " in
  *" tests"*) ;;
  *) set -- tests "$@" ;;
esac
set +e
python -m pytest -q "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure." >&2
  exit 1
fi
exit "$status"
