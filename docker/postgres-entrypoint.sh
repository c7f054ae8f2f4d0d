#!/bin/sh
# Starts PostgreSQL 15 as the primary (ROLE=primary) or as a streaming standby of $PRIMARY_HOST,
# with application_name = $NODE_NAME, as tests/pg.py does natively.
set -eu
PGDATA=/var/lib/postgresql/data
BIN=/usr/lib/postgresql/15/bin
mkdir -p "$PGDATA" && chown postgres:postgres "$PGDATA" && chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ "$ROLE" = primary ]; then
    runuser -u postgres -- "$BIN/initdb" -D "$PGDATA" -A trust -U postgres
    cat >> "$PGDATA/postgresql.conf" <<CONF
listen_addresses = '*'
wal_level = replica
max_wal_senders = 16
hot_standby = on
wal_keep_size = '256MB'
CONF
    echo "host all,replication all all trust" >> "$PGDATA/pg_hba.conf"
  else
    until runuser -u postgres -- "$BIN/pg_basebackup" -h "$PRIMARY_HOST" -U postgres -D "$PGDATA" -X stream -c fast; do sleep 1; done
    # pg_basebackup copies the primary's synchronous_standby_names: a standby must not carry it.
    sed -i '/^synchronous_standby_names/d;/^primary_conninfo/d' "$PGDATA/postgresql.auto.conf"
    echo "primary_conninfo = 'host=$PRIMARY_HOST user=postgres application_name=$NODE_NAME'" >> "$PGDATA/postgresql.auto.conf"
    touch "$PGDATA/standby.signal" && chown postgres:postgres "$PGDATA/standby.signal"
  fi
fi
exec runuser -u postgres -- "$BIN/postgres" -D "$PGDATA"
