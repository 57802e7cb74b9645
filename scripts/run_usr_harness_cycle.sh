#!/usr/bin/env bash
# usr harness cycle: preflight -> run -> verify, in a fixed order, stopping at the first
# failing step, with a JSON report of every step.
#
#   bash scripts/run_usr_harness_cycle.sh
#
# preflight  CLI help; environment and versions; a scratch `local` remote and its doctor;
#            the focused sync tests
# run        the sync-audit drill (USR_HARNESS_RUN_SYNC_AUDIT_DRILL=1); mock batch cycles
#            (cluster batch -> pull -> laptop annotation -> push); adversarial checks
#            (a schema-violating overlay is refused, a tampered sidecar is refused by the
#            shipped pre-push hook, then the laptop is restored); the full test suite
# verify     fsck on both sides; diff says up-to-date; ruff check and format check; the
#            runbook docs test
#
# Environment (all optional):
#   USR_HARNESS_REPORT_PATH             report JSON (default ${TMPDIR:-/tmp}/usr-harness-report.json)
#   USR_HARNESS_RUN_SYNC_AUDIT_DRILL=1  also run scripts/run_usr_sync_audit_drill.py
#   USR_HARNESS_SYNC_AUDIT_REPORT_PATH  the drill's report (default <work dir>/sync-audit-drill-report.json)
#   USR_HARNESS_QUICK=1                 skip the pytest steps (automatic when the harness runs
#                                       under pytest, so the suite never calls itself)
#   USR_HARNESS_FOCUSED_TESTS           test paths for the focused step (run even when quick)
#   USR_HARNESS_WORK_DIR                scratch directory (default: a temp dir, removed on success)
#   USR_HARNESS_BATCH_CYCLES, USR_HARNESS_BATCH_ROWS   mock batch cycles (2) and rows per batch (100)
#   USR_HARNESS_RUFF_PATHS              what ruff checks (default: the whole repository)
#   USR_HARNESS_USR, USR_HARNESS_PYTHON, USR_HARNESS_PYTEST, USR_HARNESS_RUFF
#                                       commands to use (default: uv run usr|python|pytest|ruff)
#
# Exit status: 0 when every step passed (or was skipped), else the failing step's exit code.
set -uo pipefail

SELF=${BASH_SOURCE[0]}
# Follow a symlinked script back to the checkout it belongs to.
if command -v readlink >/dev/null 2>&1 && readlink -f "$SELF" >/dev/null 2>&1; then
    SELF=$(readlink -f "$SELF")
fi
REPO=$(cd "$(dirname "$SELF")/.." && pwd)
cd "$REPO" || exit 1

USR_CMD=${USR_HARNESS_USR:-uv run usr}
PY_CMD=${USR_HARNESS_PYTHON:-uv run python}
PYTEST_CMD=${USR_HARNESS_PYTEST:-uv run pytest}
RUFF_CMD=${USR_HARNESS_RUFF:-uv run ruff}
REPORT=${USR_HARNESS_REPORT_PATH:-${TMPDIR:-/tmp}/usr-harness-report.json}
RUN_DRILL=${USR_HARNESS_RUN_SYNC_AUDIT_DRILL:-0}
CYCLES=${USR_HARNESS_BATCH_CYCLES:-2}
ROWS=${USR_HARNESS_BATCH_ROWS:-100}
case "$CYCLES" in
    '' | *[!0-9]* | 0) echo "USR_HARNESS_BATCH_CYCLES must be a whole number >= 1 (the later steps need a dataset)" >&2; exit 2 ;;
esac
RUFF_PATHS=${USR_HARNESS_RUFF_PATHS:-.}
FOCUSED_DEFAULT="tests/test_sync_iterative_batch_flow.py tests/test_sync_schema_adversarial.py tests/test_usr_sync_audit_drill_script.py"
FOCUSED=${USR_HARNESS_FOCUSED_TESTS:-$FOCUSED_DEFAULT}
QUICK=${USR_HARNESS_QUICK:-0}
QUICK_REASON="USR_HARNESS_QUICK=1"
if [ -n "${PYTEST_CURRENT_TEST:-}" ]; then
    QUICK=1
    QUICK_REASON="running under pytest (no recursion into the suite)"
fi

if [ -n "${USR_HARNESS_WORK_DIR:-}" ]; then
    WORK=$USR_HARNESS_WORK_DIR
    mkdir -p "$WORK" || exit 1
    KEEP_WORK=1
else
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/usr-harness-XXXXXX") || exit 1
    KEEP_WORK=0
fi
DRILL_REPORT=${USR_HARNESS_SYNC_AUDIT_REPORT_PATH:-$WORK/sync-audit-drill-report.json}
HPC=$WORK/hpc
LAPTOP=$WORK/laptop
CFG=$WORK/remotes.toml
AUDITS=$WORK/audits
REMOTE=harness-local
DS=densegen/harness_dataset
STEPS_TSV=$WORK/steps.tsv
: >"$STEPS_TSV"

STARTED_AT=$(date -u +%Y-%m-%dT%H:%M:%SZ)
FAILED_STEP=""
FAILED_CODE=0

now() {
    # Seconds with a fraction where the shell can tell (bash 5), else whole seconds.
    if [ -n "${EPOCHREALTIME:-}" ]; then echo "${EPOCHREALTIME/,/.}"; else date +%s; fi
}

q() {
    # Quote each argument for the shell, so a recorded command can be pasted back.
    printf '%q ' "$@" | sed 's/ $//'
}

record() {
    # name status exit_code seconds reason command (tab-separated; no tabs inside fields)
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "$6" >>"$STEPS_TSV"
}

step() {
    # step NAME COMMAND: run COMMAND with bash unless an earlier step failed.
    local name=$1 cmd=$2
    [ -n "$FAILED_STEP" ] && return 0
    echo "==> $name"
    echo "    \$ $cmd"
    local t0 t1 rc
    t0=$(now)
    bash -c "$cmd"
    rc=$?
    t1=$(now)
    local secs
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    if [ "$rc" -eq 0 ]; then
        record "$name" passed "$rc" "$secs" "" "$cmd"
        echo "    passed (${secs}s)"
    else
        record "$name" failed "$rc" "$secs" "" "$cmd"
        echo "    FAILED with exit $rc (${secs}s)" >&2
        FAILED_STEP=$name
        FAILED_CODE=$rc
    fi
}

skip() {
    # skip NAME REASON COMMAND: list a step that was deliberately not run.
    [ -n "$FAILED_STEP" ] && return 0
    echo "==> $1: skipped ($2)"
    record "$1" skipped "" 0 "$2" "$3"
}

# expect_exit CODE PATTERN CMD...: CMD must fail with exit CODE and say PATTERN on stderr.
expect_exit() {
    local want=$1 pattern=$2
    shift 2
    local err rc
    err=$("$@" 2>&1 >/dev/null)
    rc=$?
    printf '%s\n' "$err" | sed 's/^/    | /'
    if [ "$rc" -ne "$want" ]; then
        echo "expected exit $want, got $rc" >&2
        return 1
    fi
    if ! printf '%s' "$err" | grep -q -- "$pattern"; then
        echo "expected stderr to mention: $pattern" >&2
        return 1
    fi
}
export -f expect_exit

U="$USR_CMD"
SYNC_OPTS="$(q --remotes-config "$CFG")"

# ------------------------------------------------------------------------------ preflight
step preflight:cli-help "$U --help >/dev/null && $U --version"
step preflight:environment "$PY_CMD -c 'import platform, sys, pyarrow, pygit2, blake3, click, asyncssh; print(\"python\", platform.python_version(), sys.executable); print(\"pyarrow\", pyarrow.__version__, \"pygit2\", pygit2.__version__, \"click\", click.__version__, \"asyncssh\", asyncssh.__version__)' && { uv --version 2>/dev/null || echo 'uv: not on PATH'; }"
step preflight:local-remote "mkdir -p $(q "$HPC" "$LAPTOP" "$AUDITS") && $U remotes add $REMOTE --type local --base-dir $(q "$HPC") --force $SYNC_OPTS"
step preflight:remote-doctor "$U remotes doctor --remote $REMOTE $SYNC_OPTS"
if [ "$QUICK" = 1 ] && [ -z "${USR_HARNESS_FOCUSED_TESTS:-}" ]; then
    skip preflight:focused-sync-tests "$QUICK_REASON" "$PYTEST_CMD -q $FOCUSED"
else
    step preflight:focused-sync-tests "$PYTEST_CMD -q $FOCUSED"
fi

# ------------------------------------------------------------------------------ run
DRILL_CMD="$PY_CMD scripts/run_usr_sync_audit_drill.py --report-json $(q "$DRILL_REPORT") --work-dir $(q "$WORK/drill")"
if [ "$RUN_DRILL" = 1 ]; then
    step run:sync-audit-drill "$DRILL_CMD"
else
    skip run:sync-audit-drill "USR_HARNESS_RUN_SYNC_AUDIT_DRILL is not 1" "$DRILL_CMD"
fi

for c in $(seq 1 "$CYCLES"); do
    step "run:cycle-$c:mock-batch" "$U --root $(q "$HPC") dev mock-batch $DS --rows $ROWS --seed $c"
    step "run:cycle-$c:pull" "$U --root $(q "$LAPTOP") pull $DS $REMOTE -y $SYNC_OPTS --audit-json-out $(q "$AUDITS/cycle-$c-pull.json")"
    step "run:cycle-$c:mock-infer" "$U --root $(q "$LAPTOP") dev mock-infer $DS --seed $c"
    step "run:cycle-$c:push" "$U --root $(q "$LAPTOP") push $DS $REMOTE -y $SYNC_OPTS --audit-json-out $(q "$AUDITS/cycle-$c-push.json")"
done

BAD_CSV=$WORK/bad-overlay.csv
step run:adversarial-schema-overlay "$PY_CMD -c $(q "from usr.drills import write_schema_violating_overlay as w; w('$LAPTOP', '$DS', '$BAD_CSV')") && expect_exit 3 'registered type' $U --root $(q "$LAPTOP") attach $DS --path $(q "$BAD_CSV") --namespace infer --columns ll --allow-overwrite"
step run:adversarial-tampered-sidecar "$U --root $(q "$LAPTOP") hooks install --root-wide --force && $PY_CMD -c $(q "from usr.drills import tamper_overlay_part as t; print('tampered', t('$LAPTOP', '$DS'))") && expect_exit 10 'pre-push hook refused' $U --root $(q "$LAPTOP") push $DS $REMOTE -y $SYNC_OPTS"
step run:restore-after-tamper "$U --root $(q "$LAPTOP") checkout $DS HEAD~1 && rm -f $(q "$LAPTOP/.usr-hooks/pre-push")"

if [ "$QUICK" = 1 ]; then
    skip run:full-test-suite "$QUICK_REASON" "$PYTEST_CMD -q"
else
    step run:full-test-suite "$PYTEST_CMD -q"
fi

# ------------------------------------------------------------------------------ verify
step verify:fsck-local "$U --root $(q "$LAPTOP") fsck $DS"
step verify:fsck-remote "$U --root $(q "$HPC") fsck $DS"
step verify:diff-up-to-date "$U --root $(q "$LAPTOP") diff $DS $REMOTE $SYNC_OPTS --audit-json-out $(q "$AUDITS/final-diff.json") | tail -n 1 | grep -qx 'Status: up-to-date'"
step verify:ruff-check "$RUFF_CMD check $RUFF_PATHS"
step verify:ruff-format "$RUFF_CMD format --check $RUFF_PATHS"
if [ "$QUICK" = 1 ]; then
    skip verify:docs-runbooks "$QUICK_REASON" "$PYTEST_CMD -q tests/test_docs_runbooks.py"
else
    step verify:docs-runbooks "$PYTEST_CMD -q tests/test_docs_runbooks.py"
fi

# ------------------------------------------------------------------------------ report
FINISHED_AT=$(date -u +%Y-%m-%dT%H:%M:%SZ)
STATUS=passed
[ -n "$FAILED_STEP" ] && STATUS=failed
REPORT_PY=python3
command -v python3 >/dev/null 2>&1 || REPORT_PY="$PY_CMD"
mkdir -p "$(dirname "$REPORT")"
$REPORT_PY - "$STEPS_TSV" "$REPORT" "$STARTED_AT" "$FINISHED_AT" "$STATUS" "$FAILED_CODE" \
    "$FAILED_STEP" "$WORK" "$KEEP_WORK" "$RUN_DRILL" "$DRILL_REPORT" "$QUICK" <<'PY'
import json, os, sys

(tsv, report, started, finished, status, code, failed, work, keep, drill, drill_report,
 quick) = sys.argv[1:]
steps = []
with open(tsv, encoding="utf-8") as fh:
    for line in fh:
        name, state, rc, secs, reason, command = line.rstrip("\n").split("\t", 5)
        step = {
            "name": name,
            "status": state,
            "exit_code": int(rc) if rc else None,
            "seconds": float(secs),
            "command": command,
        }
        if reason:
            step["reason"] = reason
        steps.append(step)
doc = {
    "harness": "usr-harness-cycle",
    "report_version": 1,
    "started_at": started,
    "finished_at": finished,
    "status": status,
    "exit_code": int(code),
    "failed_step": failed or None,
    "quick": quick == "1",
    "work_dir": work if (keep == "1" or status != "passed") else None,
    "sync_audit_drill_report": drill_report if drill == "1" else None,
    "steps": steps,
}
tmp = report + ".tmp"
with open(tmp, "w", encoding="utf-8") as fh:
    json.dump(doc, fh, indent=2, sort_keys=True)
    fh.write("\n")
os.replace(tmp, report)
PY

echo
if [ "$STATUS" = passed ]; then
    echo "harness: passed ($(grep -c $'\tpassed\t' "$STEPS_TSV") steps passed, $(grep -c $'\tskipped\t' "$STEPS_TSV") skipped)"
    [ "$KEEP_WORK" = 0 ] && rm -rf "$WORK"
else
    echo "harness: FAILED at $FAILED_STEP (exit $FAILED_CODE); scratch kept in $WORK" >&2
fi
echo "report: $REPORT"
exit "$FAILED_CODE"
