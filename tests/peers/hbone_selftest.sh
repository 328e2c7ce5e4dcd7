#!/usr/bin/env bash
# Self-test for the independent HBONE peers (hbone_server.py / hbone_client.py):
# makes a throwaway mesh CA (+ a foreign CA) with openssl, runs the server on
# 127.0.0.1:15008 and checks positive and negative cases.  Exits non-zero on any failure.
# CI runs it through tests/tests/hbone_peers_selftest.rs (which also checks the number of
# PASS lines, so a check that stops running fails too).
#
#   tests/peers/hbone_selftest.sh            (PORT=15008 by default; HBONE_SELFTEST_PORT overrides)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-python3}"
PORT="${HBONE_SELFTEST_PORT:-15008}"
TD="cluster.local"
SAN_SERVER="spiffe://$TD/ns/default/sa/server"
SAN_CLIENT="spiffe://$TD/ns/default/sa/client"

command -v openssl >/dev/null 2>&1 || { echo "selftest: openssl missing (run scripts/setup.sh)" >&2; exit 1; }
"$PY" -c 'import h2' 2>/dev/null || { echo "selftest: python h2 missing (run scripts/setup.sh or pip install 'h2>=4,<5')" >&2; exit 1; }

WORK="$(mktemp -d /tmp/hbone-selftest.XXXXXX)"
SERVER_PIDS=()
cleanup() {
    for pid in "${SERVER_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    [ -n "${HBONE_SELFTEST_KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

FAILS=0
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; FAILS=$((FAILS + 1)); }

# ---- certificates ---------------------------------------------------------------------------
mkca() { # name
    openssl ecparam -name prime256v1 -genkey -noout -out "$WORK/$1.key" 2>/dev/null
    openssl req -x509 -new -key "$WORK/$1.key" -sha256 -days 2 -subj "/O=$1/CN=$1 root" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$WORK/$1.crt" 2>/dev/null
}
mkleaf() { # name ca san
    openssl ecparam -name prime256v1 -genkey -noout -out "$WORK/$1.key" 2>/dev/null
    openssl req -new -key "$WORK/$1.key" -subj "/O=$2" -out "$WORK/$1.csr" 2>/dev/null
    printf '%s\n' "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature,keyEncipherment" \
        "extendedKeyUsage=serverAuth,clientAuth" "subjectAltName=critical,URI:$3" > "$WORK/$1.ext"
    openssl x509 -req -in "$WORK/$1.csr" -CA "$WORK/$2.crt" -CAkey "$WORK/$2.key" -CAcreateserial \
        -days 1 -sha256 -extfile "$WORK/$1.ext" -out "$WORK/$1.crt" 2>/dev/null
}
mkca ca
mkca evilca
mkleaf server ca "$SAN_SERVER"
mkleaf client ca "$SAN_CLIENT"
mkleaf foreign evilca "$SAN_CLIENT"                              # right SAN, wrong CA
mkleaf othertd ca "spiffe://other.domain/ns/default/sa/client"   # right CA, wrong trust domain
openssl verify -CAfile "$WORK/ca.crt" "$WORK/server.crt" "$WORK/client.crt" >/dev/null
openssl x509 -in "$WORK/client.crt" -noout -ext subjectAltName | grep -q "URI:$SAN_CLIENT"
echo "selftest: certificates in $WORK"

# ---- helpers --------------------------------------------------------------------------------
start_server() { # log-name, extra args...
    local name="$1"; shift
    rm -f "$WORK/ready"
    "$PY" "$HERE/hbone_server.py" --listen "127.0.0.1:$PORT" --cert "$WORK/server.crt" \
        --key "$WORK/server.key" --ca "$WORK/ca.crt" --trust-domain "$TD" \
        --log "$WORK/$name.log" --ready-file "$WORK/ready" "$@" 2>"$WORK/$name.err" &
    SERVER_PIDS+=($!)
    for _ in $(seq 1 100); do [ -e "$WORK/ready" ] && return 0; sleep 0.05; done
    echo "server did not come up:"; cat "$WORK/$name.err"; exit 1
}
stop_server() {
    local pid="${SERVER_PIDS[-1]}"
    kill -TERM "$pid"
    local rc=0; wait "$pid" || rc=$?
    unset 'SERVER_PIDS[-1]'
    [ "$rc" -eq 0 ] && pass "server exited 0 on SIGTERM" || fail "server exit status $rc on SIGTERM"
}
client() { # cert-name, extra args...
    local name="$1"; shift
    local rc=0
    "$PY" "$HERE/hbone_client.py" --connect "127.0.0.1:$PORT" --cert "$WORK/$name.crt" \
        --key "$WORK/$name.key" --ca "$WORK/ca.crt" --timeout 20 "$@" >"$WORK/out.json" 2>"$WORK/client.err" || rc=$?
    echo "client rc=$rc: $(cat "$WORK/out.json")"
    [ -s "$WORK/client.err" ] && { echo "client stderr:"; cat "$WORK/client.err"; }
    return $rc
}
jcheck() { # python expression over r (client JSON); description
    if "$PY" -c 'import json,sys; r=json.load(open(sys.argv[1])); sys.exit(0 if eval(sys.argv[2]) else 1)' \
        "$WORK/out.json" "$1"; then pass "$2"; else fail "$2 [$1]"; fi
}
lcheck() { # log-name, python expression over L (list of log records); description
    if "$PY" -c 'import json,sys; L=[json.loads(l) for l in open(sys.argv[1])]; sys.exit(0 if eval(sys.argv[2]) else 1)' \
        "$WORK/$1.log" "$2"; then pass "$3"; else fail "$3 [$2]"; echo "--- $1.log:"; cat "$WORK/$1.log"; fi
}

AUTH="127.0.0.1:8080"

# ---- 1. echo mode, 3 streams x 100 KiB --------------------------------------------------------
start_server echo --mode echo --expect-authority "$AUTH" --expect-client-san "$SAN_CLIENT"
if client client --authority "$AUTH" --expect-san "$SAN_SERVER" --forwarded-for 10.0.0.1:34567 \
        --streams 3 --bytes 102400; then pass "client exit 0"; else fail "client exit non-zero"; fi
jcheck 'r["streams"]==3 and r["ok"]==3 and r["failed"]==0 and r["statuses"]==[200,200,200]' "3/3 streams ok, all 200"
jcheck 'r["bytes"]==3*102400' "307200 bytes echoed byte-exact"
jcheck 'r["peer_san"]=="'"$SAN_SERVER"'" and r["tls_version"]=="TLSv1.3" and r["alpn"]=="h2" and r["errors"]==[]' "peer SAN, TLSv1.3, h2"
lcheck echo 'len([x for x in L if x["event"]=="request"])==3' "server logged 3 requests"
lcheck echo 'all(x["status"]==200 and x["method"]=="CONNECT" and x["authority"]=="'"$AUTH"'" and x["forwarded"]=="for=\"10.0.0.1:34567\"" and x["client_san"]=="'"$SAN_CLIENT"'" and x["baggage"].startswith("k8s.cluster.name=") and x["warnings"]==[] for x in L if x["event"]=="request")' "request log: exact authority/forwarded/client_san, no warnings"
lcheck echo 'len({x["traceparent"] for x in L if x["event"]=="request"})==3' "fresh traceparent per stream"
lcheck echo '[x["sni"] for x in L if x["event"]=="conn_accepted"]==[None]' "client sent no SNI"
lcheck echo 'sorted((x["bytes_in"],x["bytes_out"],x["result"]) for x in L if x["event"]=="stream_end")==[(102400,102400,"ok")]*3' "server stream_end: 100 KiB in/out each"

# ---- 2. bigger transfer exercising flow control (windows 4 MiB/16 MiB) --------------------------
if client client --authority "$AUTH" --expect-san "$SAN_SERVER" --streams 8 --bytes $((6*1024*1024)); then
    pass "8 streams x 6 MiB (beyond stream/conn windows)"; else fail "8 streams x 6 MiB"; fi

# ---- 3. negatives against the echo server -----------------------------------------------------
if client client --authority "$AUTH" --expect-san "spiffe://$TD/ns/default/sa/someone-else"; then
    fail "client accepted wrong server SAN"; else pass "client exits non-zero on wrong server SAN"; fi
jcheck 'r["ok"]==0 and any("san:" in e and "someone-else" in e for e in r["errors"])' "clear SAN-mismatch error"

if client client --authority "127.0.0.1:9999" --expect-san "$SAN_SERVER"; then
    fail "wrong authority accepted"; else pass "wrong authority refused"; fi
jcheck 'r["statuses"]==[400] and any("400" in e for e in r["errors"])' "wrong authority -> 400 recorded"
lcheck echo 'any(x["event"]=="request" and x["status"]==400 and "9999" in x["reason"] for x in L)' "server logged 400 with reason"

if client foreign --authority "$AUTH" --expect-san "$SAN_SERVER"; then
    fail "server accepted a client cert from another CA"; else pass "client cert from another CA refused"; fi
jcheck 'r["ok"]==0 and r["errors"]' "client reports the refusal"
lcheck echo 'any(x["event"]=="conn_refused" and "certificate verify failed" in x["reason"].lower() for x in L)' "server logged conn_refused: certificate verify failed"

if client othertd --authority "$AUTH" --expect-san "$SAN_SERVER"; then
    fail "server accepted a client SAN from another trust domain"; else pass "client SAN in other trust domain refused"; fi
lcheck echo 'any(x["event"]=="conn_refused" and "other.domain" in x["reason"] for x in L)' "server logged conn_refused: trust domain"

if "$PY" "$HERE/hbone_client.py" --connect "127.0.0.1:$PORT" --authority "$AUTH" --cert "$WORK/client.crt" \
        --key "$WORK/client.key" --ca "$WORK/evilca.crt" --expect-san "$SAN_SERVER" >"$WORK/out.json" 2>/dev/null; then
    fail "client accepted a server chain not from its CA"; else pass "client rejects server chain from another CA"; fi
jcheck 'any("certificate" in e for e in r["errors"])' "clear chain error: $(cat "$WORK/out.json")"
stop_server

# ---- 4. upstream mode: splice to a local TCP echo, half-close, 503 ------------------------------
"$PY" "$HERE/echo_server.py" 17000 --bind 127.0.0.1 2>/dev/null &
SERVER_PIDS+=($!)
for _ in $(seq 1 100); do "$PY" -c 'import socket;socket.create_connection(("127.0.0.1",17000),0.2)' 2>/dev/null && break; sleep 0.05; done
start_server up --mode upstream
if client client --authority "127.0.0.1:17000" --expect-san "$SAN_SERVER" --streams 4 --bytes 300000; then
    pass "upstream mode: 4 streams spliced to TCP echo"; else fail "upstream mode splice"; fi
if client client --authority "127.0.0.1:17001" --expect-san "$SAN_SERVER"; then
    fail "upstream connect failure not reported"; else pass "upstream connect refused"; fi
jcheck 'r["statuses"]==[503]' "-> 503"
if client client --authority "127.0.0.1:15008" --expect-san "$SAN_SERVER"; then
    fail "mesh port target accepted"; else pass "target port 15008 refused"; fi
jcheck 'r["statuses"]==[503]' "-> 503"
lcheck up 'sorted(x["result"] for x in L if x["event"]=="stream_end")==["ok"]*4' "upstream stream_end results ok (half-close both ways)"
stop_server
kill "${SERVER_PIDS[-1]}"; wait "${SERVER_PIDS[-1]}" 2>/dev/null || true; unset 'SERVER_PIDS[-1]'

# ---- 5. forced 401 ------------------------------------------------------------------------------
start_server deny --force-status 401
if client client --authority "$AUTH" --expect-san "$SAN_SERVER" --streams 2; then
    fail "401 not reported"; else pass "client exits non-zero on 401"; fi
jcheck 'r["statuses"]==[401,401] and r["failed"]==2' "statuses [401,401]"
stop_server

if [ "$FAILS" -ne 0 ]; then echo "selftest: $FAILS check(s) FAILED"; exit 1; fi
echo "selftest: all checks passed"
