#!/usr/bin/env bash
# Kiln's HTTP binary cache against nginx serving the same narinfo files and NARs as static files (what
# `nix copy --to file://…?compression=none` writes), on the same machine, in one run:
#  (a) narinfo latency: a GET of every path's .narinfo, one after another over one keep-alive connection; total time
#      and mean / median / p99 per request (paths asked for before: Kiln answers from its narinfo answer cache), and
#      once, the mean of paths' very first GETs (Kiln: a database query and a rendering), on a warm server and right
#      after start;
#  (b) NAR download throughput: every NAR of the closure (URL taken from each server's own narinfo, fetched before
#      the timing), read and discarded, over 1 connection and over 4 parallel connections (the NARs split evenly by
#      size); MiB/s;
#  (c) `nix copy --from http://127.0.0.1:PORT` of the whole closure into an empty local store with the host's Nix 2.8
#      (its default 25 connections, a fresh narinfo disk cache each time), ending with sync. The store is on a
#      tmpfs when one can be mounted: the client's disk is the same for both servers and only adds noise.
# (a) and (b) use a small python3 HTTP/1.1 client over raw sockets (threads for (b)), whose own cost per request
# (~20 µs) stays small next to the servers'.
#
#   bench/http/run.sh [--paths 330] [--size-mib 500] [--rounds 3]
#
# The closure is bench/store/run.sh's: N/3 derivations in a chain, each with an incompressible file and a tree of
# ~250 small files (~500 MiB in ~330 paths by default), in a client store; it is pushed to Kiln over its unix socket
# (account "local", made a public cache so anonymous HTTP reads see it) and copied to a file:// cache that nginx
# (2 workers, sendfile, keep-alive, no access log) serves. Both servers run through the whole benchmark; every
# request is checked (status 200, the expected length) in an untimed pass first, which also warms the page cache,
# and every NAR is downloaded five more times untimed (Kiln's runtime compiles its hot code in its first seconds).
# The median of N rounds' runs, the sides taking turns to go first; in each round (a) runs 5 times and (b) 3 times (each takes
# well under a second). Needs root, nix-bin (Nix 2.8) and python3; installs nginx if missing. Figures only, no
# thresholds.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
paths=330 size_mib=500 rounds=3
while [ $# -gt 0 ]; do
  case "$1" in
    --paths) paths="$2"; shift 2 ;;
    --size-mib) size_mib="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
command -v nginx > /dev/null || [ -x /usr/sbin/nginx ] || apt-get install -y nginx > /dev/null
command -v curl > /dev/null || apt-get install -y curl > /dev/null
nginx="$(command -v nginx || echo /usr/sbin/nginx)"
chain=$((paths / 3))
work="${KILN_BENCH_DIR:-/tmp/kiln-http-bench}"
umount "$work/pull" 2> /dev/null || true
rm -rf "$work" && mkdir -p "$work/src" && chmod 755 "$work"
export NIX_CONFIG=$'experimental-features = nix-command\nbuild-users-group = \nsubstituters = \nsandbox = false\nrequire-sigs = false'
export NIX_REMOTE=

source "$repo/bench/lib/kiln.sh"
publish_kiln "$work"

source "$repo/bench/lib/closure.sh"
make_closure "$work" "$chain" "$size_mib"
source_store="local?root=$work/source"
quiet() { "$@" > "$work/step.log" 2>&1 || { cat "$work/step.log" >&2; return 1; }; }
sed 's|^/nix/store/\([a-z0-9]*\)-.*|\1|' "$work/closure.paths" > "$work/closure.hashes"

# nginx's side: stock Nix's file:// binary cache, uncompressed.
echo "writing the file:// cache for nginx..."
quiet nix copy --derivation --from "$source_store" --to "file://$work/cache?compression=none" "$top"
chmod -R a+rX "$work/cache"
nginx_port=$((20000 + RANDOM % 10000)) kiln_port=$((30000 + RANDOM % 10000))
cat > "$work/nginx.conf" <<CONF
worker_processes 2;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_timeout 65;
  keepalive_requests 100000;
  types { text/x-nix-narinfo narinfo; application/x-nix-nar nar; text/x-nix-cache-info nix-cache-info; }
  default_type application/octet-stream;
  server { listen 127.0.0.1:$nginx_port; root $work/cache; }
}
CONF

# Kiln's side: the closure pushed over the socket, the socket account made a public cache.
echo "pushing the closure to kiln..."
"$kiln" serve --data "$work/kiln" --ssh-listen none --http-listen "127.0.0.1:$kiln_port" > "$work/kiln.log" 2>&1 &
kiln_pid=$!
"$nginx" -c "$work/nginx.conf" -p "$work" &
nginx_pid=$!
# (c) pulls into a tmpfs when one can be mounted.
mkdir -p "$work/pull"
mount -t tmpfs -o size=$((size_mib * 3 + 512))m kiln-http-bench "$work/pull" 2> /dev/null && pull_fs=tmpfs || pull_fs=disk
trap 'kill $kiln_pid $nginx_pid 2> /dev/null || true; wait 2> /dev/null || true; [ $pull_fs = disk ] || umount "$work/pull"' EXIT
await_server "$kiln_pid" "$work/kiln.log" 'grep -q "http: listening" "$work/kiln.log" && [ -S "$work/kiln/daemon.sock" ]'
quiet nix copy --derivation --from "$source_store" --to "unix://$work/kiln/daemon.sock?root=$work/kiln/root" "$top"
tiny=$(tiny_paths "$source_store" 3000 "warm-up $RANDOM")
echo "$tiny" | sed 's|^/nix/store/\([a-z0-9]*\)-.*|\1|' > "$work/tiny.hashes"
# shellcheck disable=SC2086 # one argument per path
quiet nix copy --from "$source_store" --to "unix://$work/kiln/daemon.sock?root=$work/kiln/root" $tiny
# shellcheck disable=SC2086
quiet nix copy --from "$source_store" --to "file://$work/cache?compression=none" $tiny
chmod -R a+rX "$work/cache"
"$kiln" account set local --public-cache --data "$work/kiln" > /dev/null   # anonymous HTTP reads see account "local"
top_narinfo="http://127.0.0.1:$kiln_port/$(basename "$top" | cut -c1-32).narinfo"
for _ in $(seq 1 100); do curl -sf -o /dev/null "$top_narinfo" && break; sleep 0.1; done
curl -sf -o /dev/null "$top_narinfo" || { echo "kiln does not serve $top_narinfo:" >&2; curl -si "$top_narinfo" >&2; exit 1; }
until [ -s "$work/nginx.pid" ]; do sleep 0.1; done

kiln_url="http://127.0.0.1:$kiln_port" nginx_url="http://127.0.0.1:$nginx_port"

client() { python3 "$repo/bench/lib/http-client.py" "$@"; }

# Each path's first narinfo GET, before anything else asked for it: Kiln answers from its database (later GETs of the
# same path come from its answer cache, as for a fleet of CI runners asking for the same closure). Two figures, each
# on paths nobody asked for before:
#  * right after start: 30 paths warm up both servers' code paths, then half of the others are timed. Kiln's runtime
#    is still compiling its hot code then, which costs more than the lookup;
#  * on a warm server: the 30 warm-up paths' first GETs again, 20 times over 30 s, and the first GETs of 3000 tiny
#    unrelated paths (the runtime compiles the lookup's hot code over the first few thousand of them; fewer left that
#    compiling, on one of the two cores, in what the figure measured), Kiln then left until its CPU is idle; then the
#    other half, three times a round. Before each pass the anonymous reader reads through another set of public
#    caches (one more, empty, public account), and Kiln keeps answers per set, so every GET of a pass is a lookup
#    again (the paths' database pages are cached after the first pass, as most are on a server in use).
head -30 "$work/closure.hashes" > "$work/warm.hashes"
tail -n +31 "$work/closure.hashes" > "$work/rest.hashes"
half=$(($(wc -l < "$work/rest.hashes") / 2))
head -n "$half" "$work/rest.hashes" > "$work/first-cold.hashes"
tail -n +$((half + 1)) "$work/rest.hashes" > "$work/first-warm.hashes"
for side in kiln nginx; do
  url_var="${side}_url"
  client narinfo "${!url_var}" "$work/warm.hashes" > /dev/null
  client narinfo "${!url_var}" "$work/first-cold.hashes" > "$work/$side.narinfo-cold"
done
views=0
new_view() { # one more public account, the one before private again: the anonymous reader's set of caches changes
  views=$((views + 1))
  "$kiln" account create "view$views" --data "$work/kiln" > /dev/null
  "$kiln" account set "view$views" --public-cache --data "$work/kiln" > /dev/null
  [ "$views" = 1 ] || "$kiln" account set "view$((views - 1))" --private-cache --data "$work/kiln" > /dev/null
  sleep 1.1 # Kiln reads the set of public caches again once a second
}
echo "warming both servers up..."
for _ in $(seq 1 20); do
  new_view
  for side in kiln nginx; do url_var="${side}_url"; client narinfo "${!url_var}" "$work/warm.hashes" > /dev/null; done
done
for side in kiln nginx; do url_var="${side}_url"; client narinfo "${!url_var}" "$work/tiny.hashes" > /dev/null; done
settle "$kiln_pid"

# Untimed: both servers' NAR URLs from their own narinfo, and one full download each (checks, warms the page cache).
echo "checking both servers (every narinfo and NAR once)..."
for side in kiln nginx; do
  url_var="${side}_url"
  client narurls "${!url_var}" "$work/closure.hashes" "$work/$side.nars"
  client nars "${!url_var}" "$work/$side.nars" 4 > /dev/null
done
# Five more untimed downloads of every NAR over one connection, as the narinfo GETs had their warm-up: Kiln's runtime
# compiles the NAR path's hot code in its first seconds of use (the first timed run used to come out at half speed).
for _ in 1 2 3 4 5; do
  for side in kiln nginx; do url_var="${side}_url"; client nars "${!url_var}" "$work/$side.nars" 1 > /dev/null; done
done

seconds() { local s e; sync; s=$(date +%s.%N); "$@" > /dev/null 2>&1; sync; e=$(date +%s.%N); echo "$e - $s" | bc; }
pull() { # side url round: a fresh store each time, and a fresh narinfo disk cache (~/.cache/nix)
  rm -rf "$work/pull/store"
  XDG_CACHE_HOME="$work/xdg-$1-$3" seconds nix copy --derivation --no-check-sigs --from "$2" --to "local?root=$work/pull/store" "$top"
  [ "$(nix path-info --store "local?root=$work/pull/store" --derivation -r "$top" | wc -l)" = "$count" ] ||
    { echo "nix copy --from $2 did not copy all $count paths" >&2; exit 1; }
}
median_line() { sort -n | awk '{ a[NR] = $0 } END { print a[int((NR + 1) / 2)] }'; }

# The sides take turns pass by pass, so that whatever else the machine does falls on both alike.
for round in $(seq 1 "$rounds"); do
  echo "round $round of $rounds..."
  order="kiln nginx"; [ $((round % 2)) = 1 ] || order="nginx kiln"   # who goes first alternates
  for _ in 1 2 3; do
    new_view
    for side in $order; do url_var="${side}_url"; client narinfo "${!url_var}" "$work/first-warm.hashes" >> "$work/$side.narinfo-first"; done
  done
  for _ in 1 2 3 4 5; do
    for side in $order; do url_var="${side}_url"; client narinfo "${!url_var}" "$work/closure.hashes" >> "$work/$side.narinfo"; done
  done
  for conns in 1 4; do
    for _ in 1 2 3; do
      for side in $order; do url_var="${side}_url"; client nars "${!url_var}" "$work/$side.nars" $conns >> "$work/$side.nars$conns"; done
    done
  done
  for side in $order; do url_var="${side}_url"; pull "$side" "${!url_var}" "$round" >> "$work/$side.pull"; done
done

read -r k_total k_mean k_p50 k_p99 < <(median_line < "$work/kiln.narinfo")
read -r n_total n_mean n_p50 n_p99 < <(median_line < "$work/nginx.narinfo")
kf_mean=$(awk '{ print $2 }' "$work/kiln.narinfo-first" | median_line)
nf_mean=$(awk '{ print $2 }' "$work/nginx.narinfo-first" | median_line)
read -r _ kc_mean _ _ < "$work/kiln.narinfo-cold"
read -r _ nc_mean _ _ < "$work/nginx.narinfo-cold"
mibs() { median_line < "$1" | awk '{ printf "%.1f", $2 / 1048576 / $1 }'; }
k1=$(mibs "$work/kiln.nars1") n1=$(mibs "$work/nginx.nars1") k4=$(mibs "$work/kiln.nars4") n4=$(mibs "$work/nginx.nars4")
kp=$(median_line < "$work/kiln.pull") np=$(median_line < "$work/nginx.pull")
ratio() { echo "scale=3; $1 / $2" | bc; }
mib=$(echo "scale=1; $bytes / 1048576" | bc)

echo
echo "HTTP binary cache: closure of $count paths, $mib MiB of NAR (uncompressed); medians of $rounds rounds;" \
  "$("$nginx" -v 2>&1 | sed 's/.*: //'), $(nix --version), $(nproc) cores; pulls into a store on $pull_fs"
printf '%-46s %12s %12s %11s\n' "" "kiln" "nginx" "kiln/nginx"
printf '%-46s %11.3fs %11.3fs %10.2fx\n' "narinfo: $count GETs, one connection, total" "$k_total" "$n_total" "$(ratio "$k_total" "$n_total")"
printf '%-46s %10.0fµs %10.0fµs %10.2fx\n' "narinfo: mean per request" "$k_mean" "$n_mean" "$(ratio "$k_mean" "$n_mean")"
printf '%-46s %10.0fµs %10.0fµs %10.2fx\n' "narinfo: median per request" "$k_p50" "$n_p50" "$(ratio "$k_p50" "$n_p50")"
printf '%-46s %10.0fµs %10.0fµs %10.2fx\n' "narinfo: p99 per request" "$k_p99" "$n_p99" "$(ratio "$k_p99" "$n_p99")"
printf '%-46s %10.0fµs %10.0fµs %10.2fx\n' "narinfo: mean, a path's first GET" "$kf_mean" "$nf_mean" "$(ratio "$kf_mean" "$nf_mean")"
printf '%-46s %10.0fµs %10.0fµs %10.2fx\n' "narinfo: the same, right after start (one run)" "$kc_mean" "$nc_mean" "$(ratio "$kc_mean" "$nc_mean")"
printf '%-46s %8.1fMiB/s %8.1fMiB/s %10.2fx\n' "NARs: 1 connection" "$k1" "$n1" "$(ratio "$k1" "$n1")"
printf '%-46s %8.1fMiB/s %8.1fMiB/s %10.2fx\n' "NARs: 4 parallel connections" "$k4" "$n4" "$(ratio "$k4" "$n4")"
printf '%-46s %11.2fs %11.2fs %10.2fx\n' "nix copy --from http:// into an empty store" "$kp" "$np" "$(ratio "$kp" "$np")"
echo "(latency and time ratios below 1 and throughput ratios above 1 mean Kiln is faster)"
summary "W6 narinfo, first GET of a path, mean (vs nginx)" "$nf_mean" "$kf_mean" µs "time<=2"
summary "W6 narinfo, first GET right after start, mean (vs nginx)" "$nc_mean" "$kc_mean" µs -
summary "W6 narinfo, answered before, median (vs nginx)" "$n_p50" "$k_p50" µs -
summary "W6 NARs over 1 connection (vs nginx)" "$n1" "$k1" MiB/s "rate>=0.9"
summary "W6 NARs over 4 connections (vs nginx)" "$n4" "$k4" MiB/s -
summary "W6 nix copy --from http:// into an empty store (vs nginx)" "$np" "$kp" s -
