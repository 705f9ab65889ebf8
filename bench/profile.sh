#!/bin/sh
# bench/profile.sh: where the time goes, per request, for direct, iawlb and HAProxy.
#
#   sh bench/profile.sh [SECONDS]       (default 3; needs nginx, haproxy, wrk, strace)
#
# One nginx serves GET / (6 bytes) on three loopback ports; iawlb and HAProxy
# (mode tcp, roundrobin, nbthread 2) sit in front of it. For each target, wrk
# runs with Connection: close (-t2 -c64), then with keep-alive, and the script
# prints per request: TCP segments sent by the whole machine (/proc/net/snmp
# OutSegs), CPU time of the whole machine (/proc/stat), and for the proxy its
# own CPU time and context switches (/proc/PID). Then, with strace -c -f on
# the proxy, system calls per request. Last, three curl downloads of a 1 GiB
# file (on /dev/shm) through each target: the median rate and the proxy's CPU
# time per GiB. Everything it starts is stopped at the end, also on Ctrl-C.
set -u
secs=${1:-3}
here=$(cd "$(dirname "$0")/.." && pwd)
iawlb=${IAWLB:-$here/iawlb}
for t in nginx haproxy wrk strace "$iawlb"; do
    command -v "$t" >/dev/null 2>&1 || [ -x "$t" ] || { echo "profile.sh: missing $t" >&2; exit 1; }
done
dir=$(mktemp -d /tmp/iawlb-profile.XXXXXX)
big=$(mktemp -d /dev/shm/iawlb-profile.XXXXXX)
pids=""
cleanup() {
    for p in $pids; do kill "$p" 2>/dev/null; done
    [ -f "$dir/nginx.pid" ] && kill "$(cat "$dir/nginx.pid")" 2>/dev/null
    sleep 0.3
    rm -rf "$dir" "$big"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
b1=$(port); b2=$(port); b3=$(port); pi=$(port); ph=$(port)
cat > "$dir/nginx.conf" <<EOF
worker_processes auto;
pid $dir/nginx.pid;
error_log $dir/error.log error;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000000;
    client_body_temp_path $dir; proxy_temp_path $dir; fastcgi_temp_path $dir;
    uwsgi_temp_path $dir; scgi_temp_path $dir;
    server {
        listen 127.0.0.1:$b1 backlog=4096; listen 127.0.0.1:$b2 backlog=4096;
        listen 127.0.0.1:$b3 backlog=4096;
        location = / { default_type text/plain; return 200 "hello\n"; }
        location = /big { root $big; }
    }
}
EOF
cat > "$dir/haproxy.cfg" <<EOF
global
    nbthread 2
    maxconn 4000
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend fe
    bind 127.0.0.1:$ph
    default_backend be
backend be
    balance roundrobin
    server s1 127.0.0.1:$b1
    server s2 127.0.0.1:$b2
    server s3 127.0.0.1:$b3
EOF
head -c 1073741824 /dev/zero > "$big/big"; chmod 755 "$big"; chmod 644 "$big/big"
nginx -c "$dir/nginx.conf" -g 'daemon on;' 2>>"$dir/log" || { echo "profile.sh: nginx failed" >&2; exit 1; }
"$iawlb" -a roundrobin --idle-timeout 0 "127.0.0.1:$pi" "$b1" "$b2" "$b3" 2>>"$dir/log" &
ipid=$!; pids="$pids $ipid"
haproxy -f "$dir/haproxy.cfg" -db 2>>"$dir/log" &
hpid=$!; pids="$pids $hpid"
sleep 1

cpu_all() { awk '/^cpu /{print $2+$3+$4+$6+$7+$8}' /proc/stat; }
segs() { awk '/^Tcp:/{n++; if (n == 2) print $12}' /proc/net/snmp; }
utime_of() { [ -n "$1" ] && awk '{print $14}' "/proc/$1/stat" || echo 0; }
stime_of() { [ -n "$1" ] && awk '{print $15}' "/proc/$1/stat" || echo 0; }
csw_of() { [ -n "$1" ] && cat /proc/"$1"/task/*/status | awk '/^(non)?voluntary_ctxt/{s+=$2} END{print s}' || echo 0; }
hz=$(getconf CLK_TCK)
# requests served in $secs seconds: run_wrk MODE PORT
run_wrk() {
    if [ "$1" = close ]; then
        wrk -t2 -c64 -d"${secs}s" -H 'Connection: close' "http://127.0.0.1:$2/"
    else
        wrk -t2 -c64 -d"${secs}s" "http://127.0.0.1:$2/"
    fi | awk '/requests in/{print $1}'
}

echo "# where the time goes: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, $(uname -r), wrk ${secs}s, -t2 -c64"
echo
echo "| target | mode | req/s | segments/req | machine CPU µs/req | proxy user µs/req | proxy system µs/req | proxy switches/req |"
echo "|---|---|---|---|---|---|---|---|"
for mode in close keepalive; do
    for t in direct iawlb haproxy; do
        case $t in direct) p=$b1 pid="";; iawlb) p=$pi pid=$ipid;; haproxy) p=$ph pid=$hpid;; esac
        c0=$(cpu_all); s0=$(segs); u0=$(utime_of "$pid"); k0=$(stime_of "$pid"); w0=$(csw_of "$pid")
        n=$(run_wrk $mode $p)
        c1=$(cpu_all); s1=$(segs); u1=$(utime_of "$pid"); k1=$(stime_of "$pid"); w1=$(csw_of "$pid")
        awk -v t=$t -v m=$mode -v n="$n" -v s=$secs -v c=$((c1 - c0)) -v g=$((s1 - s0)) \
            -v u=$((u1 - u0)) -v k=$((k1 - k0)) -v w=$((w1 - w0)) -v hz="$hz" -v px="$pid" 'BEGIN {
            if (n == 0) { printf "| %s | %s | failed | | | | | |\n", t, m; exit }
            printf "| %s | %s | %d | %.1f | %.0f | %s | %s | %s |\n", t, m, n / s, g / n,
                c * 1e6 / hz / n, px ? sprintf("%.1f", u * 1e6 / hz / n) : "—",
                px ? sprintf("%.0f", k * 1e6 / hz / n) : "—", px ? sprintf("%.2f", w / n) : "—" }'
    done
done
echo
echo "| proxy | mode | system calls per request (strace -c -f, which slows the proxy) |"
echo "|---|---|---|"
for mode in close keepalive; do
    for t in iawlb haproxy; do
        case $t in iawlb) p=$pi pid=$ipid;; haproxy) p=$ph pid=$hpid;; esac
        timeout -s INT $((secs + 1)) strace -c -f -p "$pid" -o "$dir/strace.$t" 2>/dev/null &
        spid=$!
        sleep 0.3
        n=$(run_wrk $mode $p)
        wait $spid
        calls=$(awk '$NF == "total" {print $(NF-2)}' "$dir/strace.$t")
        top=$(awk 'NR > 2 && $1 ~ /^[0-9.]+$/ && $NF != "total" {print $NF, $4}' "$dir/strace.$t" \
              | sort -k2 -n -r | head -6 | awk -v n="$n" '{printf "%s%s %.2f", sep, $1, $2 / n; sep = ", "}')
        awk -v t=$t -v m=$mode -v n="$n" -v c="${calls:-0}" -v top="$top" \
            'BEGIN { printf "| %s | %s | %.2f (%s) |\n", t, m, n ? c / n : 0, top }'
    done
done
echo
echo "| target | 1 GiB download, MB/s (median of 3) | proxy CPU, ms per GiB (median) |"
echo "|---|---|---|"
for t in direct iawlb haproxy; do
    case $t in direct) p=$b1 pid="";; iawlb) p=$pi pid=$ipid;; haproxy) p=$ph pid=$hpid;; esac
    for i in 1 2 3; do
        u0=$(utime_of "$pid"); k0=$(stime_of "$pid")
        r=$(curl -s -o /dev/null --max-time 60 -w '%{http_code} %{size_download} %{speed_download}' \
            "http://127.0.0.1:$p/big")
        u1=$(utime_of "$pid"); k1=$(stime_of "$pid")
        echo "$r $(( (u1 - u0) + (k1 - k0) ))"
    done | awk -v t=$t -v hz="$hz" -v px="$pid" '
        $1 == 200 && $2 == 1073741824 { n++; mb[n] = $3 / 1e6; ms[n] = $4 * 1000 / hz }
        function med(a, k,   i, j, x) { for (i = 2; i <= k; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
            return a[int((k + 1) / 2)] }
        END { if (n == 0) { printf "| %s | failed | |\n", t; exit }
              printf "| %s | %.0f | %s |\n", t, med(mb, n), px ? sprintf("%.0f", med(ms, n)) : "—" }'
done
