#!/usr/bin/env bash
# plumb probe vs curl -w vs Prometheus blackbox_exporter, phase by phase, on the
# same loopback targets. Run by hand, never in CI (see bench/README.md).
#
#   cargo build --release -p plumb
#   apt-get install -y prometheus-blackbox-exporter   # optional: skipped if absent
#   bench/probe_compare.sh            # N=30 probes per target per tool, ~1.5 min
#   N=60 KEEP=/tmp/pc bench/probe_compare.sh   # more samples, keep the raw data
#
# Targets, all on 127.0.0.1 (nothing else is contacted):
#   http-fast   a Python asyncio HTTP/1.1 server: 300-byte body, head and body in one write
#   http-slow   the same server, sleeping 100 ms before answering
#   https-fast  openssl s_server -www, RSA-2048 self-signed cert made here
#   https-slow  the Python server behind TLS (same cert), sleeping 100 ms
# Each tool probes each target N times, in 3 interleaved blocks (plumb, curl,
# blackbox, plumb, ...), one probe every ~200 ms. Prints a table of medians (ms).
#
# Phase mapping (each row of the table uses the same five columns):
#   plumb:    dns, connect, tls, ttfb, total as printed by --format json
#             (total = connect start -> end of body; dns not included).
#   curl:     cumulative times from the start of the transfer, so
#             dns = namelookup, connect = connect - namelookup,
#             tls = appconnect - connect (https only),
#             ttfb = starttransfer - pretransfer (request about to be sent -> first
#             response byte), total = total - namelookup.
#   blackbox: probe_http_duration_seconds{phase}: dns = resolve, connect = connect
#             (http: ConnectStart -> GotConn; https: ConnectStart -> ConnectDone),
#             tls = tls (TLSHandshakeStart -> Done), ttfb = processing (GotConn ->
#             first response byte, request write included),
#             total = connect + tls + processing + transfer.
set -euo pipefail

N=${N:-30}
BLOCKS=3
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PLUMB=${PLUMB:-$ROOT/target/release/plumb}
BLACKBOX=${BLACKBOX:-$(command -v prometheus-blackbox-exporter || command -v blackbox_exporter || true)}
DEADLINE=$((SECONDS + ${MAX_SECONDS:-240}))   # hard stop for every loop below

WORK=$(mktemp -d /tmp/probe_compare.XXXXXX)
PIDS=()

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pid i
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n ${KEEP:-} ]]; then
        mkdir -p "$KEEP" && cp -r "$WORK"/. "$KEEP"/ && echo "raw data kept in $KEEP" >&2
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() { echo "probe_compare: $*" >&2; exit 1; }
check_deadline() { ((SECONDS < DEADLINE)) || die "over the ${MAX_SECONDS:-240} s budget, giving up"; }

[[ -x $PLUMB ]] || die "no $PLUMB: run cargo build --release -p plumb"
for tool in curl openssl python3; do
    command -v "$tool" >/dev/null || die "$tool is needed"
done
if [[ -z $BLACKBOX ]]; then
    echo "probe_compare: no blackbox_exporter (apt-get install -y prometheus-blackbox-exporter): its rows are skipped" >&2
fi
((N >= BLOCKS)) || die "N must be at least $BLOCKS"
PER_BLOCK=$(((N + BLOCKS - 1) / BLOCKS))

# Four free loopback ports (the kernel picks them; a race with another program is
# possible but unlikely, and shows up as a failed bind below).
read -r P_HTTP P_TLS_PY P_TLS_OSSL P_BB < <(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
for s in socks:
    s.close()
EOF
)

# --- targets -----------------------------------------------------------------
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>"$WORK/openssl-req.log"

cat >"$WORK/origin.py" <<'EOF'
# Loopback origin (asyncio, one thread): reads the request head, sleeps 100 ms for
# /slow, answers with head and body in one write, closes. TLS when given a cert.
import asyncio, ssl, sys

BODY = b"plumb probe_compare\n" * 15  # 300 bytes
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % len(BODY)) + BODY

async def handle(reader, writer):
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        if head.split(b" ", 2)[1].startswith(b"/slow"):
            await asyncio.sleep(0.1)
        writer.write(RESPONSE)
        await writer.drain()
    except Exception:
        pass
    finally:
        writer.close()

async def main():
    ctx = None
    if len(sys.argv) > 2:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(sys.argv[2], sys.argv[3])
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), ssl=ctx)
    async with server:
        await server.serve_forever()

asyncio.run(main())
EOF

python3 "$WORK/origin.py" "$P_HTTP" >"$WORK/origin-http.log" 2>&1 &
PIDS+=($!)
python3 "$WORK/origin.py" "$P_TLS_PY" "$WORK/cert.pem" "$WORK/key.pem" >"$WORK/origin-https.log" 2>&1 &
PIDS+=($!)
openssl s_server -accept "127.0.0.1:$P_TLS_OSSL" -cert "$WORK/cert.pem" -key "$WORK/key.pem" \
    -www -quiet >"$WORK/s_server.log" 2>&1 </dev/null &
PIDS+=($!)

if [[ -n $BLACKBOX ]]; then
    cat >"$WORK/blackbox.yml" <<'EOF'
modules:
  http_plain:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
      ip_protocol_fallback: false
  https_insecure:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
      ip_protocol_fallback: false
      tls_config:
        insecure_skip_verify: true
EOF
    "$BLACKBOX" --config.file="$WORK/blackbox.yml" --web.listen-address="127.0.0.1:$P_BB" \
        >"$WORK/blackbox.log" 2>&1 </dev/null &
    PIDS+=($!)
fi

CURL=(curl --noproxy '*' --silent --max-time 5)

wait_ready() { # url [curl flags...]: up to 5 s
    local url=$1 i
    shift
    for ((i = 0; i < 50; i++)); do
        "${CURL[@]}" "$@" -o /dev/null "$url" && return 0
        sleep 0.1
    done
    die "$url did not come up (logs in $WORK, set KEEP=dir to keep them)"
}
wait_ready "http://127.0.0.1:$P_HTTP/fast"
wait_ready "https://127.0.0.1:$P_TLS_PY/fast" -k
wait_ready "https://127.0.0.1:$P_TLS_OSSL/" -k
[[ -z $BLACKBOX ]] || wait_ready "http://127.0.0.1:$P_BB/metrics"

# name url blackbox-module
TARGETS=(
    "http-fast http://127.0.0.1:$P_HTTP/fast http_plain"
    "http-slow http://127.0.0.1:$P_HTTP/slow http_plain"
    "https-fast https://127.0.0.1:$P_TLS_OSSL/ https_insecure"
    "https-slow https://127.0.0.1:$P_TLS_PY/slow https_insecure"
)

# --- probing -----------------------------------------------------------------
# Raw results: $WORK/plumb.jsonl (name<TAB>json), $WORK/curl.tsv, $WORK/blackbox.txt
# (one "== name" line, then the probe's metrics).
CURL_W='%{http_code} %{time_namelookup} %{time_connect} %{time_appconnect} %{time_pretransfer} %{time_starttransfer} %{time_total}\n'
: >"$WORK/plumb.jsonl"
: >"$WORK/curl.tsv"
: >"$WORK/blackbox.txt"
for t in "${TARGETS[@]}"; do
    read -r name url module <<<"$t"
    echo "probing $name ($url), $N per tool" >&2
    for ((b = 0; b < BLOCKS; b++)); do
        check_deadline
        timeout 60 "$PLUMB" probe "$url" --insecure --count "$PER_BLOCK" --every 200ms \
            --timeout 5s --format json 2>>"$WORK/plumb.err" |
            sed "s/^/$name\t/" >>"$WORK/plumb.jsonl" || echo "plumb probe $url: exit $?" >&2
        for ((i = 0; i < PER_BLOCK; i++)); do
            check_deadline
            printf '%s\t' "$name" >>"$WORK/curl.tsv"
            "${CURL[@]}" -k -o /dev/null -w "$CURL_W" "$url" >>"$WORK/curl.tsv" ||
                echo "000 curl-exit-$?" >>"$WORK/curl.tsv"
            sleep 0.2
        done
        if [[ -n $BLACKBOX ]]; then
            for ((i = 0; i < PER_BLOCK; i++)); do
                check_deadline
                echo "== $name" >>"$WORK/blackbox.txt"
                "${CURL[@]}" --max-time 7 \
                    "http://127.0.0.1:$P_BB/probe?module=$module&target=$url" >>"$WORK/blackbox.txt" ||
                    echo "probe_success 0" >>"$WORK/blackbox.txt"
                sleep 0.2
            done
        fi
    done
done

# --- medians -----------------------------------------------------------------
python3 - "$WORK" <<'EOF'
import json, re, statistics, sys
from collections import defaultdict

work = sys.argv[1]
order = ["http-fast", "http-slow", "https-fast", "https-slow"]
phases = ["dns", "connect", "tls", "ttfb", "total"]
samples = defaultdict(lambda: defaultdict(list))  # (target, tool) -> phase -> [ms]
failed = defaultdict(int)

for line in open(f"{work}/plumb.jsonl"):
    name, _, js = line.rstrip("\n").partition("\t")
    r = json.loads(js)
    if r["status"] == "fail":
        failed[(name, "plumb")] += 1
        continue
    for p in phases:
        if r.get(p) is not None:
            samples[(name, "plumb")][p].append(r[p])

for line in open(f"{work}/curl.tsv"):
    name, _, rest = line.rstrip("\n").partition("\t")
    f = rest.split()
    if len(f) != 7 or f[0] != "200":
        failed[(name, "curl")] += 1
        continue
    _, dns, conn, app, pre, start, total = (float(x) * 1000 for x in f)
    s = samples[(name, "curl")]
    s["dns"].append(dns)
    s["connect"].append(conn - dns)
    if app > 0:
        s["tls"].append(app - conn)
    s["ttfb"].append(start - pre)
    s["total"].append(total - dns)

def flush(name, m):
    if name is None:
        return
    if m.get("success") != 1.0:
        failed[(name, "blackbox")] += 1
        return
    s = samples[(name, "blackbox")]
    d = {k: v * 1000 for k, v in m["phase"].items()}
    s["dns"].append(d["resolve"])
    s["connect"].append(d["connect"])
    if d["tls"] > 0:
        s["tls"].append(d["tls"])
    s["ttfb"].append(d["processing"])
    s["total"].append(d["connect"] + d["tls"] + d["processing"] + d["transfer"])

name, m = None, {}
phase_re = re.compile(r'^probe_http_duration_seconds\{phase="(\w+)"\} (\S+)$')
for line in open(f"{work}/blackbox.txt"):
    line = line.rstrip("\n")
    if line.startswith("== "):
        flush(name, m)
        name, m = line[3:], {"phase": {}}
    elif (hit := phase_re.match(line)):
        m["phase"][hit.group(1)] = float(hit.group(2))
    elif line.startswith("probe_success "):
        m["success"] = float(line.split()[1])
flush(name, m)

def med(xs):
    return f"{statistics.median(xs):.2f}" if xs else "–"

print("Medians in ms (total = connect start -> end of body, dns excluded)\n")
print("| target | tool | n | dns | connect | tls | ttfb | total |")
print("|---|---|---|---|---|---|---|---|")
for t in order:
    for tool in ["plumb", "curl", "blackbox"]:
        s = samples.get((t, tool))
        if not s:
            continue
        n = len(s["total"])
        print(f"| {t} | {tool} | {n} | " + " | ".join(med(s[p]) for p in phases) + " |")
bad = {k: v for k, v in failed.items() if v}
if bad:
    print("\nfailed probes (left out of the medians): " +
          ", ".join(f"{t}/{tool}: {v}" for (t, tool), v in sorted(bad.items())))
EOF
