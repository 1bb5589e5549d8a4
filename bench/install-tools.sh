#!/bin/sh
# Install the benchmark's external tools: wrk (load generator), nginx and HAProxy (the front
# ends bench/proxy.py compares prefork_lb's proxy with), valgrind (bench/instructions.py).
#
# Debian/Ubuntu only (apt-get). Idempotent: a tool already on PATH is left alone, so running it
# twice installs nothing the second time. Run as root, or as a user with sudo; otherwise it
# prints the command to run and exits 1.
#
# Note: the distribution packages of nginx and haproxy enable a system service (nginx on port
# 80). bench/proxy.py never uses those services: it starts its own nginx/haproxy processes on
# free 127.0.0.1 ports with generated configs. On a benchmark machine you may want
#     sudo systemctl disable --now nginx haproxy
# so they do not take CPU during runs.
set -eu

missing=""
for tool in wrk nginx haproxy valgrind; do
    if command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ]; then
        echo "ok: $tool already installed ($(command -v "$tool" || echo "/usr/sbin/$tool"))"
    else
        missing="$missing $tool"
    fi
done

if [ -z "$missing" ]; then
    echo "all benchmark tools are installed"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: apt-get not found; install these with your package manager:$missing" >&2
    exit 1
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo"
else
    echo "error: need root to install:$missing" >&2
    echo "run:   sudo apt-get update && sudo apt-get install -y$missing" >&2
    echo "or:    sudo sh bench/install-tools.sh" >&2
    exit 1
fi

echo "installing:$missing"
# noninteractive: no debconf prompts; the lists are refreshed first because a fresh container has none
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
# shellcheck disable=SC2086  # $missing is a word list on purpose
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing

for tool in $missing; do
    if command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ]; then
        echo "ok: $tool installed"
    else
        echo "error: $tool still not found after apt-get install" >&2
        exit 1
    fi
done
