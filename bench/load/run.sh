#!/usr/bin/env bash
# Load (20.5), in one run against one `kiln serve` (SSH and HTTP front doors, the embedded agent), while a hostile
# tenant's fork bomb, memory hog and log flood build alongside:
#  * N concurrent SSH sessions (`nix store ping` and `nix path-info` over ssh-ng://),
#  * M concurrent HTTP clients, each fetching a narinfo and its NAR,
#  * P clients pushing the same closure at once (`nix copy --to ssh-ng://`),
#  * K idle SSH sessions held open: Kiln's memory and sshd's own (its processes counted separately).
# Prints completions, failures, p50/p99 latencies and kiln serve's RSS (sampled every 100 ms; its peak). Figures
# only, no thresholds.
#
#   bench/load/run.sh [--sessions 200] [--http 1000] [--pushers 20] [--idle 100]
#
# Needs root, openssh-server, nix-bin (the host's Nix is the client), busybox-static and python3.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
sessions=200 http=1000 pushers=20 idle=100
while [ $# -gt 0 ]; do
  case "$1" in
    --sessions) sessions="$2"; shift 2 ;;
    --http) http="$2"; shift 2 ;;
    --pushers) pushers="$2"; shift 2 ;;
    --idle) idle="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
work="${KILN_BENCH_DIR:-/tmp/kiln-load-bench}"
rm -rf "$work" && mkdir -p "$work" && chmod 755 "$work"
export NIX_CONFIG=$'experimental-features = nix-command\nbuild-users-group = \nsubstituters = \nsandbox = false'
export NIX_REMOTE=
ulimit -n 65536 2> /dev/null || true

source "$repo/bench/lib/kiln.sh"
publish_kiln "$work"

ssh_port=$((20000 + RANDOM % 10000)) http_port=$((30000 + RANDOM % 10000))
"$kiln" serve --data "$work/kiln" --ssh-listen "127.0.0.1:$ssh_port" --http-listen "127.0.0.1:$http_port" \
  --build-memory 512MiB --build-processes 500 --timeout 120 > "$work/kiln.log" 2>&1 &
kiln_pid=$!
trap 'kill $(jobs -p) 2> /dev/null || true' EXIT
await_server "$kiln_pid" "$work/kiln.log" 'grep -q "ssh: listening" "$work/kiln.log"'
for who in good bad; do
  ssh-keygen -q -t ed25519 -N "" -C "$who" -f "$work/key-$who"
  "$kiln" account create "$who" --data "$work/kiln" > /dev/null
  "$kiln" key add "$who" "$(cat "$work/key-$who.pub")" --data "$work/kiln" > /dev/null
done
token="$("$kiln" token create good --permissions store:read --data "$work/kiln" | head -1)"
echo "[127.0.0.1]:$ssh_port $(cut -d' ' -f1,2 "$work/kiln/ssh/ssh_host_ed25519_key.pub")" > "$work/known_hosts"
opts() { echo "-p $ssh_port -i $work/key-$1 -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile=$work/known_hosts -o LogLevel=ERROR"; }
remote="ssh-ng://kiln@127.0.0.1"

# kiln serve's RSS every 100 ms, and the peak.
sample_rss "$kiln_pid" "$work/rss"
rss_now() { rss_mib "$kiln_pid"; }
idle_rss="$(rss_now)"

echo "making a closure of 100 paths (64 KiB to 2 MiB each) in a client store..."
python3 - "$work/src" <<'PY'
import os, sys
os.makedirs(sys.argv[1])
for i in range(100):
    with open(f"{sys.argv[1]}/f{i}", "wb") as f: f.write(os.urandom((64 << 10) * (1 + i % 32)))
PY
cat > "$work/closure.nix" <<NIX
let go = i: prev: if i >= 100 then prev else go (i + 1) (derivation {
  name = "load-\${toString i}"; system = "x86_64-linux"; builder = "/bin/sh"; inherit prev;
  data = builtins.path { path = $work/src + "/f\${toString i}"; };
}); in go 0 ""
NIX
client="local?root=$work/client"
drv="$(nix-instantiate --store "$client" "$work/closure.nix" 2> /dev/null)"
nix-store --store "$client" -qR "$drv" > "$work/closure.paths"

ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
pct() { sort -n | awk -v p="$1" '{ a[NR] = $1 } END { if (NR == 0) { print "-"; exit } i = int(NR * p / 100 + 0.999); if (i < 1) i = 1; print a[i] }'; }

echo "starting the hostile tenant: fork bomb, memory hog (4x its limit), log flood..."
mkdir -p "$work/bad/bb/bin" && cp /bin/busybox "$work/bad/bb/bin/busybox" && ln -s busybox "$work/bad/bb/bin/sh"
for kind in bomb hog flood; do
  case $kind in
    bomb) script='f() { f | f & }; f; sleep 2; while :; do sleep 600 & done' ;;
    hog) script='${bb}/bin/busybox awk '"'"'BEGIN { s = "0123456789abcdef"; for (i = 0; i < 31; i++) s = s s }'"'"' && mkdir $out' ;;
    flood) script='while :; do echo flooding the log with a line that goes on and on and on; done' ;;
  esac
  cat > "$work/bad/$kind.nix" <<NIX
let bb = ./bb; in derivation { name = "$kind-$RANDOM"; system = "x86_64-linux"; builder = "\${bb}/bin/sh";
  PATH = "\${bb}/bin"; args = [ "-c" ''$script'' ]; }
NIX
  ( NIX_SSHOPTS="$(opts bad)" nix-build --store "$remote" "$work/bad/$kind.nix" --no-out-link > "$work/bad-$kind.out" 2>&1 || true ) &
done
sleep 2

echo "$pushers clients push the same closure at once..."
export NIX_SSHOPTS; NIX_SSHOPTS="$(opts good)"
: > "$work/push.times"
pids=()
for i in $(seq 1 "$pushers"); do
  ( s=$(date +%s%N); if nix copy --from "$client" --to "$remote" --derivation "$drv" > "$work/push-$i.log" 2>&1; then ms $s >> "$work/push.times"; else echo "push $i failed: $(tail -1 "$work/push-$i.log")" >&2; fi ) &
  pids+=($!)
done
wait "${pids[@]}" || true
push_ok="$(wc -l < "$work/push.times")"

echo "$sessions concurrent SSH sessions (nix store ping, then nix path-info)..."
top="$(grep -v '\.drv$' "$work/closure.paths" | tail -1)"
session() {
  local s; s=$(date +%s%N)
  if nix store ping --store "$remote" > /dev/null 2>&1 && nix path-info --store "$remote" "$top" > /dev/null 2>&1; then ms $s; else echo FAIL; fi
}
export -f session ms; export remote top
seq 1 "$sessions" | xargs -P "$sessions" -I{} bash -c session > "$work/ssh.times" 2> /dev/null
ssh_ok="$(grep -vc FAIL "$work/ssh.times" || true)"

echo "$http concurrent HTTP clients (a narinfo and its NAR each)..."
python3 - "$http_port" "$token" "$http" "$work/closure.paths" > "$work/http.out" <<'PY'
import asyncio, random, sys, time
port, token, clients, paths = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), open(sys.argv[4]).read().split()
async def get(reader, writer, path):
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode()); await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n"); status = int(head.split()[1]); length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"): length = int(line.split(b":")[1])
    body = await reader.readexactly(length)
    return status, body
async def client(i):
    start = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        path = random.choice(paths).split("/")[-1][:32]
        status, body = await get(reader, writer, f"/{path}.narinfo")
        if status != 200: return None
        url = next(l.split(": ")[1] for l in body.decode().split("\n") if l.startswith("URL: "))
        status, nar = await get(reader, writer, "/" + url)
        writer.close()
        return (time.monotonic() - start) * 1000 if status == 200 else None
    except Exception:
        return None
async def main():
    results = await asyncio.gather(*(client(i) for i in range(clients)))
    ok = sorted(r for r in results if r is not None)
    p = lambda q: ok[min(len(ok) - 1, int(len(ok) * q))] if ok else float("nan")
    print(len(ok), f"{p(0.5):.0f}", f"{p(0.99):.0f}")
asyncio.run(main())
PY
read -r http_ok http_p50 http_p99 < "$work/http.out"

echo "$idle idle SSH sessions held open..."
before_idle="$(rss_now)"
for i in $(seq 1 "$idle"); do
  ( sleep 30 | ssh $(opts good) kiln@127.0.0.1 nix-daemon --stdio > /dev/null 2>&1 || true ) &
done
sleep 8
with_idle="$(rss_now)"
sshd_pids=($(pgrep -f "sshd.*$work/kiln/ssh|sshd: kiln" || true))
bridge_pids=($(pgrep -x kiln-bridge || true))
sshd_kib="$(pss_kib "${sshd_pids[@]}")" bridge_kib="$(pss_kib "${bridge_pids[@]}")" bridges="${#bridge_pids[@]}"

peak="$(sort -n "$work/rss" | tail -1)"
hostile=""
for kind in bomb hog flood; do hostile="$hostile $kind: $( (grep -o 'error: .*' "$work/bad-$kind.out" || echo "(no error: $(tail -1 "$work/bad-$kind.out"))") | head -1 | cut -c1-140)"$'\n'; done

echo
echo "Load on one kiln serve ($(nproc) cores; client $(nix --version))"
printf '%-52s %10s %10s %10s\n' "" "completed" "p50 ms" "p99 ms"
printf '%-52s %10s %10s %10s\n' "$pushers clients pushing one 100-path closure at once" "$push_ok/$pushers" "$(pct 50 < "$work/push.times")" "$(pct 99 < "$work/push.times")"
printf '%-52s %10s %10s %10s\n' "$sessions SSH sessions (store ping + path-info) at once" "$ssh_ok/$sessions" "$(grep -v FAIL "$work/ssh.times" | pct 50)" "$(grep -v FAIL "$work/ssh.times" | pct 99)"
printf '%-52s %10s %10s %10s\n' "$http HTTP clients (narinfo + NAR) at once" "$http_ok/$http" "$http_p50" "$http_p99"
echo
echo "kiln serve RSS: idle $idle_rss MiB, peak $((peak / 1024)) MiB; before $idle idle sessions $before_idle MiB, with them $with_idle MiB"
echo "with them: ${#sshd_pids[@]} sshd processes, $((sshd_kib / 1024)) MiB PSS in all; $bridges kiln-bridge processes, $((bridge_kib / 1024)) MiB PSS in all"
echo "the hostile tenant's builds:"
printf '%s' "$hostile"
