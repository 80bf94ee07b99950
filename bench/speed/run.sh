#!/usr/bin/env bash
# Issue 21 in one run: every figure side by side with its stock anchor, each the median of at least three runs, and
# at the end one table of the ratios against the issue's targets.
#
#   bench/speed/run.sh [--rounds 3] [--jobs 8] [--no-w3] [--nar-mib 5120]
#
# In order (each script's own output in full, then the table):
#  * bench/ssh      SSH session set-up: Kiln's sshd + auth-keys + kiln-bridge vs a plain sshd forcing nix-daemon --stdio
#  * bench/builds   W1 fresh remote-store build and W2 no-op (200 derivations over ssh-ng://), W3 --builders ssh-ng://,
#                   without and with multiplexing, vs stock nix-daemon with its sandbox on behind its own sshd
#  * bench/store    W4 push and W5 pull over ssh-ng:// vs the same nix-daemon, with the ssh and SHA-256 anchors
#  * bench/http     W6 the HTTP binary cache vs nginx serving the same files
#  * bench/memory   kiln serve's RSS (sampled every 100 ms) pushing one 5 GiB NAR over ssh-ng:// and over http://,
#                   and with 100 idle SSH sessions
#  * bench/startup  kiln commands' start-up vs a C program's
# kiln is published once (ReadyToRun, with the native bridge, launcher and kiln, as installed) and shared by all. Work
# directories go under KILN_BENCH_DIR (default /var/tmp/kiln-speed; this VM's root file system is ext4 without a
# journal, whose inode allocation slows right after large deletes: see bench/README.md for measuring on a journaled
# loop image), but for the memory run's large NAR, which goes to /var/tmp. The whole output is also written to
# bench/results/speed-DATE.txt (the closing note's run is kept there). Needs root, nix-bin, openssh-server,
# bubblewrap, python3 (nginx is installed if missing).
# About 45 minutes on 2 cores with the defaults. Figures only, no thresholds.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
rounds=3 jobs=8 w3=--w3 nar_mib=5120
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    --no-w3) w3=""; shift ;;
    --nar-mib) nar_mib="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
base="${KILN_BENCH_DIR:-/var/tmp/kiln-speed}"
mkdir -p "$base" "$repo/bench/results"
out="$repo/bench/results/speed-$(date -u +%Y%m%dT%H%M%SZ).txt"
export KILN_BENCH_SUMMARY="$base/summary.tsv"
: > "$KILN_BENCH_SUMMARY"

{
  echo "bench/speed/run.sh at $(git -C "$repo" rev-parse --short HEAD) on $(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) cores," \
    "$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo); $(nix --version); $(ssh -V 2>&1 | cut -d, -f1); rounds $rounds"
  echo "publishing kiln (ReadyToRun)..."
  dotnet publish "$repo/src/Kiln.Cli" -c Release -r linux-x64 --self-contained false -p:PublishReadyToRun=true \
    -o "$base/kiln-bin" -v quiet -nologo > /dev/null
  export KILN_BENCH_KILN="$base/kiln-bin/kiln"
  [ -x "$base/kiln-bin/native/kiln-bridge" ] || echo "note: kiln was published without the native bridge (clang or zlib1g-dev missing)"
  [ -x "$base/kiln-bin/native/kiln-launch" ] || echo "note: kiln was published without kiln-launch (no C compiler)"

  run() { # name work-directory script args…
    echo
    echo "=== $1 ==="
    # One that fails is reported and the others still run.
    KILN_BENCH_DIR="$2" "${@:3}" || echo "($1: failed with exit status $?)"
    # Freed only at the end (see discard in bench/lib/kiln.sh): the next bench's files would land where these were.
    mkdir -p "$base/.discarded" && mv "${2:?}" "$(mktemp -d -p "$base/.discarded")/" 2> /dev/null || rm -rf "$2"
  }
  run ssh "$base/ssh" "$repo/bench/ssh/run.sh" --connections 30
  run builds "$base/builds" "$repo/bench/builds/run.sh" --jobs "$jobs" --rounds "$rounds" $w3
  run store "$base/store" "$repo/bench/store/run.sh" --rounds "$rounds"
  run http "$base/http" "$repo/bench/http/run.sh" --rounds "$rounds"
  run memory /var/tmp/kiln-memory-bench "$repo/bench/memory/run.sh" --size-mib "$nar_mib"
  run startup "$base/startup" "$repo/bench/startup/run.sh" --runs 20

  echo
  echo "=== issue 21: every figure against its target (medians; ratio = Kiln / stock anchor) ==="
  awk -F'\t' '
    function verdict(goal, ratio, kiln,   g, bound) {
      if (goal == "-") return ""
      split(goal, g, /<=|>=|</); bound = g[2]
      if (goal ~ /^time<=/) return (ratio + 0 <= bound + 0 ? "met" : "not met")
      if (goal ~ /^time</) return (ratio + 0 < bound + 0 ? "met" : "not met")
      if (goal ~ /^rate>=/) return (ratio + 0 >= bound + 0 ? "met" : "not met")
      if (goal ~ /^max<=/) return (kiln + 0 <= bound + 0 ? "met" : "not met")
      return "?"
    }
    function fmt(v) {
      if (v == "-" || v == "") return v
      v += 0
      return v < 10 ? sprintf("%.3f", v) : v < 1000 ? sprintf("%.1f", v) : sprintf("%.0f", v)
    }
    BEGIN { printf "%-66s %10s %10s %7s %8s  %-15s %s\n", "", "stock", "Kiln", "unit", "ratio", "goal", "" }
    {
      ratio = ($2 != "-" && $2 + 0 > 0) ? sprintf("%.2f", $3 / $2) : "-"
      goal = $5 == "-" ? "" : $5
      sub(/^time<=/, "ratio <= ", goal); sub(/^time</, "ratio < ", goal); sub(/^rate>=/, "ratio >= ", goal); sub(/^max<=/, "Kiln <= ", goal)
      printf "%-66s %10s %10s %7s %8s  %-15s %s\n", $1, fmt($2), fmt($3), $4, ratio, goal, verdict($5, ratio, $3)
    }' "$KILN_BENCH_SUMMARY"
} 2>&1 | tee "$out"
rm -rf "$base/.discarded"
echo "(written to $out)"
