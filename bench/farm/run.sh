#!/usr/bin/env bash
# The farm's figures (issue 15), in one run, with the host's Nix 2.8 building through Kiln's socket:
#
#   bench/farm/run.sh [--derivations 200] [--rounds 1] [--only throughput|overhead]
#
# 1. Throughput: DERIVATIONS independent derivations that each sleep 1 s (so the figure does not depend on this
#    machine's cores) built by `kiln serve --local-slots 0` with 1 agent x 4 slots, then with 3 agents x 4 slots
#    (each agent a `kiln agent` process with its own data directory, dialled in over HTTP on loopback).
# 2. Per-build overhead of a remote agent: the no-work DAG of bench/builds (10 layers of 20, 3 deps each) built by
#    the embedded agent (4 slots) and by one remote agent (4 slots) behind a pure coordinator, each twice: from a cold
#    start, then warm (a second DAG of the same shape, as a long-running service builds).
# Each measurement starts from empty servers. Needs root, nix-bin and bubblewrap. Figures only, no thresholds.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
derivations=200 rounds=1 only=
while [ $# -gt 0 ]; do
  case "$1" in
    --derivations) derivations="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
work="${KILN_BENCH_DIR:-/tmp/kiln-farm-bench}"
rm -rf "$work" && mkdir -p "$work/bb/bin"
export NIX_CONFIG=$'experimental-features = nix-command\nbuild-users-group = \nsubstituters = '
export NIX_REMOTE=

source "$repo/bench/lib/kiln.sh"
publish_kiln "$work"
cp /bin/busybox "$work/bb/bin/busybox" && ln -s busybox "$work/bb/bin/sh"

write_sleepers() { # SALT
  cat > "$work/sleep.nix" <<NIX
let bb = ./bb; mk = i: derivation {
  name = "sleep-\${toString i}"; system = "x86_64-linux"; builder = "\${bb}/bin/sh"; PATH = "\${bb}/bin";
  args = [ "-c" "echo $1 \${toString i}; sleep 1; mkdir \$out" ];
}; in builtins.genList mk $derivations
NIX
}
write_dag() { # SALT FILE
  cat > "$work/$2" <<NIX
let
  bb = ./bb;
  mk = l: i: deps: derivation {
    name = "dag-\${toString l}-\${toString i}"; system = "x86_64-linux"; builder = "\${bb}/bin/sh"; inherit deps;
    salt = "$1";
    args = [ "-c" "echo building layer \${toString l} item \${toString i}; \${bb}/bin/busybox mkdir \$out; echo \${toString l}-\${toString i} > \$out/id; for d in \$deps; do echo \$d >> \$out/deps; done" ];
  };
  pick = l: i: k: builtins.elemAt (builtins.elemAt layers (l - 1)) ((i + k * 7) - ((i + k * 7) / 20) * 20);
  layers = builtins.genList (l: builtins.genList (i: mk l i (if l == 0 then [] else map (pick l i) [ 0 1 2 ])) 20) 10;
in builtins.elemAt layers 9
NIX
}

port=$((20000 + RANDOM % 10000))
agent_pids=()
start_server() { # LOCAL_SLOTS
  discard "$work/server" "$work"/agent-*
  "$kiln" serve --data "$work/server" --local-slots "$1" --max-jobs 4 --cores 1 --ssh-listen none --http-listen "127.0.0.1:$port" > "$work/server.log" 2>&1 &
  server_pid=$!
  await_server "$server_pid" "$work/server.log" '[ -S "$work/server/daemon.sock" ] && grep -q "http: listening" "$work/server.log"'
  "$kiln" agent-token create bench --data "$work/server" > "$work/token"
}
start_agents() { # COUNT SLOTS
  for i in $(seq 1 "$1"); do
    "$kiln" agent --server "http://127.0.0.1:$port" --token "$work/token" --data "$work/agent-$i" --name "agent-$i" --slots "$2" --cores 1 > "$work/agent-$i.log" 2>&1 &
    agent_pids+=($!)
    while ! grep -q "agent agent-$i connected" "$work/server.log"; do sleep 0.1; done
  done
}
stop_all() {
  for pid in "${agent_pids[@]}"; do kill -TERM "$pid" 2> /dev/null || true; wait "$pid" 2> /dev/null || true; done
  agent_pids=()
  kill -TERM "$server_pid"; wait "$server_pid" || true
}
keep_logs() { # NAME: the logs of the last measurement, kept under $work/logs for a look afterwards
  mkdir -p "$work/logs"
  for log in "$work"/server.log "$work"/agent-*.log; do [ -e "$log" ] && cp "$log" "$work/logs/$1.$(basename "$log")"; done
  return 0
}
seconds() {
  local start end
  start=$(date +%s.%N)
  if ! "$@" > "$work/last.log" 2>&1; then cat "$work/last.log" >&2; exit 1; fi
  end=$(date +%s.%N); echo "$end - $start" | bc
}
# The build phase: from the first build an agent began to the last it finished (its log's timestamps) — the
# farm's own throughput, without the client's evaluation and upload, which no number of agents changes.
build_phase() { # AGENT_LOG...
  local stamps first last
  stamps="$(grep -hE '\[502[56]\]' "$@" | awk '{print $1}' | sort)"
  first="$(date -d "$(head -1 <<< "$stamps")" +%s.%N)" last="$(date -d "$(tail -1 <<< "$stamps")" +%s.%N)"
  echo "$last - $first" | bc
}
build() { nix build --store "unix://$work/server/daemon.sock?root=$work/server/root" -f "$1" --no-link; }
best() { printf '%s\n' "$@" | sort -n | head -1; }

one=() three=() one_phase=() three_phase=() embedded=() remote=() embedded_cold=() remote_cold=()
for round in $(seq 1 "$rounds"); do
  salt="$(date +%s%N)"
  if [ "$only" != overhead ]; then
    write_sleepers "$salt"
    start_server 0; start_agents 1 4; one+=("$(seconds build "$work/sleep.nix")"); one_phase+=("$(build_phase "$work"/agent-1.log)"); stop_all
    start_server 0; start_agents 3 4; three+=("$(seconds build "$work/sleep.nix")"); three_phase+=("$(build_phase "$work"/agent-[123].log)")
    per_agent="$(for i in 1 2 3; do printf 'agent-%s: %s  ' "$i" "$(grep -c 'building /nix/store' "$work/agent-$i.log" || true)"; done)"
    stop_all
  fi
  if [ "$only" != throughput ]; then
    # Each server (and agent) builds two DAGs of the same shape: the first from a cold start (the runtime compiles
    # the code it runs as it first runs it, once per process: a remote agent is a second process to warm up), the
    # second as a long-running service does.
    write_dag "$salt-cold" cold.nix; write_dag "$salt" dag.nix
    start_server 4; embedded_cold+=("$(seconds build "$work/cold.nix")"); embedded+=("$(seconds build "$work/dag.nix")"); stop_all
    keep_logs "embedded-$round"
    start_server 0; start_agents 1 4; remote_cold+=("$(seconds build "$work/cold.nix")"); remote+=("$(seconds build "$work/dag.nix")"); stop_all
    keep_logs "remote-$round"
  fi
done

echo
if [ "$only" != overhead ]; then
  o=$(best "${one[@]}") t=$(best "${three[@]}") op=$(best "${one_phase[@]}") tp=$(best "${three_phase[@]}")
  echo "$derivations derivations sleeping 1 s each; best of $rounds; client: $(nix --version); $(nproc) cores"
  printf '%-52s %10.2fs\n' "1 agent x 4 slots" "$o"
  printf '%-52s %10.2fs   (%s)\n' "3 agents x 4 slots" "$t" "$per_agent"
  printf '%-52s %10.2fx\n' "end to end (evaluation and upload included), 3 / 1" "$(echo "scale=3; $o / $t" | bc)"
  printf '%-52s %10.2fs\n' "build phase, 1 agent (first build began → last ended)" "$op"
  printf '%-52s %10.2fs\n' "build phase, 3 agents" "$tp"
  printf '%-52s %10.2fx\n' "throughput (build phase), 3 agents / 1 agent" "$(echo "scale=3; $op / $tp" | bc)"
  echo
fi
[ "$only" = throughput ] && exit 0
e=$(best "${embedded[@]}") r=$(best "${remote[@]}") ec=$(best "${embedded_cold[@]}") rc=$(best "${remote_cold[@]}")
echo "200-derivation no-work DAG (10 layers of 20), 4 slots; best of $rounds"
printf '%-52s %10.2fs   (each round: %s)\n' "embedded agent (kiln serve --local-slots 4)" "$e" "${embedded[*]}"
printf '%-52s %10.2fs   (each round: %s)\n' "remote agent (--local-slots 0, 1 kiln agent)" "$r" "${remote[*]}"
printf '%-52s %10.2fx\n' "remote / embedded (per build, processes warm)" "$(echo "scale=3; $r / $e" | bc)"
printf '%-52s %10.2fs   (each round: %s)\n' "embedded, first DAG after start" "$ec" "${embedded_cold[*]}"
printf '%-52s %10.2fs   (each round: %s)\n' "remote, first DAG after start" "$rc" "${remote_cold[*]}"
printf '%-52s %10.2fx\n' "remote / embedded, first DAG after start" "$(echo "scale=3; $rc / $ec" | bc)"
