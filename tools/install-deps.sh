#!/usr/bin/env bash
# Installs the Debian packages that pc2's tests use, only those missing,
# then the NAT lab's own dependencies. Idempotent; CI runs it as root on a
# clean machine. Without root it says what is missing and carries on: the
# tests that need those tools skip with a message.
set -euo pipefail
cd "$(dirname "$0")/.."

# command -> package
declare -A need=(
	[ip]=iproute2
	[curl]=curl
	[dig]=bind9-dnsutils
	[strace]=strace
	[turnserver]=coturn
	[conntrack]=conntrack
)

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }

missing=()
for cmd in "${!need[@]}"; do
	have "$cmd" || missing+=("${need[$cmd]}")
done

if [ "$(id -u)" -ne 0 ]; then
	[ ${#missing[@]} -eq 0 ] || echo "install-deps: not root; tests needing ${missing[*]} will skip" >&2
	exit 0
fi
if [ ${#missing[@]} -gt 0 ]; then
	echo "install-deps: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq || true
	apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if [ -x tools/natlab/install-deps.sh ]; then
	tools/natlab/install-deps.sh
fi
