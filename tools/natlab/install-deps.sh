#!/bin/sh
# install-deps.sh installs what the NAT lab needs (nft, ip, tc, miniupnpd) from
# Debian packages. Idempotent: a package is installed only when its command is
# missing. Must run as root (apt-get, and the lab itself needs root).
set -eu

if [ "$(id -u)" -ne 0 ]; then
	echo "natlab install-deps: needs root (apt-get install, network namespaces); re-run with sudo" >&2
	exit 1
fi

missing=""
need() { # need <command> <package>
	if ! command -v "$1" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$1" ] && [ ! -x "/sbin/$1" ]; then
		missing="$missing $2"
	fi
}
need nft nftables
need ip iproute2
need tc iproute2
need sysctl procps
need miniupnpd miniupnpd

if [ -z "$missing" ]; then
	exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
	echo "natlab install-deps: missing:$missing and apt-get is not available; install them by hand" >&2
	exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# miniupnpd's package asks debconf questions and may try to start a daemon on
# the host: preseed "do not start" and forbid service starts during install.
if echo "$missing" | grep -q miniupnpd; then
	if command -v debconf-set-selections >/dev/null 2>&1; then
		echo "miniupnpd miniupnpd/start_daemon boolean false" | debconf-set-selections || true
		echo "miniupnpd miniupnpd/force_igd_desc_v1 boolean false" | debconf-set-selections || true
	fi
fi
policy=/usr/sbin/policy-rc.d
created_policy=""
if [ ! -e "$policy" ]; then
	printf '#!/bin/sh\nexit 101\n' >"$policy"
	chmod +x "$policy"
	created_policy=1
fi
cleanup() { if [ -n "$created_policy" ]; then rm -f "$policy"; fi; }
trap cleanup EXIT

# Deduplicate (iproute2 may be listed twice).
pkgs=$(echo "$missing" | tr ' ' '\n' | sort -u | tr '\n' ' ')
echo "natlab install-deps: installing $pkgs" >&2
# Other jobs on the machine may hold the dpkg lock: wait for it rather than fail.
apt="apt-get -o DPkg::Lock::Timeout=600"
if ! $apt install -y --no-install-recommends $pkgs >/dev/null 2>&1; then
	$apt update -qq
	$apt install -y --no-install-recommends $pkgs
fi
