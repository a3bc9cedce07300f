#!/usr/bin/env bash
# `make test-cluster`: a real Airflow cluster (CeleryExecutor, two workers) on 127.0.0.1, one shared gs:// cache.
#
# Installs what a fresh machine lacks (PostgreSQL and Redis from Debian; the Celery provider, psycopg2 and asyncpg
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
    # Their maintainer scripts would start system-wide daemons (a "main" cluster on 5432, redis on 6379)
    # where an init system runs; this test starts its own, so deny service starts during the install.
    own_policy=""
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        own_policy=1
    fi
    apt_rc=0
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } || apt_rc=$?
    [[ -z $own_policy ]] || rm -f /usr/sbin/policy-rc.d
    ((apt_rc == 0)) || { echo "tests/cluster/run.sh: apt-get install ${missing[*]} failed ($apt_rc)" >&2; exit 2; }
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
        # It stops the cluster tier by tier (up to ~30 s each) before it exits.
        for _ in $(seq 1 100); do kill -0 "$harness_pid" 2>/dev/null || break; sleep 1; done
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
    done < <(tac "$pidfile")  # last started first: workers before the database they report to
    if ((${#left[@]})); then
        sleep 5
        for pid in "${left[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
    fi
    local summary="cluster: 0 passed, 1 failed"
    [[ -s $work/summary ]] && summary=$(<"$work/summary")
    if [[ $rc -eq 0 && ${CLUSTER_KEEP_WORK:-0} != 1 ]]; then
        rm -rf "$work"
    else
        echo "[cluster] work dir kept: $work"
    fi
    echo "[cluster] make test-cluster took $((SECONDS - start_s)) s"
    echo "$summary"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

$PY tests/cluster/harness.py --work "$work" --pidfile "$pidfile" --summary "$work/summary" \
    --timeout "${CLUSTER_TIMEOUT:-480}" &
harness_pid=$!
set +e
wait "$harness_pid"
rc=$?
set -e
harness_pid=""
exit "$rc"
