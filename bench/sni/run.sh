#!/usr/bin/env bash
# SNI passthrough peer benchmark: our gateway/sniproxy vs HAProxy (tcp mode,
# req.ssl_sni, splice-auto), nginx (stream + ssl_preread) and sniproxy, all in
# front of the same loopback TLS backend, measured one after another in one run.
#
#   bench/sni/run.sh                 # full run, ~3-4 minutes
#   D=3s BULK_D=2s IDLE=1000 bench/sni/run.sh   # quick smoke run
#
# Loopback only; every load is bounded in time and count. Installs the peers
# with apt only when missing. Results: bench/out/sni/results.md (+ .json).
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-$ROOT/bench/out/sni}
D=${D:-10s}             # handshake-rate duration per target
C=${C:-64}              # concurrent handshake workers
BULK_D=${BULK_D:-10s}   # per bulk measurement (1 and 8 streams each)
LAT_N=${LAT_N:-1000}    # sequential handshakes for p50/p99
IDLE=${IDLE:-9000}      # idle connections for the RSS measurement
BASE_PORT=${BASE_PORT:-47440}
B=$((BASE_PORT + 60)) OURS=$((BASE_PORT + 3)) HAP=$((BASE_PORT + 4)) NGX=$((BASE_PORT + 5)) SNIP=$((BASE_PORT + 6))

log() { printf 'run.sh: %s\n' "$*" >&2; }

install_peers() {
	local pkgs=()
	command -v haproxy >/dev/null || pkgs+=(haproxy)
	command -v nginx >/dev/null || pkgs+=(nginx)
	[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || pkgs+=(libnginx-mod-stream)
	command -v sniproxy >/dev/null || pkgs+=(sniproxy)
	if [ ${#pkgs[@]} -gt 0 ]; then
		log "installing ${pkgs[*]}"
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${pkgs[@]}" >/dev/null
	fi
}

# The proxy holds two descriptors per connection; stay under the hard limit.
ulimit -n "$(ulimit -Hn)"
max_idle=$(( ($(ulimit -n) - 2000) / 2 ))
if [ "$IDLE" -gt "$max_idle" ]; then
	log "fd hard limit $(ulimit -Hn): idle connections lowered from $IDLE to $max_idle"
	IDLE=$max_idle
fi
MAXCONN=$((IDLE + 200))

install_peers
mkdir -p "$OUT/nginx"
log "building snibench"
go build -o "$OUT/snibench" ./bench/sni/snibench
"$OUT/snibench" cert -dir "$OUT"

PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

cat >"$OUT/haproxy.cfg" <<EOF
global
    maxconn $MAXCONN
    nbthread 2
    maxpipes 128
defaults
    mode tcp
    timeout connect 5s
    timeout client 600s
    timeout server 600s
    option splice-auto
frontend sni
    bind 127.0.0.1:$HAP
    tcp-request inspect-delay 5s
    tcp-request content accept if { req.ssl_hello_type 1 }
    use_backend tls if { req.ssl_sni -m end .bench.test }
backend tls
    server b1 127.0.0.1:$B
EOF

cat >"$OUT/nginx/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
worker_processes 2;
worker_rlimit_nofile $(ulimit -n);
pid $OUT/nginx/nginx.pid;
error_log $OUT/nginx/error.log warn;
events { worker_connections $(( $(ulimit -n) - 500 )); }
stream {
    map \$ssl_preread_server_name \$up {
        ~\.bench\.test\$ tls;
    }
    upstream tls { server 127.0.0.1:$B; }
    server {
        listen 127.0.0.1:$NGX;
        ssl_preread on;
        preread_timeout 5s;
        proxy_timeout 600s;
        proxy_pass \$up;
    }
}
EOF

cat >"$OUT/sniproxy.conf" <<EOF
user daemon
pidfile /tmp/pc2-bench-sniproxy.pid
error_log {
    filename /tmp/pc2-bench-sniproxy-error.log
    priority warning
}
listener 127.0.0.1:$SNIP {
    protocol tls
    table bench
}
table bench {
    ^.*[.]bench[.]test\$ 127.0.0.1:$B
}
EOF

"$OUT/snibench" backend -listen "127.0.0.1:$B" -dir "$OUT" & PIDS+=($!)
"$OUT/snibench" proxy -listen "127.0.0.1:$OURS" -backend "127.0.0.1:$B" -maxconns "$MAXCONN" & PIDS+=($!); OURS_PID=$!
haproxy -db -f "$OUT/haproxy.cfg" & PIDS+=($!); HAP_PID=$!
nginx -e "$OUT/nginx/early.log" -p "$OUT/nginx/" -c "$OUT/nginx/nginx.conf" & PIDS+=($!); NGX_PID=$!
sniproxy -f -n "$(ulimit -n)" -c "$OUT/sniproxy.conf" & PIDS+=($!); SNIP_PID=$!

for port in $B $OURS $HAP $NGX $SNIP; do
	for _ in $(seq 100); do
		(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
		sleep 0.1
	done
	(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { log "nothing listens on $port"; exit 1; }
done

log "versions: $(haproxy -v | head -1); $(nginx -v 2>&1); sniproxy $(dpkg-query -W -f='${Version}' sniproxy 2>/dev/null); $(go version)"
log "cores: $(nproc); load before run: $(cut -d' ' -f1-3 /proc/loadavg)"
"$OUT/snibench" suite -dir "$OUT" -direct "127.0.0.1:$B" \
	-target "ours=127.0.0.1:$OURS@$OURS_PID" \
	-target "haproxy=127.0.0.1:$HAP@$HAP_PID" \
	-target "nginx=127.0.0.1:$NGX@$NGX_PID" \
	-target "sniproxy=127.0.0.1:$SNIP@$SNIP_PID" \
	-c "$C" -d "$D" -bulk-d "$BULK_D" -latency-n "$LAT_N" -idle "$IDLE" \
	-json "$OUT/results.json" | tee "$OUT/results.md"
log "load after run: $(cut -d' ' -f1-3 /proc/loadavg); results in $OUT/results.md"
