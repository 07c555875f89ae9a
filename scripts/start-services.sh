#!/usr/bin/env bash
# Start what headwater's tests need on loopback, unless it already answers.
#
#   scripts/start-services.sh            Azurite (blob) + the machine's services + chromium
#   scripts/start-services.sh azurite    Azurite only
#   scripts/start-services.sh services   PostgreSQL, MariaDB, Redis, RabbitMQ, Mosquitto, NATS
#   scripts/start-services.sh chromium   Debian's chromium, for the browser tests
#   scripts/start-services.sh stop-azurite   stop the Azurite this script started
#
# Every service is checked by its port first, so a running one is never touched. A missing
# binary is installed with apt-get only when apt-get exists and we are root; otherwise a
# warning is printed and the script goes on (that service's tests then fail loudly).
# Daemons get their own log files and never inherit this script's stdout/stderr, so a
# caller that waits for our output to close (CI) is not held open by them.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
AZURITE_VERSION="3.35.0"
AZURITE_PORT="${AZURITE_PORT:-10000}"
AZURITE_DIR="$ROOT/.azurite"
LOG_DIR="${HEADWATER_SERVICE_LOGS:-$ROOT/.azurite}"
APT_UPDATED=0

say() { printf 'services: %s\n' "$*"; }
warn() { printf 'services: WARNING: %s\n' "$*" >&2; }

port_open() {  # port_open PORT -> 0 when something accepts on 127.0.0.1:PORT
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

wait_port() {  # wait_port NAME PORT SECONDS
    local name=$1 port=$2 deadline=$((SECONDS + $3))
    until port_open "$port"; do
        if ((SECONDS >= deadline)); then
            warn "$name did not answer on 127.0.0.1:$port within $3s"
            return 1
        fi
        sleep 0.5
    done
    say "$name answers on 127.0.0.1:$port"
}

can_apt() { command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; }

apt_install() {  # apt_install PACKAGE... -> 0 when installed
    can_apt || return 1
    if [ "$APT_UPDATED" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null >/dev/null || return 1
        APT_UPDATED=1
    fi
    say "installing Debian package(s): $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
        </dev/null >/dev/null
}

have() {  # have PATH_OR_COMMAND
    [ -x "$1" ] || command -v "$1" >/dev/null 2>&1
}

daemon() {  # daemon LOGNAME COMMAND...: run a start command detached from our stdio
    mkdir -p "$LOG_DIR"
    "${@:2}" </dev/null >>"$LOG_DIR/$1.log" 2>&1
}

# ------------------------------------------------------------------------- services

start_postgres() {
    local version
    version="$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n1)"
    [ -n "$version" ] || return 1
    daemon postgres pg_ctlcluster --skip-systemctl-redirect "$version" main start
}

start_mariadb() {
    mkdir -p /run/mysqld
    chown mysql:mysql /run/mysqld 2>/dev/null || true
    daemon mariadb start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
}

start_redis() {
    mkdir -p /var/lib/redis /var/log/redis
    daemon redis redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
        --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
}

start_rabbitmq() { daemon rabbitmq rabbitmq-server -detached; }

start_mosquitto() { daemon mosquitto mosquitto -d -c /etc/mosquitto/mosquitto.conf; }

start_nats() {
    mkdir -p /var/lib/nats-server
    daemon nats start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server \
        -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
}

# name port binary debian-package start-function wait-seconds
SERVICES=(
    "PostgreSQL 5432 pg_ctlcluster postgresql start_postgres 60"
    "MariaDB 3306 /usr/sbin/mariadbd mariadb-server start_mariadb 60"
    "Redis 6379 redis-server redis-server start_redis 30"
    "RabbitMQ 5672 rabbitmq-server rabbitmq-server start_rabbitmq 120"
    "Mosquitto 1883 mosquitto mosquitto start_mosquitto 30"
    "NATS 4222 /usr/sbin/nats-server nats-server start_nats 30"
)

ensure_service() {  # ensure_service NAME PORT BINARY PACKAGE START WAIT
    local name=$1 port=$2 binary=$3 package=$4 start=$5 wait=$6
    if port_open "$port"; then
        say "$name already answers on 127.0.0.1:$port"
        return 0
    fi
    if ! have "$binary"; then
        if ! apt_install "$package" || ! have "$binary"; then
            warn "$name is not installed ($binary missing) and could not be installed;" \
                "its tests will fail (on Debian: apt-get install $package)"
            return 0
        fi
    fi
    say "starting $name ..."
    if ! "$start"; then
        warn "$name's start command failed; see $LOG_DIR/ and the service's own log"
    fi
    wait_port "$name" "$port" "$wait" || warn "$name's tests will fail"
}

ensure_services() {
    local line
    for line in "${SERVICES[@]}"; do
        # shellcheck disable=SC2086
        ensure_service $line
    done
}

# ------------------------------------------------------------------------- Azurite

ensure_azurite() {
    # The binary is installed even when something answers on the port: the fault tests
    # start Azurites of their own (tests/test_faults.py).
    local bin="$ROOT/node_modules/.bin/azurite-blob"
    if [ ! -x "$bin" ]; then
        if ! have npm; then
            apt_install nodejs npm || true
        fi
        if ! have npm; then
            warn "npm is missing, so Azurite $AZURITE_VERSION cannot be installed;" \
                "the Azure tests will fail"
            return 0
        fi
        say "installing Azurite $AZURITE_VERSION with npm (project-local node_modules) ..."
        (cd "$ROOT" && npm ci --no-audit --no-fund --loglevel=error </dev/null)
    fi
    if port_open "$AZURITE_PORT"; then
        say "Azurite (or something) already answers on 127.0.0.1:$AZURITE_PORT"
        return 0
    fi
    mkdir -p "$AZURITE_DIR"
    say "starting Azurite blob service on 127.0.0.1:$AZURITE_PORT (in memory) ..."
    # setsid: Azurite outlives this script in its own session and holds none of our fds.
    setsid "$bin" --blobHost 127.0.0.1 --blobPort "$AZURITE_PORT" --inMemoryPersistence \
        --skipApiVersionCheck --loose --disableTelemetry --silent \
        </dev/null >"$AZURITE_DIR/azurite.log" 2>&1 &
    echo $! >"$AZURITE_DIR/azurite.pid"
    if ! wait_port Azurite "$AZURITE_PORT" 60; then
        warn "Azurite did not start; its log follows"
        tail -n 20 "$AZURITE_DIR/azurite.log" >&2 || true
    fi
}

stop_azurite() {
    local pidfile="$AZURITE_DIR/azurite.pid"
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        kill "$(cat "$pidfile")"
        say "stopped Azurite (pid $(cat "$pidfile"))"
    else
        say "no Azurite started by this script is running"
    fi
    rm -f "$pidfile"
}

# Chromium for the browser tests (pytest -m browser): Playwright drives Debian's build, never
# a browser of its own download (there is no network for that here).
ensure_chromium() {
    if have chromium; then
        say "chromium is installed ($(command -v chromium))"
        return 0
    fi
    apt_install chromium || warn "chromium missing; the browser tests (pytest -m browser) will fail"
}

main() {
    case "${1:-all}" in
        all) ensure_azurite; ensure_services; ensure_chromium ;;
        azurite) ensure_azurite ;;
        services) ensure_services ;;
        chromium) ensure_chromium ;;
        stop-azurite) stop_azurite ;;
        *) echo "usage: $0 [all|azurite|services|chromium|stop-azurite]" >&2; exit 2 ;;
    esac
}

# Sourcing the file (for a test of its functions) defines them without running anything.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi
