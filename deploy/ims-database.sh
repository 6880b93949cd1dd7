#!/bin/bash
# ims-database VAR COMMAND [ARG...]: runs COMMAND (the HSS, the S-CSCF) on the compose stack's
# PostgreSQL when it has one (the `postgres` profile), else as it is (SQLite on its volume).
#
#   command: ["ims-database", "IMS_HSS__DATABASE", "hss", "-c", "/etc/ims/hss.toml"]
#
# PostgreSQL is chosen when IMS_POSTGRES_URL is set and either its host resolves (to
# IMS_POSTGRES_IP when set, so that a namesake elsewhere in DNS does not count: the profile's
# `postgres` service is on the network) or this volume has been on PostgreSQL
# before (a marker in /var/lib/ims, so that a restart while PostgreSQL is down waits for it
# instead of starting over on an empty SQLite). Then VAR is set to the URL, and COMMAND starts
# once PostgreSQL accepts connections (at most IMS_POSTGRES_WAIT seconds, 60 by default).
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: ims-database VAR COMMAND [ARG...]" >&2; exit 2; }
var="$1"
shift
marker=/var/lib/ims/.on-postgres
url="${IMS_POSTGRES_URL:-}"
[ -n "$url" ] || exec "$@"

# postgres://user:password@host:port/db
rest="${url#*://}"
rest="${rest##*@}"
hostport="${rest%%/*}"
host="${hostport%%:*}"
port="${hostport##*:}"
[ "$port" != "$hostport" ] || port=5432

running() {
  local addr=""
  read -r addr _ < <(getent hosts "$host" 2>/dev/null || true)
  [ -n "$addr" ] && { [ -z "${IMS_POSTGRES_IP:-}" ] || [ "$addr" = "$IMS_POSTGRES_IP" ]; }
}
if [ ! -e "$marker" ] && ! running; then
  exec "$@"
fi
wait_s="${IMS_POSTGRES_WAIT:-60}"
deadline=$((SECONDS + wait_s))
until timeout 2 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "ims-database: PostgreSQL at $host:$port does not answer after ${wait_s}s;" \
      "this volume is on PostgreSQL (start the stack with --profile postgres," \
      "or docker-compose down -v to start over)" >&2
    exit 1
  fi
  sleep 1
done
touch "$marker"
echo "ims-database: $var on PostgreSQL at $host:$port" >&2
export "$var=$url"
exec "$@"
