#!/usr/bin/env bash
# Tunnel peer benchmark: pc2's QUIC tunnel (relay/tunnel behind
# gateway/sniproxy) against frp v0.61.1 in TCP-mux mode (TLS + yamux, frp's
# default) and QUIC mode, each carrying visitors' TLS by SNI (frp "https"
# vhost proxies) to the same loopback TLS backend, plus a direct baseline,
# measured in one run. See bench/RESULTS-tunnel.md.
#
#   bench/tunnel/run.sh                         # full run, about 4 minutes
#   IDLE_N=200 BULK_D=3s RATE_D=3s LOAD_D=3s bench/tunnel/run.sh   # smoke run
#
# Loopback only; every load is bounded in time and count; every process
# started here is stopped on exit. Results: bench/out/tunnel/results.md (+ .json).
set -euo pipefail

cd "$(dirname "$0")"
HERE=$PWD
OUT=${OUT:-$HERE/../out/tunnel}
IDLE_N=${IDLE_N:-1000}      # idle tunnels for the memory-per-tunnel figure
BULK_D=${BULK_D:-6s}        # bulk time per target and connection count
RATE_D=${RATE_D:-6s}        # connection-rate time per target
RATE_C=${RATE_C:-32}        # connection-rate workers
LAT_N=${LAT_N:-500}         # latency samples per target
LOAD_RATE=${LOAD_RATE:-1000} # fixed connection rate for RSS under load
LOAD_D=${LOAD_D:-6s}
ROUNDS=${ROUNDS:-3}
# Our transports to measure: QUIC, the TLS-over-TCP fallback (yamux), and
# the TCP tunnel with data connections for the passthrough visitors
# (relay/tunnel/dataconn.go; DATA_CONNS idle per node).
OURS_MODES=${OURS_MODES:-quic tcp tcp+data}
DATA_CONNS=${DATA_CONNS:-4}
PEERS=${PEERS:-frp-tcp frp-quic}
# Below the ephemeral range (32768–60999 here), so no outgoing connection
# of a concurrent test can hold one of these ports.
P=${BASE_PORT:-23600}
B=$P
OURS_SNI=$((P + 43)) OURS_UDP=$((P + 90))
FT_BIND=$((P + 120)) FT_VHOST=$((P + 163))
FQ_BIND=$((P + 130)) FQ_QUIC=$((P + 131)) FQ_VHOST=$((P + 173))

log() { printf 'run.sh: %s\n' "$*" >&2; }

mkdir -p "$OUT"
log "building tunnelbench and frpbench (frp v0.61.1 from the module proxy)"
go build -o "$OUT/tunnelbench" ./tunnelbench
(cd frp && go build -o "$OUT/frpbench" .)
TB=$OUT/tunnelbench FB=$OUT/frpbench
"$TB" cert -dir "$OUT"
ulimit -n "$(ulimit -Hn)"

PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	PIDS=()
}
trap cleanup EXIT

wait_tcp() {
	for _ in $(seq 100); do
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
		sleep 0.1
	done
	log "nothing listens on $1"; return 1
}

# Starts a server for system $1 on port offset $2; sets SRV_PID and the
# client arguments CLI (without -n).
start_server() {
	local sys=$1 off=$2
	case $sys in
	ours-*)
		local mode=${sys#ours-} data=0
		[[ $mode == *+data ]] && data=$DATA_CONNS
		"$TB" ours-server -sni "127.0.0.1:$((OURS_SNI + off))" -tunnel "127.0.0.1:$((OURS_UDP + off))" & SRV_PID=$!
		CLI=("$TB" ours-client -supernode "127.0.0.1:$((OURS_UDP + off))" -local "127.0.0.1:$B" -transport "${mode%+data}" -data-conns "$data")
		ENTRY=$((OURS_SNI + off)) ;;
	frp-tcp)
		"$FB" frps -bind "127.0.0.1:$((FT_BIND + off))" -vhost "127.0.0.1:$((FT_VHOST + off))" & SRV_PID=$!
		CLI=("$FB" frpc -server "127.0.0.1:$((FT_BIND + off))" -proto tcp -local "127.0.0.1:$B" -domains www.bench.test,hello.bench.test)
		ENTRY=$((FT_VHOST + off)) ;;
	frp-quic)
		"$FB" frps -bind "127.0.0.1:$((FQ_BIND + off))" -quic "$((FQ_QUIC + off))" -vhost "127.0.0.1:$((FQ_VHOST + off))" & SRV_PID=$!
		CLI=("$FB" frpc -server "127.0.0.1:$((FQ_QUIC + off))" -proto quic -local "127.0.0.1:$B" -domains www.bench.test,hello.bench.test)
		ENTRY=$((FQ_VHOST + off)) ;;
	esac
	PIDS+=("$SRV_PID")
	wait_tcp "$ENTRY"
	# Another system's server on the same port would answer wait_tcp.
	kill -0 "$SRV_PID" 2>/dev/null || { log "$sys: server exited (port taken?)"; exit 1; }
}

SYSTEMS=()
for m in $OURS_MODES; do SYSTEMS+=("ours-$m"); done
for m in $PEERS; do SYSTEMS+=("$m"); done

log "cores: $(nproc); load before run: $(cut -d' ' -f1-3 /proc/loadavg); $(go version)"
"$TB" backend -listen "127.0.0.1:$B" -dir "$OUT" & PIDS+=($!)
wait_tcp "$B"

# Phase 1: memory per idle tunnel, one fresh server at a time.
rm -f "$OUT/idle.jsonl"
for sys in "${SYSTEMS[@]}"; do
	start_server "$sys" 1000
	sleep 1
	"$TB" idle -name "$sys" -server-pid "$SRV_PID" -n "$IDLE_N" -json "$OUT/idle.jsonl" -- "${CLI[@]}" -n "$IDLE_N"
	kill "$SRV_PID"; wait "$SRV_PID" 2>/dev/null || true
done

# Phase 2: one server and one client per system, then the suite.
TARGETS=()
ours_off=0
for sys in "${SYSTEMS[@]}"; do
	off=0
	case $sys in ours-*) off=$ours_off; ours_off=$((ours_off + 5)) ;; esac # each of our modes its own server (up to 6 modes below the peers)
	start_server "$sys" "$off"
	"${CLI[@]}" -n 1 -watch-stdin=false > "$OUT/$sys-client.out" & CPID=$!; PIDS+=("$CPID")
	for _ in $(seq 100); do grep -q '^up 1' "$OUT/$sys-client.out" 2>/dev/null && break; sleep 0.1; done
	grep -q '^up 1' "$OUT/$sys-client.out" || { log "$sys: client not up"; exit 1; }
	TARGETS+=(-target "$sys=127.0.0.1:$ENTRY@$SRV_PID,$CPID")
done
log "load before suite: $(cut -d' ' -f1-3 /proc/loadavg)"
"$TB" suite -dir "$OUT" -direct "127.0.0.1:$B" "${TARGETS[@]}" \
	-rounds "$ROUNDS" -bulk-d "$BULK_D" -rate-d "$RATE_D" -rate-c "$RATE_C" -latency-n "$LAT_N" \
	-load-rate "$LOAD_RATE" -load-d "$LOAD_D" -idle "$OUT/idle.jsonl" -json "$OUT/results.json" | tee "$OUT/results.md"
log "load after run: $(cut -d' ' -f1-3 /proc/loadavg); results in $OUT/results.md"
