#!/bin/sh
# The entrypoint of deploy/postgres/Dockerfile: at the first start (an empty PGDATA, a new
# volume) initdb with the superuser POSTGRES_USER and its password, password (SCRAM)
# authentication from any address and trust on the local socket, and the database
# POSTGRES_DB; then PostgreSQL in the foreground, listening on every address.
set -eu
# A command of its own (`docker run IMAGE psql ...`) runs instead.
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then exec "$@"; fi
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD (the superuser's password)}"
user="${POSTGRES_USER:-ims}"
db="${POSTGRES_DB:-ims}"
: "${PGDATA:=/var/lib/postgresql/data}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  echo "ims-postgres: first start: a cluster in $PGDATA, superuser $user, database $db"
  pwfile="$(mktemp)"
  trap 'rm -f "$pwfile"' EXIT
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  initdb -D "$PGDATA" -U "$user" --pwfile="$pwfile" -E UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  if [ "$db" != postgres ]; then
    echo "CREATE DATABASE \"$db\" OWNER \"$user\";" |
      postgres --single -D "$PGDATA" -c listen_addresses= postgres >/dev/null
  fi
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/run/postgresql "$@"
