#!/usr/bin/env bash
# Installs the Debian packages that pc2's tests use, only those missing.
# Idempotent; CI runs it as root on a clean machine. Without root it says
# what is missing and carries on: the tests that need those tools skip.
set -euo pipefail

# command -> package
declare -A need=(
	[ip]=iproute2
)

missing=()
for cmd in "${!need[@]}"; do
	command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
	echo "install-deps: not root; tests needing ${missing[*]} will skip" >&2
	exit 0
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq || true
apt-get install -y -qq --no-install-recommends "${missing[@]}"
