#!/usr/bin/env bash
# Kiln on its embedded default (SQLite metadata, blobs in a directory) against Kiln with its metadata in PostgreSQL
# (blobs in the same kind of directory), and with PostgreSQL and its blobs in S3 (radosgw on loopback — Ceph's S3
# gateway, a throwaway one-OSD cluster keeping objects in memory, from tests/radosgw — or s3rver where radosgw is
# not installed; a 1 GiB local blob cache), in one run with the host's Nix 2.8:
#  push      `nix copy --to unix://…` of the closure into a fresh server (ending with sync);
#  no-op     the same push again: every path is valid already, so it is queries only (a CI run that changed nothing);
#  narinfo   over HTTP, one keep-alive connection: each path's first GET (a database query and a rendering), then
#            every path again from the narinfo answer cache (mean / median / p99);
#  NARs      every NAR over one HTTP connection, MiB/s (the metadata is one lookup per NAR);
#  pull      `nix copy --from http://…` into an empty store (a fresh narinfo disk cache each time);
#  build     the 200-derivation DAG of bench/builds built through the socket (no work per build), then
#  rebuild   the same again: every output valid, the no-op a CI run that changed nothing costs.
# PostgreSQL is a private cluster of Debian's PostgreSQL in the work directory, on loopback (no systemd), started and
# stopped here; synchronous_commit off, which is what SQLite's WAL with synchronous=NORMAL also gives (a crash loses
# at most the last commits, never consistency). Best of N rounds, each with fresh data directories and a fresh
# database, the sides taking turns to go first. s3rver (npm) is a functional S3 server written in JavaScript, not a
# fast one: with it the S3 column is an upper bound on what S3 costs. Figures only, no thresholds.
#
# Each fresh server first takes a warm-up push of 40 small unrelated paths, not measured: a long-running server has
# compiled its hot code long since, and a cold one's JIT work (more of it with S3, whose SDK is large) is not what a
# backend costs. The S3 server's CPU is shown beside Kiln's: on a small machine the two share the cores. Before the
# narinfo figures each server also answers the first GETs of 3000 tiny unrelated paths (pushed after the push figures)
# and is left until its CPU is idle: the runtime compiles the lookup's hot code over the first few thousand requests,
# and in a shorter warm-up that compiling, on one of the two cores, was most of what the first GETs measured.
#
#   bench/metadata/run.sh [--paths 330] [--size-mib 200] [--rounds 2] [--push-only] [--s3rver]
#
# --push-only: the push and no-op rows alone (a quicker A/B of the upload path).
# --s3rver:    s3rver even where radosgw is installed.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
paths=330 size_mib=200 rounds=2 push_only= force_s3rver=
while [ $# -gt 0 ]; do
  case "$1" in
    --paths) paths="$2"; shift 2 ;;
    --size-mib) size_mib="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --push-only) push_only=1; shift ;;
    --s3rver) force_s3rver=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2> /dev/null | sort -V | tail -1)"
[ -n "$pg_bin" ] || { echo "PostgreSQL's server binaries are missing: apt-get install postgresql" >&2; exit 1; }
chain=$((paths / 3))
work="${KILN_BENCH_DIR:-/tmp/kiln-metadata-bench}"
rm -rf "$work" && mkdir -p "$work" && chmod 755 "$work"
export NIX_CONFIG=$'experimental-features = nix-command\nbuild-users-group = \nsubstituters = \nsandbox = false\nrequire-sigs = false'
export NIX_REMOTE=

source "$repo/bench/lib/kiln.sh"
publish_kiln "$work"
source "$repo/bench/lib/closure.sh"
make_closure "$work" "$chain" "$size_mib"
source_store="local?root=$work/source"
mkdir -p "$work/warm-up"
for i in $(seq 1 40); do echo "warm-up $i" > "$work/warm-up/$i"; done
warm_up=$(for i in $(seq 1 40); do nix store add-file --store "$source_store" "$work/warm-up/$i"; done)
narinfo_warm_up=$(tiny_paths "$source_store" 3000 "narinfo warm-up $RANDOM")
echo "$narinfo_warm_up" | sed 's|^/nix/store/\([a-z0-9]*\)-.*|\1|' > "$work/narinfo-warm-up.hashes"
sed 's|^/nix/store/\([a-z0-9]*\)-.*|\1|' "$work/closure.paths" > "$work/closure.hashes"
head -30 "$work/closure.hashes" > "$work/warm.hashes"; tail -n +31 "$work/closure.hashes" > "$work/first.hashes"
source "$repo/bench/lib/dag.sh"
write_dag "$work" 10 20

echo "starting a private PostgreSQL cluster..."
pg_port=$((40000 + RANDOM % 10000))
mkdir -p "$work/pg" && chown postgres: "$work/pg"
as_pg() { runuser -u postgres -- "$@"; }
as_pg "$pg_bin/initdb" -D "$work/pg/data" -U kiln --auth=trust -E UTF8 --locale=C.UTF-8 --no-sync > "$work/pg/initdb.log"
as_pg "$pg_bin/pg_ctl" -D "$work/pg/data" -l "$work/pg/server.log" -w -o \
  "-p $pg_port -k $work/pg -c listen_addresses=127.0.0.1 -c synchronous_commit=off" start > /dev/null
s3_port=$((50000 + RANDOM % 10000)) s3_pid= s3_key=BENCHACCESSKEY000001 s3_secret=bench-secret-0123456789abcdefghijklmnopq
if [ -z "$force_s3rver" ] && [ "$(id -u)" = 0 ] && command -v radosgw > /dev/null && command -v ceph-osd > /dev/null; then
  s3_server="radosgw $(radosgw --version | awk '{ print $3 }')"
  RGW_ACCESS_KEY=$s3_key RGW_SECRET_KEY=$s3_secret "$repo/tests/radosgw/start.sh" "$work/rgw" "$s3_port" > /dev/null
  make_bucket() { curl -sf -X PUT --aws-sigv4 aws:amz:us-east-1:s3 --user "$s3_key:$s3_secret" -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' "http://127.0.0.1:$s3_port/$1" > /dev/null; }
else
  s3_server=s3rver s3_key=S3RVER s3_secret=S3RVER
  mkdir -p "$work/s3"
  s3rver -d "$work/s3" -a 127.0.0.1 -p "$s3_port" --silent --no-vhost-buckets > /dev/null 2>&1 &
  s3_pid=$!
  until curl -s -o /dev/null "http://127.0.0.1:$s3_port/"; do sleep 0.1; done
  make_bucket() { curl -sf -X PUT "http://127.0.0.1:$s3_port/$1" > /dev/null; }
fi
printf '[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n' "$s3_key" "$s3_secret" > "$work/s3.credentials"
kiln_pid=
cleanup() {
  local status=$?
  [ -z "$kiln_pid" ] || kill "$kiln_pid" 2> /dev/null || true
  [ -z "$s3_pid" ] || kill "$s3_pid" 2> /dev/null || true
  [ ! -d "$work/rgw" ] || "$repo/tests/radosgw/stop.sh" "$work/rgw"
  wait 2> /dev/null || true
  as_pg "$pg_bin/pg_ctl" -D "$work/pg/data" -m fast -w stop > /dev/null 2>&1 || true
  if [ "$status" != 0 ]; then
    # A failed run keeps its servers' logs (kiln serve's per side and round, PostgreSQL's): the rest goes.
    local logs="/var/tmp/kiln-metadata-bench-failed-$(date -u +%Y%m%dT%H%M%SZ)"
    mkdir -p "$logs" && cp "$work"/*.log "$work/pg/server.log" "$logs/" 2> /dev/null || true
    echo "the run failed (status $status); its logs are in $logs" >&2
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# user + system CPU seconds a process has used so far
cpu_seconds() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"; }
# the S3 server's processes (radosgw and its Ceph cluster, or s3rver): what the bucket costs beside Kiln
s3_pids() { [ ! -f "$work/rgw/pids" ] || cat "$work/rgw/pids"; echo $s3_pid; }
s3_cpu() {
  local total=0 p
  for p in $(s3_pids); do
    [ -r "/proc/$p/stat" ] && total=$(echo "$total + $(cpu_seconds "$p")" | bc)
  done
  echo "$total"
}
client() { python3 "$repo/bench/lib/http-client.py" "$@"; }
seconds() { local s e; sync; s=$(date +%s.%N); "$@" > "$work/step.log" 2>&1 || { cat "$work/step.log" >&2; return 1; }; sync; e=$(date +%s.%N); echo "$e - $s" | bc; }

# One round of one side: a fresh server (and database), every figure once, appended to $work/SIDE.FIGURE.
run_side() {
  local side="$1" round="$2" data="$work/$1-$2" port=$((30000 + RANDOM % 10000)) database=()
  if [ "$side" != sqlite ]; then
    as_pg "$pg_bin/createdb" -h "$work/pg" -p "$pg_port" -U kiln "kiln_${side//-/_}_$round"
    database=(--database "Host=127.0.0.1;Port=$pg_port;Username=kiln;Database=kiln_${side//-/_}_$round")
  fi
  if [ "$side" = postgresql-s3 ]; then
    make_bucket "bench$round"
    database+=(--blobs "s3://bench$round/kiln?endpoint=http%3A%2F%2F127.0.0.1%3A$s3_port&credentials_file=$work/s3.credentials" --blob-cache-size 1GiB)
  fi
  "$kiln" serve --data "$data" --ssh-listen none --http-listen "127.0.0.1:$port" "${database[@]}" > "$work/$side-$round.log" 2>&1 &
  kiln_pid=$!
  await_server "$kiln_pid" "$work/$side-$round.log" 'grep -q "http: listening" "$work/$side-$round.log" && [ -S "$data/daemon.sock" ]'
  local store="unix://$data/daemon.sock?root=$data/root" url="http://127.0.0.1:$port"
  # shellcheck disable=SC2086 # one argument per path
  nix copy --from "$source_store" --to "$store" $warm_up > /dev/null
  local cpu_before s3_before; cpu_before=$(cpu_seconds "$kiln_pid") s3_before=$(s3_cpu)
  seconds nix copy --derivation --from "$source_store" --to "$store" "$top" >> "$work/$side.push"
  echo "$(cpu_seconds "$kiln_pid") - $cpu_before" | bc >> "$work/$side.pushcpu"
  echo "$(s3_cpu) - $s3_before" | bc >> "$work/$side.pushs3cpu"
  seconds nix copy --derivation --from "$source_store" --to "$store" "$top" >> "$work/$side.noop"
  if [ -n "$push_only" ]; then
    kill "$kiln_pid"; wait "$kiln_pid" 2> /dev/null || true; kiln_pid=
    discard "$data"
    return
  fi
  # shellcheck disable=SC2086 # one argument per path
  nix copy --from "$source_store" --to "$store" $narinfo_warm_up > "$work/step.log" 2>&1 || { cat "$work/step.log" >&2; exit 1; }
  "$kiln" account set local --public-cache --data "$data" > /dev/null
  client narinfo "$url" "$work/narinfo-warm-up.hashes" > /dev/null
  client narinfo "$url" "$work/warm.hashes" > /dev/null
  # shellcheck disable=SC2046 # one argument per PID
  settle "$kiln_pid" $(s3_pids)
  client narinfo "$url" "$work/first.hashes" >> "$work/$side.first"
  for _ in 1 2 3; do client narinfo "$url" "$work/closure.hashes" >> "$work/$side.cached"; done
  client narurls "$url" "$work/closure.hashes" "$work/$side.nars"
  # Untimed: warms the page cache, and (five passes, then idle again) the NAR path's code, as the narinfo warm-up did
  for _ in 1 2 3 4 5; do client nars "$url" "$work/$side.nars" 1 > /dev/null; done
  # shellcheck disable=SC2046
  settle "$kiln_pid" $(s3_pids)
  for _ in 1 2; do client nars "$url" "$work/$side.nars" 1 >> "$work/$side.nars1"; done
  discard "$work/pull"
  XDG_CACHE_HOME="$work/xdg-$side-$round" seconds nix copy --derivation --no-check-sigs --from "$url" --to "local?root=$work/pull" "$top" >> "$work/$side.pull"
  [ "$(nix path-info --store "local?root=$work/pull" --derivation -r "$top" | wc -l)" = "$count" ] || { echo "$side: the pull is incomplete" >&2; exit 1; }
  seconds nix build --store "$store" -f "$work/dag.nix" --no-link >> "$work/$side.build"
  seconds nix build --store "$store" -f "$work/dag.nix" --no-link >> "$work/$side.rebuild"
  grep VmHWM "/proc/$kiln_pid/status" | awk '{ print $2 }' >> "$work/$side.rss"
  kill "$kiln_pid"; wait "$kiln_pid" 2> /dev/null || true; kiln_pid=
  discard "$data" "$work/pull"
}

for round in $(seq 1 "$rounds"); do
  echo "round $round of $rounds..."
  order="sqlite postgresql postgresql-s3"; [ $((round % 2)) = 1 ] || order="postgresql-s3 postgresql sqlite"
  for side in $order; do run_side "$side" "$round"; done
done

best() { sort -n "$1" | head -1; }
field() { sort -n -k1 "$1" | head -1 | awk -v f="$2" '{ print $f }'; }
ratio() { if [ "$(echo "$2 == 0" | bc)" = 1 ]; then echo -; else echo "scale=2; $1 / $2" | bc; fi; }
mibs() { sort -n "$1" | head -1 | awk '{ printf "%.1f", $2 / 1048576 / $1 }'; }
row() { printf '%-42s %12s %12s %12s %8sx %8sx\n' "$1" "$2" "$3" "$4" "$(ratio "$6" "$5")" "$(ratio "$7" "$5")"; }
mib=$(echo "scale=1; $bytes / 1048576" | bc)
echo
echo "Kiln's backends: SQLite + directory vs PostgreSQL $("$pg_bin/postgres" --version | awk '{ print $3 }') + directory vs PostgreSQL + S3 ($s3_server), all on loopback;" \
  "closure of $count paths, $mib MiB of NAR; best of $rounds rounds; $(nix --version), $(nproc) cores"
printf '%-42s %12s %12s %12s %9s %9s\n' "" "sqlite" "postgresql" "pg+s3" "pg/sqlite" "s3/sqlite"
three() { # label unit extract-command…
  local label="$1" unit="$2"; shift 2
  local s p q; s=$("$@" sqlite) p=$("$@" postgresql) q=$("$@" postgresql-s3)
  row "$label" "$s$unit" "$p$unit" "$q$unit" "$s" "$p" "$q"
}
best_of() { best "$work/$2.$1"; }
field_of() { field "$work/$3.$1" "$2"; }
mibs_of() { mibs "$work/$1.nars1"; }
rss_of() { echo $(( $(sort -n "$work/$1.rss" | tail -1) / 1024 )); }
three "push (nix copy --to unix://)" s best_of push
three "kiln serve CPU during the push" s best_of pushcpu
three "S3 server's CPU during the push" s best_of pushs3cpu
three "no-op push (every path valid already)" s best_of noop
[ -z "$push_only" ] || exit 0
three "narinfo: mean, first GET of a path" µs field_of first 2
three "narinfo: median, cached answer" µs field_of cached 3
three "narinfo: p99, cached answer" µs field_of cached 4
three "NARs over one HTTP connection" MiB/s mibs_of
three "pull (nix copy --from http://)" s best_of pull
three "build: 200 derivations through the socket" s best_of build
three "no-op rebuild of the 200" s best_of rebuild
three "kiln serve peak RSS" MiB rss_of
echo "(times and latencies: a ratio below 1 means faster than SQLite + directory; throughput: above 1)"
