#!/usr/bin/env bash
# The five-minute quickstart as one script: build the bridge and the Go receiver,
# start both on 127.0.0.1, subscribe the receiver to subject "orders", publish
# {"order":42}, wait until the receiver printed it (signature verified) and the
# bridge counts it as delivered, print what happened, stop everything.
#
#   bash examples/quickstart.sh          # run, show, stop
#   bash examples/quickstart.sh --keep   # ...then leave both running: open the console
#
# Needs Go and curl (no jq). Settings, all optional:
#   BRIDGE_LISTEN     bridge address    (default 127.0.0.1:8080)
#   RECEIVER_ADDR     receiver address  (default 127.0.0.1:9000)
#   BRIDGE_REDIS_URL  a real Redis      (default: the bridge's embedded in-memory one)
#   BRIDGE_TOKEN      sent as "Authorization: Bearer ..." (and required by the bridge)
# Only 127.0.0.1 is ever bound or contacted.
set -euo pipefail

BRIDGE_LISTEN=${BRIDGE_LISTEN:-127.0.0.1:8080}
RECEIVER_ADDR=${RECEIVER_ADDR:-127.0.0.1:9000}
export BRIDGE_LISTEN
export BRIDGE_TARGET_ALLOW_CIDRS=127.0.0.1/32 # let the bridge push to a receiver on this machine
bridge_url="http://$BRIDGE_LISTEN"
receiver_url="http://$RECEIVER_ADDR/"

say() { printf '==> %s\n' "$*"; }

tmp="" bridge_pid="" receiver_pid=""

# die prints one line saying what went wrong, then the end of both logs, and exits 1.
die() {
	printf 'quickstart: FAILED: %s\n' "$*" >&2
	local f
	for f in build bridge receiver; do
		if [[ -n "$tmp" && -s "$tmp/$f.log" ]]; then
			printf -- '--- last lines of the %s log ---\n' "$f" >&2
			tail -n 20 "$tmp/$f.log" >&2
		fi
	done
	exit 1
}

# stop ends what this script started: the bridge gets SIGTERM (graceful), then SIGKILL.
stop() {
	local pid
	for pid in $receiver_pid $bridge_pid; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in $receiver_pid $bridge_pid; do
		for _ in $(seq 50); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -9 "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	if [[ -n "$tmp" ]]; then rm -rf "$tmp"; fi
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for cmd in go curl; do
	command -v "$cmd" >/dev/null || die "$cmd is not installed"
done
for addr in "$BRIDGE_LISTEN" "$RECEIVER_ADDR"; do
	[[ "$addr" =~ ^127\.0\.0\.1:[0-9]+$ ]] || die "$addr: use an address on 127.0.0.1 (127.0.0.1:<port>)"
done
[[ "$BRIDGE_LISTEN" != "$RECEIVER_ADDR" ]] || die "BRIDGE_LISTEN and RECEIVER_ADDR are the same address"

# The repository root: the parent of this script's directory (or the current one).
if [[ -n "${BASH_SOURCE[0]:-}" && -f "${BASH_SOURCE[0]}" ]]; then
	cd "$(dirname "${BASH_SOURCE[0]}")/.."
fi
[[ -d cmd/bridge && -d examples/go-receiver ]] || die "run this from the bridge repository (cmd/bridge not found in $PWD)"

# A port is free when curl gets "connection refused" (exit 7) from it.
port_free() {
	local rc=0
	curl -s -o /dev/null --max-time 2 "http://$1/" || rc=$?
	[[ $rc -eq 7 ]]
}
port_free "$BRIDGE_LISTEN" || die "$BRIDGE_LISTEN is already in use (another bridge?); stop it or set BRIDGE_LISTEN=127.0.0.1:<free port>"
port_free "$RECEIVER_ADDR" || die "$RECEIVER_ADDR is already in use; stop it or set RECEIVER_ADDR=127.0.0.1:<free port>"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/bridge-quickstart.XXXXXX")
: >"$tmp/auth.conf" # curl config; holds the token when there is one (kept off the command line)
chmod 600 "$tmp/auth.conf"
if [[ -n "${BRIDGE_TOKEN:-}" ]]; then
	token=${BRIDGE_TOKEN//\\/\\\\} # curl config quoting: \ and " escaped
	token=${token//\"/\\\"}
	printf 'header = "Authorization: Bearer %s"\n' "$token" >"$tmp/auth.conf"
fi

# api METHOD PATH [curl options...]: calls the bridge, leaves the body in $tmp/body
# and prints the HTTP status (000 when the bridge cannot be reached).
api() {
	local method=$1 path=$2
	shift 2
	curl -s -K "$tmp/auth.conf" -o "$tmp/body" -w '%{http_code}' --max-time 10 \
		-X "$method" "$@" "$bridge_url$path" || true
}
# json_field NAME: the first string value of "NAME" in $tmp/body (flat JSON, no jq).
json_field() { sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p" "$tmp/body" | head -n 1; }
# delivered: the "delivered" counter in a subscription's stats ($tmp/body).
delivered() { grep -o '"delivered":[0-9]*' "$tmp/body" | head -n 1 | cut -d: -f2; }

say "building the bridge and the Go receiver (the first build downloads modules)"
go build -o "$tmp/bridge" ./cmd/bridge >"$tmp/build.log" 2>&1 || die "go build ./cmd/bridge failed"
go build -o "$tmp/receiver" ./examples/go-receiver >"$tmp/build.log" 2>&1 || die "go build ./examples/go-receiver failed"

if [[ -n "${BRIDGE_REDIS_URL:-}" ]]; then
	say "starting the bridge on $bridge_url (Redis: BRIDGE_REDIS_URL)"
else
	say "starting the bridge on $bridge_url (embedded in-memory Redis: nothing is kept)"
fi
"$tmp/bridge" >"$tmp/bridge.log" 2>&1 &
bridge_pid=$!
ready=""
for _ in $(seq 300); do # 60 s
	kill -0 "$bridge_pid" 2>/dev/null || die "the bridge exited during start"
	if [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$bridge_url/readyz" || true) == 200 ]]; then
		ready=1
		break
	fi
	sleep 0.2
done
[[ -n "$ready" ]] || die "the bridge did not answer 200 on $bridge_url/readyz within 60 s"

say "creating subscription demo: subject orders -> $receiver_url"
code=$(api PUT /v1/subscriptions/demo -H 'content-type: application/json' \
	--data-binary "{\"subject\":\"orders\",\"url\":\"$receiver_url\"}")
[[ $code == 201 || $code == 200 ]] || die "PUT /v1/subscriptions/demo answered $code: $(cat "$tmp/body")"
secret=$(json_field secret)
[[ $secret == whsec_* ]] || die "PUT /v1/subscriptions/demo returned no whsec_ secret: $(cat "$tmp/body")"

# With a persistent Redis "demo" may exist from an earlier run: count from here.
code=$(api GET /v1/subscriptions/demo)
[[ $code == 200 ]] || die "GET /v1/subscriptions/demo answered $code"
before=$(delivered)
before=${before:-0}

say "starting the Go receiver on $receiver_url with the subscription's secret"
WEBHOOK_SECRET=$secret "$tmp/receiver" -addr "$RECEIVER_ADDR" >"$tmp/receiver.log" 2>&1 &
receiver_pid=$!
for _ in $(seq 150); do # 30 s; any HTTP answer (405 to a GET) means it is listening
	kill -0 "$receiver_pid" 2>/dev/null || die "the receiver exited during start"
	if ! port_free "$RECEIVER_ADDR"; then break; fi
	sleep 0.2
done
port_free "$RECEIVER_ADDR" && die "the receiver is not listening on $RECEIVER_ADDR after 30 s"

say "publishing {\"order\":42} to subject orders"
code=$(api POST /v1/subjects/orders/messages -H 'content-type: application/json' --data-binary '{"order":42}')
[[ $code == 202 ]] || die "POST /v1/subjects/orders/messages answered $code: $(cat "$tmp/body")"
id=$(json_field id)
[[ -n $id ]] || die "the publish answer holds no id: $(cat "$tmp/body")"

say "waiting for the push to $id (the counters reach Redis about once a second)"
received="" count=""
for _ in $(seq 150); do # 30 s
	kill -0 "$bridge_pid" 2>/dev/null || die "the bridge exited"
	kill -0 "$receiver_pid" 2>/dev/null || die "the receiver exited"
	received=$(grep -A 1 -F "message $id " "$tmp/receiver.log" || true)
	if [[ -n $received && $(api GET /v1/subscriptions/demo) == 200 ]]; then
		count=$(delivered)
		if ((${count:-0} > before)); then break; fi
	fi
	sleep 0.2
done
[[ -n $received ]] || die "the receiver did not print message $id within 30 s"
((${count:-0} > before)) || die "the receiver got $id but the bridge's stats do not count it as delivered after 30 s"
pad='              '
shown="$pad${received//$'\n'/$'\n'$pad}"
stats=$(sed -n 's/.*"stats":\({[^}]*}\).*/\1/p' "$tmp/body")

# Where is my message: its state and attempts, as the attempt log recorded them.
view_status=$(api GET "/v1/messages/$id")
[[ $view_status == 200 ]] || die "GET /v1/messages/$id answered $view_status: $(cat "$tmp/body")"
state=$(grep -o '"state":"[a-z_]*"' "$tmp/body" | head -n 1 | cut -d'"' -f4)
attempts=$(grep -o '"outcome":"[a-z_]*"' "$tmp/body" | wc -l | tr -d ' ')
[[ $state == delivered ]] || die "GET /v1/messages/$id says state ${state:-none}, want delivered: $(cat "$tmp/body")"

cat <<EOF

Done: message $id was published, pushed, verified and acked.
  publish   POST /v1/subjects/orders/messages {"order":42} -> 202, id $id
  receiver  the Go receiver on $receiver_url checked the signature and printed:
$shown
  bridge    GET /v1/subscriptions/demo -> "delivered":$count; all stats:
              $stats
  message   GET /v1/messages/$id -> demo: $state after $attempts attempt(s)

Everything this script started is stopped on exit. To run the pieces yourself: examples/README.md
EOF

if [[ ${1:-} == --keep ]]; then
	console="$bridge_url/console/"
	if [[ -n "${BRIDGE_TOKEN:-}" ]]; then
		console="$console#token=<your BRIDGE_TOKEN>"
	fi
	cat <<EOF

Still running (Ctrl-C stops both). Open the console to see the message and its attempts:
  $console
  (look up $id)
EOF
	wait "$bridge_pid"
fi
