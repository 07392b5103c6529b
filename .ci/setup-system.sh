#!/usr/bin/env bash
# Prepare a Debian 12 machine for airlock's end-to-end tests: install the system packages
# and make sure a Docker daemon answers on /var/run/docker.sock. Idempotent: safe to re-run.
#
# dockerd flags (only used when we start the daemon ourselves):
#   --ip6tables=false  airlock's sandbox networks are IPv4 only and airlock's own nftables
#                      table drops every IPv6 packet from a sandbox bridge; we do not want
#                      Docker writing ip6tables rules (experimental in 20.10) on the host.
#   --iptables=true    (the default) Docker's isolation rules for --internal networks are a
#                      second line of defence under airlock's table; keep them.
set -euo pipefail

LOG=/var/log/airlock-dockerd.log
SOCK=/var/run/docker.sock
PACKAGES=(docker.io nftables debootstrap iproute2 git curl busybox-static gh redis-server)

if [[ $(id -u) -ne 0 ]]; then
    echo "setup-system.sh: must run as root" >&2
    exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    # dpkg-query prints "install ok installed" only for a fully installed package.
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    echo "setup-system.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

docker_answers() {
    # Ask the engine itself over the socket; a stale socket file left by a dead daemon
    # does not count.
    [[ -S $SOCK ]] && curl -fsS --max-time 3 --unix-socket "$SOCK" http://localhost/_ping \
        >/dev/null 2>&1
}

if docker_answers; then
    echo "setup-system.sh: docker already running"
    exit 0
fi

if pgrep -x dockerd >/dev/null; then
    echo "setup-system.sh: dockerd is running but $SOCK does not answer; waiting for it"
else
    echo "setup-system.sh: starting dockerd (log: $LOG)"
    # setsid + nohup: the daemon must outlive this script and the CI step that ran it.
    setsid nohup /usr/sbin/dockerd --ip6tables=false >>"$LOG" 2>&1 </dev/null &
fi

for _ in $(seq 1 60); do
    if docker_answers; then
        echo "setup-system.sh: docker is up"
        exit 0
    fi
    sleep 1
done

echo "setup-system.sh: ERROR: dockerd did not answer on $SOCK within 60 s; last log lines:" >&2
tail -n 30 "$LOG" >&2 || true
exit 1
