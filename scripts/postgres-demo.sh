#!/usr/bin/env bash
# From an empty PostgreSQL to a live view (see README, "Live views over
# PostgreSQL and NATS").
#
# Makes a PostgreSQL cluster in ./postgres-demo/pg with `initdb` (Debian:
# apt-get install postgresql; as root it runs as the `postgres` user),
# starts it on 127.0.0.1:5433 with wal_level=logical, creates an `orders`
# table with a few rows, and starts Vista on 127.0.0.1:8877 with the
# `orders` example plugin fed by `--source orders=postgres://...`. Then it
# changes the table every second. Subscribe to `Order/list` or the
# derived `Order/open` (`vista tail Order/open`, or the dashboard at
# http://127.0.0.1:8877/) and watch. Ctrl-C stops both (by PID).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$bin/initdb" ] || {
    echo "PostgreSQL not found under /usr/lib/postgresql/*/bin: apt-get install postgresql" >&2
    exit 1
}
cargo build -p vista-host -p vista-orders
root=$PWD/postgres-demo
as_pg=()
if [ "$(id -u)" = 0 ]; then as_pg=(runuser -u postgres --); fi
mkdir -p "$root/plugins"
if [ ! -d "$root/pg" ]; then
    mkdir -p "$root/pg"
    [ "$(id -u)" = 0 ] && chown postgres "$root/pg"
    "${as_pg[@]}" "$bin/initdb" -D "$root/pg" -A trust -U postgres >/dev/null
fi
"${as_pg[@]}" "$bin/pg_ctl" -D "$root/pg" -l "$root/pg/log" -w start \
    -o "-p 5433 -k /tmp -c listen_addresses=127.0.0.1 -c wal_level=logical"
pid=
stop() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    "${as_pg[@]}" "$bin/pg_ctl" -D "$root/pg" -m fast stop >/dev/null || true
}
trap stop EXIT INT TERM
psql=("$bin/psql" -q -h 127.0.0.1 -p 5433 -U postgres postgres)
"${psql[@]}" <<'SQL'
CREATE TABLE IF NOT EXISTS orders (
    id int PRIMARY KEY,
    customer text NOT NULL,
    status text NOT NULL,
    amount numeric(12,2) NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO orders (id, customer, status, amount)
SELECT g, 'customer ' || g, 'open', g * 10 FROM generate_series(1, 5) g
ON CONFLICT DO NOTHING;
SQL
cp target/debug/libvista_orders.so "$root/plugins/orders.so"
target/debug/vista serve --plugins "$root/plugins" --data "$root/data" \
    --cache-dir "$root/cache" --listen 127.0.0.1:8877 --allow-anonymous \
    --allow-anonymous-admin \
    --source "orders=postgres://postgres@127.0.0.1:5433/postgres?publication=vista" "$@" &
pid=$!
echo "Vista on http://127.0.0.1:8877 (GET /sources); changing the orders table every second"
n=6
while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    "${psql[@]}" -c "BEGIN;
        INSERT INTO orders (id, customer, status, amount) VALUES ($n, 'customer $n', 'open', $n);
        UPDATE orders SET status = 'paid', updated_at = now() WHERE id = $((n - 3));
        DELETE FROM orders WHERE id = $((n - 5));
        COMMIT;" >/dev/null
    n=$((n + 1))
done
