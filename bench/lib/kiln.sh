# Sourced by bench scripts: publish_kiln WORK publishes kiln with ReadyToRun (as it would be installed: kiln the native
# program, the managed one beside it as kiln-managed) into WORK/kiln-bin and sets kiln to its executable; when KILN_BENCH_KILN names one already published (bench/speed/run.sh
# publishes once for all), that one. Also brings in median and summary (stats.sh), and tiny_paths and settle for
# warming a server up.
source "$(dirname "${BASH_SOURCE[0]}")/stats.sh"
publish_kiln() {
  if [ -n "${KILN_BENCH_KILN:-}" ]; then
    kiln="$KILN_BENCH_KILN"
    return
  fi
  echo "building kiln (ReadyToRun)..."
  dotnet publish "$repo/src/Kiln.Cli" -c Release -r linux-x64 --self-contained false -p:PublishReadyToRun=true \
    -o "$1/kiln-bin" -v quiet -nologo > /dev/null
  kiln="$1/kiln-bin/kiln"
}

# await_server PID LOG CONDITION: evaluates CONDITION (a shell test, in the caller's variables) every 0.1 s until it
# holds; stops the bench with the server's last log lines when the server PID has exited or 120 s have passed (a
# server without sshd, say, runs on without ever listening for SSH, and a bench once waited for it for good).
await_server() {
  local pid="$1" log="$2" condition="$3" tries=1200
  until eval "$condition"; do
    if ! kill -0 "$pid" 2> /dev/null || [ $((tries -= 1)) -le 0 ]; then
      echo "kiln serve did not come up ($(kill -0 "$pid" 2> /dev/null && echo "still waiting after 120 s" || echo "it exited")); the end of $log:" >&2
      tail -n 8 "$log" >&2
      exit 1
    fi
    sleep 0.1
  done
}

# tiny_paths STORE N TAG: N small text files added to the Nix store STORE in one evaluation (builtins.toFile), their
# store paths printed one per line: unrelated paths to warm a server up with.
tiny_paths() {
  nix-instantiate --store "$1" --read-write-mode --eval --strict --json -E \
    "map (i: builtins.toFile \"warm-up-\${toString i}\" \"$3 \${toString i}\") (builtins.genList (i: i) $2)" |
    python3 -c 'import json, sys; print("\n".join(json.load(sys.stdin)))'
}

# settle PID…: waits (at most 30 s) until the processes have been all but idle for half a second: a server's runtime
# keeps compiling the code a warm-up made hot for a while after it, and an S3 server finishing what a push started,
# on the cores the figures that follow would share.
settle() {
  local before now tries=60
  ticks() { local p sum=0; for p in "$@"; do sum=$((sum + $(awk '{ print $14 + $15 }' "/proc/$p/stat" 2> /dev/null || echo 0))); done; echo $sum; }
  before=$(ticks "$@")
  while [ $((tries -= 1)) -gt 0 ]; do
    sleep 0.5
    now=$(ticks "$@")
    [ $((now - before)) -gt 2 ] || return 0
    before=$now
  done
}

# discard DIR…: takes directories out of the way as rm -rf would, but frees none of their files until the bench ends
# (they move into a .discarded directory beside them, which goes with the work directory). On ext4 without a journal
# (these machines' root filesystem) the inode allocator passes over every inode freed in the last 60 s (360 s while
# its inode table block is unwritten), one at a time from the start of the group, for each file it creates: right
# after a store of ~28,000 files was deleted, creating as many files took 18 s instead of 0.7 s — 65% of a push's CPU
# went to that scan, in whichever side of a comparison came after a deletion.
discard() {
  local dir grave
  for dir in "$@"; do
    [ -e "$dir" ] || continue
    grave="$(dirname "$dir")/.discarded"
    mkdir -p "$grave"
    mv "$dir" "$(mktemp -d -p "$grave")/"
  done
}
