#!/usr/bin/env bash
# Starts the local PostgreSQL and Redis the store and replica tests use, when they are not
# already answering (tests of those back ends skip, saying why, when neither can be started).
set -u
up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if ! up 5432; then
    if command -v pg_ctlcluster >/dev/null 2>&1; then
        for c in /etc/postgresql/*/*; do
            [ -d "$c" ] && pg_ctlcluster "$(basename "$(dirname "$c")")" "$(basename "$c")" start 2>/dev/null
        done
    fi
    up 5432 || service postgresql start >/dev/null 2>&1 || true
fi
if ! up 6379; then
    command -v redis-server >/dev/null 2>&1 && redis-server --daemonize yes --save "" --appendonly no >/dev/null 2>&1 || true
fi
for port in 5432 6379; do
    for _ in $(seq 20); do up "$port" && break; sleep 0.5; done
    up "$port" || echo "note: nothing answers on 127.0.0.1:$port; its tests will skip"
done
exit 0
