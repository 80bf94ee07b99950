#!/usr/bin/env bash
# Push and pull the same closure with stock `nix copy` to and from Kiln and to and from a stock nix-daemon serving a
# separate store root on the same machine, in one run; print both times, the ratio, and Kiln's peak memory.
#
#   bench/store/run.sh [--paths N] [--size-mib N] [--rounds N]
#
# The closure: N/3 derivations in a chain, each with an incompressible file (SIZE/(N/3) MiB) and a tree of ~250
# small files; ~500 MiB in ~330 paths by default. Both servers are reached over their unix sockets with
# ?root=…, where stock Nix reads path contents from disk. Then one single large NAR is pushed to a fresh Kiln, to
# show its peak memory does not grow with NAR size. Each time includes a final sync. Needs root and nix-bin (Nix 2.8).
# Figures only, no thresholds.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
paths=330 size_mib=500 rounds=2
while [ $# -gt 0 ]; do
  case "$1" in
    --paths) paths="$2"; shift 2 ;;
    --size-mib) size_mib="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
chain=$((paths / 3))
work="${KILN_BENCH_DIR:-/tmp/kiln-store-bench}"
rm -rf "$work" && mkdir -p "$work/src"
export NIX_CONFIG=$'experimental-features = nix-command\nbuild-users-group = \nsubstituters = \nsandbox = false'

echo "building kiln (ReadyToRun)..."
source "$repo/bench/lib/kiln.sh"
publish_kiln "$work"

source "$repo/bench/lib/closure.sh"
make_closure "$work" "$chain" "$size_mib"
cat "$work"/source/nix/store/*/* > /dev/null 2>&1 || true

start_kiln() {
  rm -rf "$work/kiln"
  "$kiln" serve --data "$work/kiln" --ssh-listen none --http-listen none > "$work/kiln.log" 2>&1 &
  kiln_pid=$!
  while [ ! -S "$work/kiln/daemon.sock" ]; do sleep 0.1; done
}
stop_kiln() { kill -TERM "$kiln_pid"; wait "$kiln_pid" || true; }
peak_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }

start_daemon() {
  rm -rf "$work/daemon"
  mkdir -p "$work/daemon"
  NIX_STATE_DIR="$work/daemon/state" NIX_CONFIG=$'build-users-group = \nstore = local?root='"$work/daemon/root" nix-daemon > "$work/daemon.log" 2>&1 &
  daemon_pid=$!
  while [ ! -S "$work/daemon/state/daemon-socket/socket" ]; do sleep 0.1; done
}
stop_daemon() { kill "$daemon_pid"; wait "$daemon_pid" 2> /dev/null || true; }

# Each timed operation ends with sync: what a server writes only counts once it is on disk, and a write-back left
# over from one operation must not slow the next.
seconds() { local start end; sync; start=$(date +%s.%N); "$@" > /dev/null 2>&1; sync; end=$(date +%s.%N); echo "$end - $start" | bc; }
best() { printf '%s\n' "$@" | sort -n | head -1; }

kiln_push=() kiln_pull=() nix_push=() nix_pull=() kiln_peak=0
for round in $(seq 1 "$rounds"); do
  start_kiln
  kiln_url="unix://$work/kiln/daemon.sock?root=$work/kiln/root"
  kiln_push+=("$(seconds nix copy --derivation --from "local?root=$work/source" --to "$kiln_url" "$top")")
  rm -rf "$work/pull"
  kiln_pull+=("$(seconds nix copy --derivation --from "$kiln_url" --to "local?root=$work/pull" "$top")")
  peak="$(peak_kib "$kiln_pid")"; [ "$peak" -gt "$kiln_peak" ] && kiln_peak=$peak
  stop_kiln

  start_daemon
  daemon_url="unix://$work/daemon/state/daemon-socket/socket?root=$work/daemon/root"
  nix_push+=("$(seconds nix copy --derivation --from "local?root=$work/source" --to "$daemon_url" "$top")")
  rm -rf "$work/pull"
  nix_pull+=("$(seconds nix copy --derivation --from "$daemon_url" --to "local?root=$work/pull" "$top")")
  stop_daemon
done

# One large NAR: Kiln's memory must not follow its size.
head -c $((size_mib * 1024 * 1024)) /dev/urandom > "$work/one-large-file"
large="$(nix-store --store "local?root=$work/source" --add "$work/one-large-file")"
start_kiln
large_push="$(seconds nix copy --from "local?root=$work/source" --to "unix://$work/kiln/daemon.sock?root=$work/kiln/root" "$large")"
large_peak="$(peak_kib "$kiln_pid")"
stop_kiln

np=$(best "${nix_push[@]}") kp=$(best "${kiln_push[@]}") nl=$(best "${nix_pull[@]}") kl=$(best "${kiln_pull[@]}")
mib=$(echo "scale=1; $bytes / 1048576" | bc)
echo
echo "closure: $count paths, $mib MiB of NAR; best of $rounds rounds; client: $(nix --version); 2 cores"
printf '%-34s %12s %12s %10s\n' "" "nix-daemon" "kiln" "kiln/nix"
printf '%-34s %11.2fs %11.2fs %9.2fx\n' "push  (nix copy --to unix://…)" "$np" "$kp" "$(echo "scale=3; $np / $kp" | bc)"
printf '%-34s %11.2fs %11.2fs %9.2fx\n' "pull  (nix copy --from unix://…)" "$nl" "$kl" "$(echo "scale=3; $nl / $kl" | bc)"
echo "(kiln/nix above 1 means Kiln is faster)"
echo "kiln peak memory: $((kiln_peak / 1024)) MiB pushing and pulling the closure;" \
  "$((large_peak / 1024)) MiB pushing one $size_mib MiB NAR (in ${large_push}s)"
