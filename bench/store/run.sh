#!/usr/bin/env bash
# Push and pull the same closure with stock `nix copy` to and from Kiln and to and from a stock nix-daemon serving a
# separate store root on the same machine, in one run; print both times, the ratio, and Kiln's peak memory.
#
#   bench/store/run.sh [--paths N] [--size-mib N] [--rounds N]
#
# The closure: N/3 derivations in a chain, each with an incompressible file (SIZE/(N/3) MiB) and a tree of ~250
# small files; ~500 MiB in ~330 paths by default. Both servers are reached over their unix sockets with
# ?root=…, where stock Nix reads path contents from disk. Then one single large NAR is pushed to a fresh Kiln, to
# show its peak memory does not grow with NAR size. Each time includes a final sync. Then issue 21's W4/W5: the same
# push and pull over `ssh-ng://`, through Kiln's sshd and through a plain sshd forcing the stock `nix-daemon --stdio`,
# beside the two limits the issue names as anchors: ssh's bulk throughput on loopback (the closure's size through
# `cat` at the far end) and SHA-256 on one core (openssl over a file as large, in the page cache). Needs root,
# nix-bin (Nix 2.8) and openssh-server. Every figure is the median of ROUNDS runs. Figures only, no thresholds.
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
chain=$((paths / 3))
work="${KILN_BENCH_DIR:-/tmp/kiln-store-bench}"
rm -rf "$work" && mkdir -p "$work/src"
export NIX_CONFIG=$'experimental-features = nix-command\nbuild-users-group = \nsubstituters = \nsandbox = false'

source "$repo/bench/lib/kiln.sh"
publish_kiln "$work"

source "$repo/bench/lib/closure.sh"
make_closure "$work" "$chain" "$size_mib"
cat "$work"/source/nix/store/*/* > /dev/null 2>&1 || true

start_kiln() {
  discard "$work/kiln"
  "$kiln" serve --data "$work/kiln" --ssh-listen none --http-listen none > "$work/kiln.log" 2>&1 &
  kiln_pid=$!
  await_server "$kiln_pid" "$work/kiln.log" '[ -S "$work/kiln/daemon.sock" ]'
}
stop_kiln() { kill -TERM "$kiln_pid"; wait "$kiln_pid" || true; }
peak_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }

start_daemon() {
  discard "$work/daemon"
  mkdir -p "$work/daemon"
  NIX_STATE_DIR="$work/daemon/state" NIX_CONFIG=$'build-users-group = \nstore = local?root='"$work/daemon/root" nix-daemon > "$work/daemon.log" 2>&1 &
  daemon_pid=$!
  while [ ! -S "$work/daemon/state/daemon-socket/socket" ]; do sleep 0.1; done
}
stop_daemon() { kill "$daemon_pid"; wait "$daemon_pid" 2> /dev/null || true; }

# Each timed operation ends with sync: what a server writes only counts once it is on disk, and a write-back left
# over from one operation must not slow the next.
seconds() {
  local start end
  sync; start=$(date +%s.%N)
  if ! "$@" > "$work/last.log" 2>&1; then cat "$work/last.log" >&2; exit 1; fi
  sync; end=$(date +%s.%N); echo "$end - $start" | bc
}

kiln_push=() kiln_pull=() nix_push=() nix_pull=() kiln_peak=0
for round in $(seq 1 "$rounds"); do
  start_kiln
  kiln_url="unix://$work/kiln/daemon.sock?root=$work/kiln/root"
  kiln_push+=("$(seconds nix copy --derivation --from "local?root=$work/source" --to "$kiln_url" "$top")")
  discard "$work/pull"
  kiln_pull+=("$(seconds nix copy --derivation --from "$kiln_url" --to "local?root=$work/pull" "$top")")
  peak="$(peak_kib "$kiln_pid")"; [ "$peak" -gt "$kiln_peak" ] && kiln_peak=$peak
  stop_kiln

  start_daemon
  daemon_url="unix://$work/daemon/state/daemon-socket/socket?root=$work/daemon/root"
  nix_push+=("$(seconds nix copy --derivation --from "local?root=$work/source" --to "$daemon_url" "$top")")
  discard "$work/pull"
  nix_pull+=("$(seconds nix copy --derivation --from "$daemon_url" --to "local?root=$work/pull" "$top")")
  stop_daemon
done

# Over SSH (W4/W5): Kiln's own sshd (account bench) and a plain sshd forcing the stock daemon on its store root.
kiln_port=$((20000 + RANDOM % 10000)) plain_port=$((30000 + RANDOM % 10000))
ssh-keygen -q -t ed25519 -N "" -C bench -f "$work/id"
ssh-keygen -q -t ed25519 -N "" -C anchor -f "$work/id-cat"
mkdir -p "$work/plain"
ssh-keygen -q -t ed25519 -N "" -f "$work/plain/host_key"
cat > "$work/plain/stdio-daemon" <<SH
#!/bin/sh
export NIX_STATE_DIR="$work/daemon/state" NIX_CONFIG='build-users-group =
store = local?root=$work/daemon/root'
exec nix-daemon --stdio
SH
chmod +x "$work/plain/stdio-daemon"
source "$repo/bench/lib/plain-sshd.sh"
plain_sshd "$work/plain" "$plain_port" "$work/plain/host_key" "$work/plain/stdio-daemon" "$(cat "$work/id.pub")"
echo "command=\"cat > /dev/null\",restrict $(cat "$work/id-cat.pub")" >> "$work/plain/authorized_keys"
echo "[127.0.0.1]:$plain_port $(cut -d' ' -f1,2 "$work/plain/host_key.pub")" > "$work/known_hosts"
start_plain() { /usr/sbin/sshd -D -e -f "$work/plain/sshd_config" 2> "$work/plain/sshd.log" & plain_pid=$!; sleep 0.5; }
stop_plain() { kill "$plain_pid" 2> /dev/null; wait "$plain_pid" 2> /dev/null || true; }
start_kiln_ssh() {
  discard "$work/kiln"
  "$kiln" serve --data "$work/kiln" --ssh-listen "127.0.0.1:$kiln_port" --http-listen none > "$work/kiln.log" 2>&1 &
  kiln_pid=$!
  await_server "$kiln_pid" "$work/kiln.log" 'grep -q "ssh: listening" "$work/kiln.log" 2> /dev/null'
  "$kiln" account create bench --data "$work/kiln" > /dev/null
  "$kiln" key add bench "$(cat "$work/id.pub")" --data "$work/kiln" > /dev/null
  grep -v "^\[127.0.0.1\]:$kiln_port " "$work/known_hosts" > "$work/known_hosts.new" || true
  echo "[127.0.0.1]:$kiln_port $(cut -d' ' -f1,2 "$work/kiln/ssh/ssh_host_ed25519_key.pub")" >> "$work/known_hosts.new"
  mv "$work/known_hosts.new" "$work/known_hosts"
}
ssh_opts() { echo "-p $1 -i $2 -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile=$work/known_hosts -o LogLevel=ERROR"; }
copy_ssh() { NIX_SSHOPTS="$(ssh_opts "$1" "$work/id")" nix copy --derivation "${@:2}" "$top"; }

kiln_ssh_push=() kiln_ssh_pull=() nix_ssh_push=() nix_ssh_pull=()
for round in $(seq 1 "$rounds"); do
  start_kiln_ssh
  kiln_ssh_push+=("$(seconds copy_ssh "$kiln_port" --from "local?root=$work/source" --to "ssh-ng://kiln@127.0.0.1")")
  discard "$work/pull"
  kiln_ssh_pull+=("$(seconds copy_ssh "$kiln_port" --from "ssh-ng://kiln@127.0.0.1" --to "local?root=$work/pull")")
  stop_kiln

  discard "$work/daemon" && mkdir -p "$work/daemon"
  start_plain
  nix_ssh_push+=("$(seconds copy_ssh "$plain_port" --from "local?root=$work/source" --to "ssh-ng://root@127.0.0.1")")
  discard "$work/pull"
  nix_ssh_pull+=("$(seconds copy_ssh "$plain_port" --from "ssh-ng://root@127.0.0.1" --to "local?root=$work/pull")")
  stop_plain
done

# The anchors: the closure's bytes through ssh to a `cat` at the far end, and through SHA-256 on one core.
head -c "$bytes" /dev/urandom > "$work/anchor-bytes"
cat "$work/anchor-bytes" > /dev/null
start_plain
ssh_anchor=() sha_anchor=()
for round in $(seq 1 "$rounds"); do
  ssh_anchor+=("$(seconds sh -c "ssh $(ssh_opts "$plain_port" "$work/id-cat") root@127.0.0.1 < '$work/anchor-bytes'")")
  sha_anchor+=("$(seconds openssl dgst -sha256 "$work/anchor-bytes")")
done
stop_plain
rm -f "$work/anchor-bytes"

# One large NAR: Kiln's memory must not follow its size.
head -c $((size_mib * 1024 * 1024)) /dev/urandom > "$work/one-large-file"
large="$(nix-store --store "local?root=$work/source" --add "$work/one-large-file")"
start_kiln
large_push="$(seconds nix copy --from "local?root=$work/source" --to "unix://$work/kiln/daemon.sock?root=$work/kiln/root" "$large")"
large_peak="$(peak_kib "$kiln_pid")"
stop_kiln

np=$(median "${nix_push[@]}") kp=$(median "${kiln_push[@]}") nl=$(median "${nix_pull[@]}") kl=$(median "${kiln_pull[@]}")
mib=$(echo "scale=1; $bytes / 1048576" | bc)
echo
echo "closure: $count paths, $mib MiB of NAR; median of $rounds rounds; client: $(nix --version); 2 cores"
printf '%-34s %12s %12s %10s\n' "" "nix-daemon" "kiln" "kiln/nix"
printf '%-34s %11.2fs %11.2fs %9.2fx\n' "push  (nix copy --to unix://…)" "$np" "$kp" "$(echo "scale=3; $np / $kp" | bc)"
printf '%-34s %11.2fs %11.2fs %9.2fx\n' "pull  (nix copy --from unix://…)" "$nl" "$kl" "$(echo "scale=3; $nl / $kl" | bc)"
nsp=$(median "${nix_ssh_push[@]}") ksp=$(median "${kiln_ssh_push[@]}") nsl=$(median "${nix_ssh_pull[@]}") ksl=$(median "${kiln_ssh_pull[@]}")
printf '%-34s %11.2fs %11.2fs %9.2fx\n' "W4 push (nix copy --to ssh-ng://)" "$nsp" "$ksp" "$(echo "scale=3; $nsp / $ksp" | bc)"
printf '%-34s %11.2fs %11.2fs %9.2fx\n' "W5 pull (nix copy --from ssh-ng://)" "$nsl" "$ksl" "$(echo "scale=3; $nsl / $ksl" | bc)"
echo "(kiln/nix above 1 means Kiln is faster)"
sa=$(median "${ssh_anchor[@]}") ha=$(median "${sha_anchor[@]}")
echo "anchors for $mib MiB: ssh to cat on loopback ${sa}s ($(echo "scale=0; $mib / $sa" | bc) MiB/s), SHA-256 on one core ${ha}s ($(echo "scale=0; $mib / $ha" | bc) MiB/s)"
summary "W4 nix copy --to ssh-ng://, $count paths, $mib MiB" "$nsp" "$ksp" s "time<=0.5"
summary "W5 nix copy --from ssh-ng://, into a fresh store" "$nsl" "$ksl" s "time<=0.8"
summary "anchor: $mib MiB through ssh to cat / SHA-256 on one core" "$sa" "$ha" s -
echo "kiln peak memory: $((kiln_peak / 1024)) MiB pushing and pulling the closure;" \
  "$((large_peak / 1024)) MiB pushing one $size_mib MiB NAR (in ${large_push}s)"
