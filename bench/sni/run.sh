#!/usr/bin/env bash
# SNI passthrough peer benchmark: our gateway/sniproxy vs HAProxy (tcp mode,
# req.ssl_sni, splice-auto), nginx (stream + ssl_preread) and sniproxy, all in
# front of the same loopback backends, measured in ONE run in interleaved
# rounds (the rounds rotate the order of the targets).
#
#   bench/sni/run.sh                              # full run, about 8 minutes
#   D=3s BULK_D=3s LAT_N=300 IDLE=1000 SLOW=1000 TLS_BULK_D=0 bench/sni/run.sh   # smoke run
#   VARIANTS="old=/path/to/old/snibench" bench/sni/run.sh   # adds another build of ours (A/B)
#   PLAIN=1 bench/sni/run.sh                      # adds the plain Go io.Copy relay (no SNI) as a reference
#   PHASES="rate,latency,bulk" bench/sni/run.sh   # a subset; space separates groups run on fresh processes
#
# The main measurements use a canned ClientHello and a backend that answers
# the first byte without TLS and then streams raw bytes, so TLS crypto in the
# load generator does not hide the proxies' own costs; TLS_BULK_D>0 adds a
# crypto/tls bulk variant. Loopback only; every load is bounded in time and
# count. Installs the peers with apt only when missing. Results:
# bench/out/sni/results.md (+ .json).
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-$ROOT/bench/out/sni}
D=${D:-10s}                 # connection-rate time per target
C=${C:-64}                  # concurrent connection workers
LAT_N=${LAT_N:-2000}        # sequential connections per target for p50/p99
BULK_D=${BULK_D:-10s}       # raw bulk time per target and stream count
TLS_BULK_D=${TLS_BULK_D:-5s} # TLS bulk time per target and stream count (0: skip)
IDLE=${IDLE:-9000}          # idle established connections (memory)
IDLE_WAIT=${IDLE_WAIT:-5s}  # how long they idle before RSS is read
SLOW=${SLOW:-10000}         # slowloris pending connections
ROUNDS=${ROUNDS:-5}
BASE_PORT=${BASE_PORT:-21440}  # below the ephemeral range (32768+), so bind never collides with a client port
RAWB=$((BASE_PORT + 60)) TLSB=$((BASE_PORT + 61))
OURS=$((BASE_PORT + 3)) HAP=$((BASE_PORT + 4)) NGX=$((BASE_PORT + 5)) SNIP=$((BASE_PORT + 6)) OLDP=$((BASE_PORT + 7))

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

# An idle relayed connection holds two descriptors in the proxy, a pending
# one holds one; stay under the hard limit.
ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n)
max_idle=$(( (NOFILE - 1000) / 2 ))
if [ "$IDLE" -gt "$max_idle" ]; then
	log "fd hard limit $NOFILE: idle connections lowered from $IDLE to $max_idle"
	IDLE=$max_idle
fi
if [ "$SLOW" -gt $((NOFILE - 1000)) ]; then
	log "fd hard limit $NOFILE: slowloris connections lowered from $SLOW to $((NOFILE - 1000))"
	SLOW=$((NOFILE - 1000))
fi
MAXCONN=$(( (IDLE > SLOW ? IDLE : SLOW) + 500 ))

install_peers
mkdir -p "$OUT/nginx"
log "building snibench"
go build -o "$OUT/snibench" ./bench/sni/snibench
"$OUT/snibench" cert -dir "$OUT"

PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	PIDS=()
}
trap cleanup EXIT

cat >"$OUT/haproxy.cfg" <<EOF
global
    # as many connections as the descriptor limit allows: HAProxy reserves
    # two descriptors per connection and per pipe, plus a few
    maxconn $(( (NOFILE - 200 - 2 * 64) / 2 ))
    nbthread 2
    maxpipes 64
defaults
    mode tcp
    timeout connect 5s
    timeout client 600s
    timeout server 600s
    option splice-auto
frontend sni
    bind 127.0.0.1:$HAP backlog 4096
    tcp-request inspect-delay 5s
    tcp-request content accept if { req.ssl_hello_type 1 }
    use_backend raw if { req.ssl_sni -i www.bench.test }
    use_backend tls if { req.ssl_sni -i tls.bench.test }
backend raw
    server b1 127.0.0.1:$RAWB
backend tls
    server b1 127.0.0.1:$TLSB
EOF

cat >"$OUT/nginx/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
worker_processes 2;
worker_rlimit_nofile $NOFILE;
pid $OUT/nginx/nginx.pid;
error_log $OUT/nginx/error.log warn;
events { worker_connections $(( NOFILE - 500 )); }
stream {
    map \$ssl_preread_server_name \$up {
        www.bench.test raw;
        tls.bench.test tls;
    }
    upstream raw { server 127.0.0.1:$RAWB; }
    upstream tls { server 127.0.0.1:$TLSB; }
    server {
        listen 127.0.0.1:$NGX backlog=4096;
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
    ^www[.]bench[.]test\$ 127.0.0.1:$RAWB
    ^tls[.]bench[.]test\$ 127.0.0.1:$TLSB
}
EOF

ROUTES=(-route "www.bench.test=127.0.0.1:$RAWB" -route "tls.bench.test=127.0.0.1:$TLSB")

# start_all starts the backends and every proxy and waits until all listen.
# Each memory phase gets freshly started processes, so that memory freed by
# an earlier phase and kept for reuse does not hide what the phase costs.
start_all() {
	"$OUT/snibench" rawbackend -listen "127.0.0.1:$RAWB" & PIDS+=($!); RAWB_PID=$!
	"$OUT/snibench" backend -listen "127.0.0.1:$TLSB" -dir "$OUT" & PIDS+=($!)
	"$OUT/snibench" proxy -listen "127.0.0.1:$OURS" "${ROUTES[@]}" -maxconns "$MAXCONN" & PIDS+=($!); OURS_PID=$!
	haproxy -db -f "$OUT/haproxy.cfg" & PIDS+=($!); HAP_PID=$!
	nginx -e "$OUT/nginx/early.log" -p "$OUT/nginx/" -c "$OUT/nginx/nginx.conf" & PIDS+=($!); NGX_PID=$!
	sniproxy -f -n "$NOFILE" -c "$OUT/sniproxy.conf" & PIDS+=($!); SNIP_PID=$!
	PORTS=($RAWB $TLSB $OURS $HAP $NGX $SNIP)
	TARGETS=(-target "ours=127.0.0.1:$OURS@$OURS_PID")
	# VARIANTS="name=/path/to/snibench[,ENV=value...] ..." adds other builds
	# of our proxy (A/B runs), e.g. VARIANTS="old=/tmp/snibench-old gmp1=bin,GOMAXPROCS=1".
	local port=$((BASE_PORT + 20)) v name spec bin envs
	for v in ${VARIANTS:-}; do
		name=${v%%=*}; spec=${v#*=}; bin=${spec%%,*}; envs=()
		[ "$spec" != "$bin" ] && IFS=, read -r -a envs <<<"${spec#*,}"
		env "${envs[@]}" "$bin" proxy -listen "127.0.0.1:$port" "${ROUTES[@]}" -maxconns "$MAXCONN" & PIDS+=($!)
		TARGETS+=(-target "$name=127.0.0.1:$port@$!")
		PORTS+=($port)
		port=$((port + 1))
	done
	if [ -n "${PLAIN:-}" ]; then # the issue's reference: a plain Go io.Copy relay without SNI
		"$OUT/snibench" plainrelay -listen "127.0.0.1:$port" -backend "127.0.0.1:$RAWB" & PIDS+=($!)
		TARGETS+=(-target "plain-go=127.0.0.1:$port@$!")
		PORTS+=($port)
		port=$((port + 1))
	fi
	TARGETS+=(-target "haproxy=127.0.0.1:$HAP@$HAP_PID" -target "nginx=127.0.0.1:$NGX@$NGX_PID" -target "sniproxy=127.0.0.1:$SNIP@$SNIP_PID")
	for port in "${PORTS[@]}"; do
		for _ in $(seq 100); do
			(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
			sleep 0.1
		done
		(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { log "nothing listens on $port"; exit 1; }
	done
}

DIRECT_TLS=()
[ "$TLS_BULK_D" != 0 ] && DIRECT_TLS=(-direct-tls "127.0.0.1:$TLSB" -dir "$OUT")
PHASES=${PHASES:-rate,latency,bulk,tls idle slowloris}   # groups run on fresh processes
log "versions: $(haproxy -v | head -1); $(nginx -v 2>&1); sniproxy $(dpkg-query -W -f='${Version}' sniproxy 2>/dev/null); $(go version)"
log "cores: $(nproc); uptime before run: $(uptime)"
rm -f "$OUT/results.json"
IN=()
for group in $PHASES; do
	cleanup
	start_all
	log "phases $group (uptime: $(uptime | sed 's/.*load/load/'))"
	NPROC=$(nproc) "$OUT/snibench" suite -direct "127.0.0.1:$RAWB" -backend-pid "$RAWB_PID" "${DIRECT_TLS[@]}" "${TARGETS[@]}" \
		-phases "$group" "${IN[@]}" -no-report \
		-c "$C" -d "$D" -latency-n "$LAT_N" -bulk-d "$BULK_D" -tls-bulk-d "$TLS_BULK_D" \
		-idle "$IDLE" -idle-wait "$IDLE_WAIT" -slowloris "$SLOW" -rounds "$ROUNDS" \
		-json "$OUT/results.json.new"
	mv "$OUT/results.json.new" "$OUT/results.json"
	IN=(-in "$OUT/results.json")
done
NPROC=$(nproc) "$OUT/snibench" suite -direct "127.0.0.1:$RAWB" "${TARGETS[@]}" -phases "" -in "$OUT/results.json" \
	-c "$C" -d "$D" -latency-n "$LAT_N" -bulk-d "$BULK_D" -tls-bulk-d "$TLS_BULK_D" \
	-idle "$IDLE" -idle-wait "$IDLE_WAIT" -slowloris "$SLOW" -rounds "$ROUNDS" | tee "$OUT/results.md"
log "uptime after run: $(uptime); results in $OUT/results.md"
