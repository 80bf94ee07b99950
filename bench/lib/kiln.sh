# Sourced by bench scripts: publish_kiln WORK publishes kiln with ReadyToRun (as it would be installed) into
# WORK/kiln-bin and sets kiln to its executable; when KILN_BENCH_KILN names one already published (bench/speed/run.sh
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
