#!/usr/bin/env bash
# Debian packages the tests and benchmarks use: Fashion-MNIST IDX files and chromium.
set -eu
need=()
[ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# --bench: also the load generator (wrk) and proxy (nginx) of bench_serve.py and bench_replicas.py
[ "${1:-}" = "--bench" ] && { command -v wrk >/dev/null 2>&1 || need+=(wrk); command -v nginx >/dev/null 2>&1 || need+=(nginx-light); }
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo -n"; else exit 1; fi
$SUDO apt-get install -y -q "${need[@]}" >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q "${need[@]}" >/dev/null; }
