#!/usr/bin/env bash
# `make test-cluster`: a real Airflow cluster (CeleryExecutor, two workers) on 127.0.0.1, one shared gs:// cache.
#
# Installs what a fresh machine lacks (PostgreSQL and Redis from Debian, the Celery provider and psycopg2
# into .venv), then runs tests/cluster/harness.py, which starts every component, triggers the DAGs and
# checks the result. Whatever the harness leaves running (it is killed, or crashes) is stopped here by the
# process-group ids it recorded; nothing is ever killed by name.
#
# Environment: CLUSTER_TIMEOUT (seconds for the DAG runs, default 480), CLUSTER_KEEP_WORK=1 keeps the work
# dir (logs, AIRFLOW_HOME) after a pass too; it is always kept after a failure.
set -euo pipefail
cd "$(dirname "$0")/../.."

PY=.venv/bin/python
UV=.venv/bin/uv
if [[ ! -x $PY ]]; then
    echo "tests/cluster/run.sh: $PY is missing; run it through 'make test-cluster' (which installs the venv)." >&2
    exit 2
fi
start_s=$SECONDS

# -- system packages ------------------------------------------------------------------------------------
missing=()
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null || missing+=(postgresql)
command -v redis-server >/dev/null || missing+=(redis-server)
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "tests/cluster/run.sh: needs ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root." >&2
        exit 2
    fi
    echo "[cluster] installing ${missing[*]} from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# -- Python packages (the [cluster] extra) --------------------------------------------------------------
# celery 5.7 removed celery.backends.database.retry, which apache-airflow-providers-celery 3.26 imports.
CLUSTER_REQS=("apache-airflow-providers-celery>=3.10" "celery[redis]>=5.5,<5.7" "psycopg2-binary>=2.9" "asyncpg>=0.30")
if ! $PY -c "import asyncpg, psycopg2; from celery.backends.database import retry; import airflow.providers.celery" \
    2>/dev/null; then
    echo "[cluster] installing ${CLUSTER_REQS[*]} into .venv"
    $UV pip install --quiet --python $PY "${CLUSTER_REQS[@]}"
fi

# -- run ------------------------------------------------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/tfhub-cluster.XXXXXX")
pidfile=$work/pids
: >"$pidfile"
harness_pid=""

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $harness_pid ]] && kill -0 "$harness_pid" 2>/dev/null; then
        kill -TERM "$harness_pid" 2>/dev/null || true
        for _ in $(seq 1 60); do kill -0 "$harness_pid" 2>/dev/null || break; sleep 1; done
    fi
    # Anything still recorded and alive: the harness died before stopping it. Each pid leads its own group.
    local pid name left=()
    while read -r pid name; do
        [[ -n $pid ]] || continue
        if kill -0 -- "-$pid" 2>/dev/null; then
            echo "[cluster] stopping leftover $name (process group $pid)"
            kill -TERM -- "-$pid" 2>/dev/null || true
            left+=("$pid")
        fi
    done <"$pidfile"
    if ((${#left[@]})); then
        sleep 5
        for pid in "${left[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
    fi
    if [[ $rc -eq 0 && ${CLUSTER_KEEP_WORK:-0} != 1 ]]; then
        rm -rf "$work"
    else
        echo "[cluster] work dir kept: $work"
    fi
    echo "[cluster] make test-cluster took $((SECONDS - start_s)) s"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

$PY tests/cluster/harness.py --work "$work" --pidfile "$pidfile" --timeout "${CLUSTER_TIMEOUT:-480}" &
harness_pid=$!
set +e
wait "$harness_pid"
rc=$?
set -e
harness_pid=""
exit "$rc"
