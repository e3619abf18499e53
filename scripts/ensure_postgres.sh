#!/usr/bin/env bash
# Install Debian's PostgreSQL server binaries when they are missing: the tests of PostgreSQL studies
# start a throw-away server of their own (initdb in a temporary folder), so no cluster is created.
set -euo pipefail
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && exit 0
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "Installing PostgreSQL (Debian package postgresql) ..."
    mkdir -p /etc/postgresql-common
    echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        -o Dpkg::Options::=--force-confold postgresql >/dev/null
else
    echo "PostgreSQL is not installed: the PostgreSQL tests will be skipped. Install it with" >&2
    echo "'sudo apt-get install postgresql' (no cluster is needed: the tests start their own)." >&2
fi
