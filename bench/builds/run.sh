#!/usr/bin/env bash
# Build the same synthetic DAG through Kiln and through a stock nix-daemon with its sandbox on (its own store root),
# from a fresh state and again as a no-op, in one run; print the times and the ratios.
#
#   bench/builds/run.sh [--layers 10] [--width 20] [--jobs N] [--rounds 3] [--w3]
#
# The DAG: LAYERS layers of WIDTH derivations, each depending on 3 of the layer before, whose small outputs name
# (and so refer to) their inputs; the builder is a static busybox added to the store from the client. Both servers
# get the same max-jobs and cores and are driven by the host's Nix 2.8 with `nix build --store unix://…?root=…`,
# evaluation included (that is what a user waits for). "Fresh" starts from an empty server each round; "no-op" is
# the same command again right after. Each fresh time ends with sync.
#
# Then the same over SSH, as a CI runner uses a remote store (W1/W2 of issue 21): `nix build --eval-store auto
# --store ssh-ng://…` (the client evaluates into its own store, copies the derivations, asks the server to build),
# against Kiln's own sshd and against a plain sshd whose forced command is that stock nix-daemon (`--stdio`, sandbox
# on), fresh and as a no-op. The fresh build is timed twice: on a server that has just started (its first builds), and
# on a server in service, which built another DAG of the same shape just before (the figure the issue's target is read
# against; see in_service below). With --w3, also issue 21's W3: the classic remote builder (`--builders ssh-ng://…`,
# `--max-jobs 0`: one SSH session per derivation, the client building into a fresh store of its own), against both,
# without and with the connection multiplexing `kiln client-config` prints (minutes each). Every figure is the median
# of its runs: ROUNDS fresh runs, three no-op runs a round.
# Needs root, nix-bin, openssh-server and bubblewrap. Figures only, no thresholds.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
layers=10 width=20 jobs="$(nproc)" rounds=3 w3=0
while [ $# -gt 0 ]; do
  case "$1" in
    --layers) layers="$2"; shift 2 ;;
    --width) width="$2"; shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --w3) w3=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
work="${KILN_BENCH_DIR:-/tmp/kiln-builds-bench}"
rm -rf "$work" && mkdir -p "$work"
export NIX_CONFIG=$'experimental-features = nix-command\nbuild-users-group = \nsubstituters = '
export NIX_REMOTE=

source "$repo/bench/lib/kiln.sh"
publish_kiln "$work"

source "$repo/bench/lib/dag.sh"
write_dag "$work" "$layers" "$width"
# The DAG a server builds before the timed one when it is "in service": the same shape, sharing nothing with it (other
# derivations; a busybox directory with one more file, so another store path).
write_dag "$work/warm" "$layers" "$width"
touch "$work/warm/bb/warm-up"
sed -i 's/echo building layer/echo warming layer/' "$work/warm/dag.nix"

kiln_port=$((20000 + RANDOM % 10000)) plain_port=$((30000 + RANDOM % 10000))
start_kiln() {
  discard "$work/kiln"
  "$kiln" serve --data "$work/kiln" --max-jobs "$jobs" --cores 1 --ssh-listen "127.0.0.1:$kiln_port" --http-listen none > "$work/kiln.log" 2>&1 &
  kiln_pid=$!
  await_server "$kiln_pid" "$work/kiln.log" '[ -S "$work/kiln/daemon.sock" ] && grep -q "ssh: listening" "$work/kiln.log"'
  "$kiln" account create bench --data "$work/kiln" > /dev/null
  "$kiln" key add bench "$(cat "$work/id.pub")" --data "$work/kiln" > /dev/null
  echo "[127.0.0.1]:$kiln_port $(cut -d' ' -f1,2 "$work/kiln/ssh/ssh_host_ed25519_key.pub")" > "$work/known_hosts"
  echo "[127.0.0.1]:$plain_port $(cut -d' ' -f1,2 "$work/kiln/ssh/ssh_host_ed25519_key.pub")" >> "$work/known_hosts"
  cp "$work/kiln/ssh/ssh_host_ed25519_key" "$work/plain/host_key"
}
stop_kiln() { kill -TERM "$kiln_pid"; wait "$kiln_pid" || true; }

start_daemon() {
  discard "$work/daemon"
  mkdir -p "$work/daemon"
  NIX_STATE_DIR="$work/daemon/state" \
    NIX_CONFIG=$'build-users-group = \nsandbox = true\nsandbox-fallback = false\nmax-jobs = '"$jobs"$'\ncores = 1\nstore = local?root='"$work/daemon/root" \
    nix-daemon > "$work/daemon.log" 2>&1 &
  daemon_pid=$!
  while [ ! -S "$work/daemon/state/daemon-socket/socket" ]; do sleep 0.1; done
}
stop_daemon() { kill "$daemon_pid"; wait "$daemon_pid" 2> /dev/null || true; }

# The stock remote: a plain sshd forcing `nix-daemon --stdio` on the daemon's store (the same settings as above).
ssh-keygen -q -t ed25519 -N "" -C bench -f "$work/id"
mkdir -p "$work/plain" /run/sshd
cat > "$work/plain/stdio-daemon" <<SH
#!/bin/sh
export NIX_STATE_DIR="$work/daemon/state" NIX_CONFIG='build-users-group =
sandbox = true
sandbox-fallback = false
max-jobs = $jobs
cores = 1
store = local?root=$work/daemon/root'
exec nix-daemon --stdio
SH
chmod +x "$work/plain/stdio-daemon"
source "$repo/bench/lib/plain-sshd.sh"
plain_sshd "$work/plain" "$plain_port" "$work/plain/host_key" "$work/plain/stdio-daemon" "$(cat "$work/id.pub")"
start_plain() { /usr/sbin/sshd -D -e -f "$work/plain/sshd_config" 2> "$work/plain/sshd.log" & plain_pid=$!; sleep 0.5; }
stop_plain() { kill "$plain_pid" 2> /dev/null; wait "$plain_pid" 2> /dev/null || true; }
ssh_opts() { echo "-p $1 -i $work/id -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile=$work/known_hosts -o LogLevel=ERROR"; }
# The connection multiplexing `kiln client-config` prints (a CI runner's later `nix` commands reuse one connection).
mux_opts() { echo "$(ssh_opts "$1") -o ControlMaster=auto -o ControlPath=$work/mux-%C -o ControlPersist=60"; }
stop_mux() { ssh $(mux_opts "$1") -O exit "$2@127.0.0.1" 2> /dev/null || true; }

build() { nix build --store "$1" -f "$work/dag.nix" --no-link; }
# Over SSH: evaluation into a client store of the run's own (fresh each round, so the derivations are copied again).
# (Another DAG and client store when given: the warm-up's.)
ssh_build() { NIX_SSHOPTS="$2" nix build --eval-store "local?root=${4:-$work/client}" --store "$1" -f "${3:-$work/dag.nix}" --no-link; }
seconds() {
  local start end
  start=$(date +%s.%N)
  if ! "$@" > "$work/last.log" 2>&1; then cat "$work/last.log" >&2; exit 1; fi
  end=$(date +%s.%N); echo "$end - $start" | bc
}
fresh() { sync; seconds "$@"; }
# A server in service: before the timed build it builds the warm-up DAG through a client store of its own, then goes
# quiet. Kiln's runtime has then compiled what serving builds runs (a fresh kiln serve process compiles much of it
# during its first builds); the stock side gets the same warm-up, though a `nix-daemon --stdio` per session has
# nothing of its own to warm.
in_service() { # STORE_URL SSH_OPTS PID…
  local url="$1" opts="$2"; shift 2
  discard "$work/warm-client"
  seconds ssh_build "$url" "$opts" "$work/warm/dag.nix" "$work/warm-client" > /dev/null
  discard "$work/warm-client"
  settle "$@"
}

# W3: every derivation built on the remote over a session of its own; the client's store is fresh each time.
w3_build() {
  discard "$work/w3client"
  NIX_SSHOPTS="$2" nix build --store "local?root=$work/w3client" -f "$work/dag.nix" --no-link --max-jobs 0 \
    --builders "$1 x86_64-linux - $jobs 1 benchmark,big-parallel" --builders-use-substitutes
}
w3_kiln=() w3_kiln_mux=() w3_nix=() w3_nix_mux=()

kiln_fresh=() kiln_noop=() nix_fresh=() nix_noop=()
kiln_ssh_cold=() nix_ssh_cold=() kiln_ssh_fresh=() kiln_ssh_noop=() nix_ssh_fresh=() nix_ssh_noop=() kiln_mux_noop=() nix_mux_noop=()
for round in $(seq 1 "$rounds"); do
  start_kiln
  kiln_url="unix://$work/kiln/daemon.sock?root=$work/kiln/root"
  kiln_fresh+=("$(fresh build "$kiln_url")")
  for _ in 1 2 3; do kiln_noop+=("$(seconds build "$kiln_url")"); done
  stop_kiln
  start_kiln
  discard "$work/client"
  kiln_ssh_cold+=("$(fresh ssh_build "ssh-ng://kiln@127.0.0.1" "$(ssh_opts "$kiln_port")")")
  stop_kiln
  start_kiln
  in_service "ssh-ng://kiln@127.0.0.1" "$(ssh_opts "$kiln_port")" "$kiln_pid"
  discard "$work/client"
  kiln_ssh_fresh+=("$(fresh ssh_build "ssh-ng://kiln@127.0.0.1" "$(ssh_opts "$kiln_port")")")
  for _ in 1 2 3; do kiln_ssh_noop+=("$(seconds ssh_build "ssh-ng://kiln@127.0.0.1" "$(ssh_opts "$kiln_port")")"); done
  grep "ssh session" "$work/kiln.log" | tail -1 | sed 's/^/  last kiln session: /' >&2
  seconds ssh_build "ssh-ng://kiln@127.0.0.1" "$(mux_opts "$kiln_port")" > /dev/null # opens the shared connection
  for _ in 1 2 3; do kiln_mux_noop+=("$(seconds ssh_build "ssh-ng://kiln@127.0.0.1" "$(mux_opts "$kiln_port")")"); done
  stop_mux "$kiln_port" kiln
  stop_kiln

  start_daemon
  daemon_url="unix://$work/daemon/state/daemon-socket/socket?root=$work/daemon/root"
  nix_fresh+=("$(fresh build "$daemon_url")")
  for _ in 1 2 3; do nix_noop+=("$(seconds build "$daemon_url")"); done
  built="$(ls -d "$work"/daemon/root/nix/store/*-dag-* 2> /dev/null | grep -vc '\.drv$' || true)"
  stop_daemon
  discard "$work/daemon" "$work/client"
  start_plain
  nix_ssh_cold+=("$(fresh ssh_build "ssh-ng://root@127.0.0.1" "$(ssh_opts "$plain_port")")")
  discard "$work/daemon" "$work/client"
  in_service "ssh-ng://root@127.0.0.1" "$(ssh_opts "$plain_port")" "$plain_pid"
  nix_ssh_fresh+=("$(fresh ssh_build "ssh-ng://root@127.0.0.1" "$(ssh_opts "$plain_port")")")
  for _ in 1 2 3; do nix_ssh_noop+=("$(seconds ssh_build "ssh-ng://root@127.0.0.1" "$(ssh_opts "$plain_port")")"); done
  seconds ssh_build "ssh-ng://root@127.0.0.1" "$(mux_opts "$plain_port")" > /dev/null
  for _ in 1 2 3; do nix_mux_noop+=("$(seconds ssh_build "ssh-ng://root@127.0.0.1" "$(mux_opts "$plain_port")")"); done
  stop_mux "$plain_port" root
  stop_plain
done

for round in $(seq 1 "$((w3 ? rounds : 0))"); do
  start_kiln
  w3_kiln+=("$(seconds w3_build "ssh-ng://kiln@127.0.0.1" "$(ssh_opts "$kiln_port")")")
  stop_kiln
  start_kiln
  w3_kiln_mux+=("$(seconds w3_build "ssh-ng://kiln@127.0.0.1" "$(mux_opts "$kiln_port")")")
  stop_mux "$kiln_port" kiln
  stop_kiln
  for mux in 0 1; do
    discard "$work/daemon"
    start_plain
    if [ "$mux" = 0 ]; then
      w3_nix+=("$(seconds w3_build "ssh-ng://root@127.0.0.1" "$(ssh_opts "$plain_port")")")
    else
      w3_nix_mux+=("$(seconds w3_build "ssh-ng://root@127.0.0.1" "$(mux_opts "$plain_port")")")
      stop_mux "$plain_port" root
    fi
    stop_plain
  done
  discard "$work/w3client" "$work/daemon"
done

nf=$(median "${nix_fresh[@]}") kf=$(median "${kiln_fresh[@]}") nn=$(median "${nix_noop[@]}") kn=$(median "${kiln_noop[@]}")
echo
echo "DAG: $((layers * width)) derivations ($layers layers of $width, 3 deps each; nix-daemon built $built outputs);" \
  "max-jobs $jobs, cores 1; median of $rounds fresh / $((rounds * 3)) no-op runs; client: $(nix --version); $(nproc) cores"
printf '%-40s %12s %12s %10s\n' "" "nix-daemon" "kiln" "kiln/nix"
printf '%-40s %11.2fs %11.2fs %9.2fx\n' "fresh  (nix build --store unix://…)" "$nf" "$kf" "$(echo "scale=3; $nf / $kf" | bc)"
printf '%-40s %11.2fs %11.2fs %9.2fx\n' "no-op  (the same again)" "$nn" "$kn" "$(echo "scale=3; $nn / $kn" | bc)"
nsf=$(median "${nix_ssh_fresh[@]}") ksf=$(median "${kiln_ssh_fresh[@]}") nsn=$(median "${nix_ssh_noop[@]}") ksn=$(median "${kiln_ssh_noop[@]}")
nsc=$(median "${nix_ssh_cold[@]}") ksc=$(median "${kiln_ssh_cold[@]}")
printf '%-40s %11.2fs %11.2fs %9.2fx\n' "W1 fresh (--eval-store auto, ssh-ng://)" "$nsf" "$ksf" "$(echo "scale=3; $nsf / $ksf" | bc)"
printf '%-40s %11.2fs %11.2fs %9.2fx\n' "W1, the server's first builds" "$nsc" "$ksc" "$(echo "scale=3; $nsc / $ksc" | bc)"
printf '%-40s %11.2fs %11.2fs %9.2fx\n' "W2 no-op (the same again)" "$nsn" "$ksn" "$(echo "scale=3; $nsn / $ksn" | bc)"
nmn=$(median "${nix_mux_noop[@]}") kmn=$(median "${kiln_mux_noop[@]}")
printf '%-40s %11.2fs %11.2fs %9.2fx\n' "W2, both multiplexed (client-config)" "$nmn" "$kmn" "$(echo "scale=3; $nmn / $kmn" | bc)"
printf '%-40s %11.2fs %11.2fs %9.2fx\n' "W2, Kiln multiplexed vs stock plain" "$nsn" "$kmn" "$(echo "scale=3; $nsn / $kmn" | bc)"
summary "W1 fresh remote-store build, $((layers * width)) derivations (ssh-ng://), server in service" "$nsf" "$ksf" s "time<=0.333"
summary "W1, a fresh kiln serve process's first builds" "$nsc" "$ksc" s -
summary "W2 no-op re-run of W1" "$nsn" "$ksn" s "time<=0.6"
summary "W2, both multiplexed (kiln client-config)" "$nmn" "$kmn" s -
if [ "$w3" = 1 ]; then
  w3n=$(median "${w3_nix[@]}") w3k=$(median "${w3_kiln[@]}") w3nm=$(median "${w3_nix_mux[@]}") w3km=$(median "${w3_kiln_mux[@]}")
  printf '%-40s %11.2fs %11.2fs %9.2fx\n' "W3 --builders ssh-ng://" "$w3n" "$w3k" "$(echo "scale=3; $w3n / $w3k" | bc)"
  printf '%-40s %11.2fs %11.2fs %9.2fx\n' "W3, both multiplexed" "$w3nm" "$w3km" "$(echo "scale=3; $w3nm / $w3km" | bc)"
  printf '%-40s %11.2fs %11.2fs %9.2fx\n' "W3, Kiln multiplexed vs stock plain" "$w3n" "$w3km" "$(echo "scale=3; $w3n / $w3km" | bc)"
  summary "W3 --builders ssh-ng://, one session per derivation" "$w3n" "$w3k" s "time<=0.333"
  summary "W3, both multiplexed" "$w3nm" "$w3km" s "time<1"
fi
echo "(kiln/nix above 1 means Kiln is faster)"
