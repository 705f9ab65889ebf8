#!/bin/sh
# iawlb quick start: three small HTTP backends, iawlb in front of them, 30 requests.
#
#   sh tests/demo.sh            (from the repository root, after building ./iawlb)
#
# Ports can be changed: LISTEN_PORT=28080 BACKEND_PORTS="28081 28082 28083" sh tests/demo.sh
set -eu

IAWLB=${IAWLB:-./iawlb}
LISTEN_PORT=${LISTEN_PORT:-18080}
BACKEND_PORTS=${BACKEND_PORTS:-"18081 18082 18083"}

work=$(mktemp -d)
pids=""

# On any exit (Ctrl-C included): stop everything we started, remove the temp files.
cleanup() {
    for pid in $pids; do kill "$pid" 2>/dev/null || true; done
    for pid in $pids; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_for WHAT COMMAND...: runs COMMAND every 0.1 s until it succeeds, 10 s at most.
wait_for() {
    what=$1
    shift
    tries=0
    until "$@" >/dev/null 2>&1; do
        tries=$((tries + 1))
        if [ "$tries" -ge 100 ]; then
            echo "demo: $what is not ready after 10 s" >&2
            return 1
        fi
        sleep 0.1
    done
}

# Three backends, each serving a file "name" that says which one it is.
n=0
for port in $BACKEND_PORTS; do
    n=$((n + 1))
    mkdir "$work/www$n"
    echo "backend-$n" >"$work/www$n/name"
    python3 -m http.server "$port" --bind 127.0.0.1 --directory "$work/www$n" >"$work/backend$n.log" 2>&1 &
    pids="$pids $!"
done
for port in $BACKEND_PORTS; do
    wait_for "the backend on port $port" curl -sf "http://127.0.0.1:$port/name"
done

# The balancer in front of them.
# shellcheck disable=SC2086 # BACKEND_PORTS is a list of ports
"$IAWLB" "127.0.0.1:$LISTEN_PORT" $BACKEND_PORTS 2>"$work/iawlb.log" &
pids="$pids $!"
if ! wait_for "iawlb" grep -q "listening on" "$work/iawlb.log"; then
    cat "$work/iawlb.log" >&2
    exit 1
fi
echo "iawlb is listening on 127.0.0.1:$LISTEN_PORT, in front of ports $BACKEND_PORTS"
echo

i=1
while [ "$i" -le 30 ]; do
    answer=$(curl -s --max-time 5 "http://127.0.0.1:$LISTEN_PORT/name") || answer="(request failed)"
    echo "request $i: $answer"
    echo "$answer" >>"$work/answers"
    i=$((i + 1))
done

echo
echo "tally:"
sort "$work/answers" | uniq -c
