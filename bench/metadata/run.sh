#!/usr/bin/env bash
# Kiln with its metadata in SQLite (the embedded default) against Kiln with its metadata in PostgreSQL, blobs on the
# same disk for both, in one run with the host's Nix 2.8:
#  push      `nix copy --to unix://…` of the closure into a fresh server (ending with sync);
#  no-op     the same push again: every path is valid already, so it is queries only (a CI run that changed nothing);
#  narinfo   over HTTP, one keep-alive connection: each path's first GET (a database query and a rendering), then
#            every path again from the narinfo answer cache (mean / median / p99);
#  NARs      every NAR over one HTTP connection, MiB/s (the metadata is one lookup per NAR);
#  pull      `nix copy --from http://…` into an empty store (a fresh narinfo disk cache each time).
# PostgreSQL is a private cluster of Debian's PostgreSQL in the work directory, on loopback (no systemd), started and
# stopped here; synchronous_commit off, which is what SQLite's WAL with synchronous=NORMAL also gives (a crash loses
# at most the last commits, never consistency). Best of N rounds, each with fresh data directories and a fresh
# database, the sides taking turns to go first. Figures only, no thresholds.
#
#   bench/metadata/run.sh [--paths 330] [--size-mib 200] [--rounds 2]
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
paths=330 size_mib=200 rounds=2
while [ $# -gt 0 ]; do
  case "$1" in
    --paths) paths="$2"; shift 2 ;;
    --size-mib) size_mib="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
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

echo "building kiln (ReadyToRun)..."
source "$repo/bench/lib/kiln.sh"
publish_kiln "$work"
source "$repo/bench/lib/closure.sh"
make_closure "$work" "$chain" "$size_mib"
source_store="local?root=$work/source"
sed 's|^/nix/store/\([a-z0-9]*\)-.*|\1|' "$work/closure.paths" > "$work/closure.hashes"
head -30 "$work/closure.hashes" > "$work/warm.hashes"; tail -n +31 "$work/closure.hashes" > "$work/first.hashes"

echo "starting a private PostgreSQL cluster..."
pg_port=$((40000 + RANDOM % 10000))
mkdir -p "$work/pg" && chown postgres: "$work/pg"
as_pg() { runuser -u postgres -- "$@"; }
as_pg "$pg_bin/initdb" -D "$work/pg/data" -U kiln --auth=trust -E UTF8 --locale=C.UTF-8 --no-sync > "$work/pg/initdb.log"
as_pg "$pg_bin/pg_ctl" -D "$work/pg/data" -l "$work/pg/server.log" -w -o \
  "-p $pg_port -k $work/pg -c listen_addresses=127.0.0.1 -c synchronous_commit=off" start > /dev/null
kiln_pid=
cleanup() {
  [ -z "$kiln_pid" ] || kill "$kiln_pid" 2> /dev/null || true
  wait 2> /dev/null || true
  as_pg "$pg_bin/pg_ctl" -D "$work/pg/data" -m fast -w stop > /dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

client() { python3 "$repo/bench/lib/http-client.py" "$@"; }
seconds() { local s e; sync; s=$(date +%s.%N); "$@" > "$work/step.log" 2>&1 || { cat "$work/step.log" >&2; return 1; }; sync; e=$(date +%s.%N); echo "$e - $s" | bc; }

# One round of one side: a fresh server (and database), every figure once, appended to $work/SIDE.FIGURE.
run_side() {
  local side="$1" round="$2" data="$work/$1-$2" port=$((30000 + RANDOM % 10000)) database=()
  if [ "$side" = postgresql ]; then
    as_pg "$pg_bin/createdb" -h "$work/pg" -p "$pg_port" -U kiln "kiln_$round"
    database=(--database "Host=127.0.0.1;Port=$pg_port;Username=kiln;Database=kiln_$round")
  fi
  "$kiln" serve --data "$data" --ssh-listen none --http-listen "127.0.0.1:$port" "${database[@]}" > "$work/$side-$round.log" 2>&1 &
  kiln_pid=$!
  until grep -q "http: listening" "$work/$side-$round.log" && [ -S "$data/daemon.sock" ]; do
    kill -0 "$kiln_pid" 2> /dev/null || { cat "$work/$side-$round.log" >&2; echo "kiln serve exited" >&2; exit 1; }
    sleep 0.1
  done
  local store="unix://$data/daemon.sock?root=$data/root" url="http://127.0.0.1:$port"
  seconds nix copy --derivation --from "$source_store" --to "$store" "$top" >> "$work/$side.push"
  seconds nix copy --derivation --from "$source_store" --to "$store" "$top" >> "$work/$side.noop"
  "$kiln" account set local --public-cache --data "$data" > /dev/null
  client narinfo "$url" "$work/warm.hashes" > /dev/null
  client narinfo "$url" "$work/first.hashes" >> "$work/$side.first"
  for _ in 1 2 3; do client narinfo "$url" "$work/closure.hashes" >> "$work/$side.cached"; done
  client narurls "$url" "$work/closure.hashes" "$work/$side.nars"
  client nars "$url" "$work/$side.nars" 1 > /dev/null   # warms the page cache
  for _ in 1 2; do client nars "$url" "$work/$side.nars" 1 >> "$work/$side.nars1"; done
  rm -rf "$work/pull"
  XDG_CACHE_HOME="$work/xdg-$side-$round" seconds nix copy --derivation --no-check-sigs --from "$url" --to "local?root=$work/pull" "$top" >> "$work/$side.pull"
  [ "$(nix path-info --store "local?root=$work/pull" --derivation -r "$top" | wc -l)" = "$count" ] || { echo "$side: the pull is incomplete" >&2; exit 1; }
  grep VmHWM "/proc/$kiln_pid/status" | awk '{ print $2 }' >> "$work/$side.rss"
  kill "$kiln_pid"; wait "$kiln_pid" 2> /dev/null || true; kiln_pid=
  rm -rf "$data" "$work/pull"
}

for round in $(seq 1 "$rounds"); do
  echo "round $round of $rounds..."
  order="sqlite postgresql"; [ $((round % 2)) = 1 ] || order="postgresql sqlite"
  for side in $order; do run_side "$side" "$round"; done
done

best() { sort -n "$1" | head -1; }
field() { sort -n -k1 "$1" | head -1 | awk -v f="$2" '{ print $f }'; }
ratio() { echo "scale=2; $1 / $2" | bc; }
mibs() { sort -n "$1" | head -1 | awk '{ printf "%.1f", $2 / 1048576 / $1 }'; }
row() { printf '%-48s %12s %12s %8sx\n' "$1" "$2" "$3" "$(ratio "$4" "$5")"; }
mib=$(echo "scale=1; $bytes / 1048576" | bc)
echo
echo "Metadata: SQLite vs PostgreSQL $("$pg_bin/postgres" --version | awk '{ print $3 }') (loopback), blobs on the same disk;" \
  "closure of $count paths, $mib MiB of NAR; best of $rounds rounds; $(nix --version), $(nproc) cores"
printf '%-48s %12s %12s %9s\n' "" "sqlite" "postgresql" "pg/sqlite"
s=$(best "$work/sqlite.push") p=$(best "$work/postgresql.push"); row "push (nix copy --to unix://)" "${s}s" "${p}s" "$p" "$s"
s=$(best "$work/sqlite.noop") p=$(best "$work/postgresql.noop"); row "no-op push (every path valid already)" "${s}s" "${p}s" "$p" "$s"
s=$(field "$work/sqlite.first" 2) p=$(field "$work/postgresql.first" 2); row "narinfo: mean, first GET of a path" "${s}µs" "${p}µs" "$p" "$s"
s=$(field "$work/sqlite.cached" 3) p=$(field "$work/postgresql.cached" 3); row "narinfo: median, cached answer" "${s}µs" "${p}µs" "$p" "$s"
s=$(field "$work/sqlite.cached" 4) p=$(field "$work/postgresql.cached" 4); row "narinfo: p99, cached answer" "${s}µs" "${p}µs" "$p" "$s"
s=$(mibs "$work/sqlite.nars1") p=$(mibs "$work/postgresql.nars1"); row "NARs over one HTTP connection" "${s}MiB/s" "${p}MiB/s" "$p" "$s"
s=$(best "$work/sqlite.pull") p=$(best "$work/postgresql.pull"); row "pull (nix copy --from http://)" "${s}s" "${p}s" "$p" "$s"
s=$(sort -n "$work/sqlite.rss" | tail -1) p=$(sort -n "$work/postgresql.rss" | tail -1); row "kiln serve peak RSS" "$((s / 1024))MiB" "$((p / 1024))MiB" "$p" "$s"
echo "(times and latencies: below 1 means PostgreSQL is faster; throughput: above 1)"
