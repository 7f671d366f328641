#!/usr/bin/env bash
# The full pytest run (`make pytest`, so `make test` and CI) as two pytest processes at once:
#
#   A: tests/ (but $PYTEST_B_PATHS) + the interop tests outside the matrix + the matrix on the
#      kinds not given to B
#   B: the interop matrix on $PYTEST_B_KINDS (AMQP, AWS and the #12 kinds: mostly waiting on
#      brokers, moto and emulators) + the test files $PYTEST_B_PATHS
#
# Each process starts its own services on free ports (tests/services/), and each rewrites
# its kinds' sections of interop/RESULTS.md (interop/tests/conftest.py, under a lock), so the
# table is complete when both are done.  Most of a run is waiting (on workers, brokers,
# timeouts), so two processes on 2 cores take little more than the longer one.
# PYTEST_JOBS=1 runs everything in one process, as before.
#
# Usage: scripts/pytest-parallel.sh [pytest args...]      (A's output live, then B's log)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
read -r -a PYTEST <<< "${PYTEST:-$PYTHON -m pytest -q}"
JOBS=${PYTEST_JOBS:-2}
B_KINDS=${PYTEST_B_KINDS:-amqp,amqp+redis,sqs+dynamodb,sqs+redis,pubsub+redis,redis+memcache,redis+mongodb,amqp+mongodb}
# test files under tests/ that B runs too (A skips them), to even out the two: slow ones that
# mostly wait (Go builds and probes, RabbitMQ restarts, TLS handshakes, the browser)
B_PATHS=${PYTEST_B_PATHS:-tests/integration/test_conformance.py tests/integration/test_amqp_outage.py tests/integration/test_tls.py tests/integration/test_dashboard.py tests/integration/test_dashboard_browser.py}
read -r -a b_paths <<< "$B_PATHS"
a_ignore=()
for path in "${b_paths[@]}"; do a_ignore+=("--ignore=$path"); done

if [[ $JOBS == 1 || ! -d interop/tests ]]; then
    dirs=(tests); [[ -d interop/tests ]] && dirs+=(interop/tests)
    echo "${PYTEST[*]} ${dirs[*]} $*"
    exec "${PYTEST[@]}" "${dirs[@]}" "$@"
fi

all=$("$PYTHON" -c 'from interop.tests.harness import KINDS; print(",".join(KINDS))') \
    || { echo "pytest-parallel: cannot read interop/tests/harness.py KINDS" >&2; exit 2; }
a_kinds=other
IFS=, read -r -a every <<< "$all"
for kind in "${every[@]}"; do
    case ",$B_KINDS," in *",$kind,"*) ;; *) a_kinds+=",$kind" ;; esac
done

log_b=$(mktemp "${TMPDIR:-/tmp}/pytest-b.XXXXXX.log")
echo "== pytest in two processes (PYTEST_JOBS=1 for one)"
echo "   A: ${PYTEST[*]} tests interop/tests ${a_ignore[*]} --interop-kinds $a_kinds $*"
echo "   B: ${PYTEST[*]} interop/tests ${b_paths[*]} --interop-kinds $B_KINDS $*   (log: $log_b, shown after A)"
start=$(date +%s)
"${PYTEST[@]}" interop/tests "${b_paths[@]}" --interop-kinds "$B_KINDS" "$@" > "$log_b" 2>&1 &
pid_b=$!
trap 'kill "$pid_b" 2>/dev/null' EXIT INT TERM
rc_a=0
"${PYTEST[@]}" tests interop/tests "${a_ignore[@]}" --interop-kinds "$a_kinds" "$@" || rc_a=$?
echo "== A exited with status $rc_a after $(( $(date +%s) - start ))s; waiting for B"
rc_b=0
wait "$pid_b" || rc_b=$?
trap - EXIT INT TERM
echo "== B (interop matrix on $B_KINDS) exited with status $rc_b after $(( $(date +%s) - start ))s; its output:"
cat "$log_b"
rm -f "$log_b"
if (( rc_a != 0 || rc_b != 0 )); then
    echo "== pytest FAILED: A status $rc_a, B status $rc_b" >&2
    exit 1
fi
echo "== pytest: A and B passed in $(( $(date +%s) - start ))s"
