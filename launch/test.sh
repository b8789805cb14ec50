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
# Test files run side by side in FPHTR_TEST_WORKERS processes (pytest-xdist),
# each file's tests in one process, in order, so that a file's fixtures are
# built once; `-n 0` runs everything in this process.
case " $* " in
  *" -n"*|*" --numprocesses"*) ;;
  *) set -- -n "${FPHTR_TEST_WORKERS:-3}" --dist loadfile "$@" ;;
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
