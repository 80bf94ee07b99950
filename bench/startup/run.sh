#!/usr/bin/env bash
# Issue 21's start-up figures: how long the kiln commands an operator runs often take from exec to exit, next to a C
# program's start (/bin/true) as the anchor, measured the same way (python3's subprocess, stdout to /dev/null):
#  * `kiln key list ACCOUNT` and `kiln token create ACCOUNT` against a stopped installation's database, and
#    `kiln account list` beside them;
#  * `kiln nix dump-path` of a small file (what `nix-store --dump` is to Nix), next to `nix-store --dump` too.
#  * with a published layout (kiln native, kiln-managed beside it), the same through the managed kiln, and a command
#    the native kiln hands to the managed one.
#
#   bench/startup/run.sh [--runs 20]
#
# Needs nix-bin and python3. Medians of RUNS runs each; figures only, no thresholds.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
runs=20
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
work="${KILN_BENCH_DIR:-/tmp/kiln-startup-bench}"
rm -rf "$work" && mkdir -p "$work"
source "$repo/bench/lib/kiln.sh"
publish_kiln "$work"

"$kiln" account create ops --data "$work/kiln" > /dev/null
ssh-keygen -q -t ed25519 -N "" -C ops -f "$work/id"
"$kiln" key add ops "$(cat "$work/id.pub")" --data "$work/kiln" > /dev/null
echo "hello" > "$work/small"

# median milliseconds of RUNS executions of the command
time_ms() {
  python3 - "$runs" "$@" <<'PY'
import subprocess, sys, time
runs, cmd = int(sys.argv[1]), sys.argv[2:]
times = []
for _ in range(runs + 1):
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    times.append((time.perf_counter() - start) * 1000)
times = sorted(times[1:])  # the first run warms the page cache
n = len(times)
print(f"{(times[n // 2] if n % 2 else (times[n // 2 - 1] + times[n // 2]) / 2):.1f}")
PY
}

anchor=$(time_ms /bin/true)
keys=$(time_ms "$kiln" key list ops --data "$work/kiln")
tokens=$(time_ms "$kiln" token create ops --permissions store:read --data "$work/kiln")
accounts=$(time_ms "$kiln" account list --data "$work/kiln")
dump=$(time_ms "$kiln" nix dump-path "$work/small")
nixdump=$(time_ms nix-store --dump "$work/small")
# A publish lays out kiln as the native kiln (NativeAOT) and the managed one beside it as kiln-managed: the same
# commands through the managed kiln, for the difference (and what every command the native kiln hands on costs).
managed_rows=()
if [ -x "$(dirname "$kiln")/kiln-managed" ]; then
  managed="$(dirname "$kiln")/kiln-managed"
  managed_rows=("managed kiln key list:$(time_ms "$managed" key list ops --data "$work/kiln")"
    "managed kiln token create:$(time_ms "$managed" token create ops --permissions store:read --data "$work/kiln")"
    "managed kiln account list:$(time_ms "$managed" account list --data "$work/kiln")"
    "managed kiln --version:$(time_ms "$managed" --version)"
    "kiln --version (handed to managed):$(time_ms "$kiln" --version)")
fi

echo
echo "start-up, exec to exit (median of $runs; $(nproc) cores)"
printf '%-40s %10s %10s\n' "" "ms" "vs /bin/true"
for row in "/bin/true (a C program's start):$anchor" "nix-store --dump (small file):$nixdump" "kiln key list:$keys" "kiln token create:$tokens" "kiln account list:$accounts" "kiln nix dump-path (small file):$dump" "${managed_rows[@]}"; do
  printf '%-40s %10s %10s\n' "${row%%:*}" "${row##*:}" "$(echo "scale=1; ${row##*:} / $anchor" | bc)x"
done
summary "start-up: kiln key list vs /bin/true" "$anchor" "$keys" ms "time<=2"
summary "start-up: kiln token create vs /bin/true" "$anchor" "$tokens" ms "time<=2"
summary "start-up: kiln nix dump-path vs nix-store --dump" "$nixdump" "$dump" ms "time<=2"
rm -rf "$work"
