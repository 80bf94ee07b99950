#!/usr/bin/env bash
# Issue 21's memory figures: kiln serve's resident memory (VmRSS, sampled every 100 ms) and that of Kiln's other
# processes, in one run:
#  * idle, once started;
#  * pushing one NAR of SIZE MiB (5 GiB by default: incompressible bytes in one file) with `nix copy --to ssh-ng://`,
#    the peak above idle;
#  * the same NAR with `nix copy --to http://…?compression=none` (a netrc token with store:write), on a fresh server,
#    the peak above idle;
#  * N idle SSH sessions (100 by default, each a `nix-daemon --stdio` session waiting for its client): kiln serve's
#    growth plus the proportional set size (PSS) of the kiln-bridge processes; sshd's own processes apart.
# With --s3 (issue 16), the NAR goes through a bucket instead: kiln serve with its blobs in radosgw (tests/radosgw,
# objects in memory: SIZE + 1 GiB of RAM) and a 1 GiB local blob cache, smaller than the NAR; the push over ssh-ng://,
# then a pull of it over http:// into an empty client store (read from the bucket), each with its peak above idle.
#
#   bench/memory/run.sh [--size-mib 5120] [--sessions 100] [--s3]
#
# Needs root, nix-bin and openssh-server; about three times SIZE free in KILN_BENCH_DIR (default
# /var/tmp/kiln-memory-bench, removed at the end). Figures only, no thresholds.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
size_mib=5120 sessions=100 s3=
while [ $# -gt 0 ]; do
  case "$1" in
    --size-mib) size_mib="$2"; shift 2 ;;
    --sessions) sessions="$2"; shift 2 ;;
    --s3) s3=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
work="${KILN_BENCH_DIR:-/var/tmp/kiln-memory-bench}"
rm -rf "$work" && mkdir -p "$work" && chmod 755 "$work"
export NIX_CONFIG=$'experimental-features = nix-command\nbuild-users-group = \nsubstituters = \nsandbox = false'
export NIX_REMOTE=
source "$repo/bench/lib/kiln.sh"
publish_kiln "$work"

echo "making one $size_mib MiB file in a client store..."
head -c $((size_mib * 1024 * 1024)) /dev/urandom > "$work/large"
large="$(nix-store --store "local?root=$work/source" --add "$work/large")"
rm -f "$work/large"

ssh-keygen -q -t ed25519 -N "" -C bench -f "$work/id"
blobs=()
if [ -n "$s3" ]; then
  s3_port=$((50000 + RANDOM % 10000)) s3_key=BENCHACCESSKEY000001 s3_secret=bench-secret-0123456789abcdefghijklmnopq
  echo "starting radosgw (objects in memory)..."
  trap '"$repo/tests/radosgw/stop.sh" "$work/rgw"' EXIT
  RGW_MEMSTORE_MIB=$((size_mib + 1024)) RGW_ACCESS_KEY=$s3_key RGW_SECRET_KEY=$s3_secret "$repo/tests/radosgw/start.sh" "$work/rgw" "$s3_port" > /dev/null
  curl -sf -X PUT --aws-sigv4 aws:amz:us-east-1:s3 --user "$s3_key:$s3_secret" -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' "http://127.0.0.1:$s3_port/bench" > /dev/null
  printf '[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n' "$s3_key" "$s3_secret" > "$work/s3.credentials"
  blobs=(--blobs "s3://bench/kiln?endpoint=http%3A%2F%2F127.0.0.1%3A$s3_port&credentials_file=$work/s3.credentials" --blob-cache-size 1GiB)
fi
ssh_port=$((20000 + RANDOM % 10000)) http_port=$((30000 + RANDOM % 10000))
start_kiln() {
  rm -rf "$work/kiln"
  "$kiln" serve --data "$work/kiln" --ssh-listen "127.0.0.1:$ssh_port" --http-listen "127.0.0.1:$http_port" "${blobs[@]}" > "$work/kiln.log" 2>&1 &
  kiln_pid=$!
  await_server "$kiln_pid" "$work/kiln.log" 'grep -q "ssh: listening" "$work/kiln.log" 2> /dev/null && curl -sf "http://127.0.0.1:$http_port/nix-cache-info" > /dev/null'
  "$kiln" account create bench --data "$work/kiln" > /dev/null
  "$kiln" key add bench "$(cat "$work/id.pub")" --data "$work/kiln" > /dev/null
  printf 'machine 127.0.0.1\nlogin bench\npassword %s\n' "$("$kiln" token create bench --permissions store:read,store:write --data "$work/kiln" | head -1)" > "$work/netrc"
  echo "[127.0.0.1]:$ssh_port $(cut -d' ' -f1,2 "$work/kiln/ssh/ssh_host_ed25519_key.pub")" > "$work/known_hosts"
  sleep 2
  sample_rss "$kiln_pid" "$work/rss"
  sampler=$!
}
stop_kiln() { kill -TERM "$kiln_pid"; wait "$kiln_pid" || true; wait "$sampler" 2> /dev/null || true; }
# peak_mib [FROM]: the highest sample (from sample FROM on, counting from 1)
peak_mib() { tail -n +"${1:-1}" "$work/rss" | sort -n | tail -1 | awk '{ printf "%d", $1 / 1024 }'; }
ssh_opts="-p $ssh_port -i $work/id -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile=$work/known_hosts -o LogLevel=ERROR"
seconds() { local s e; s=$(date +%s.%N); "$@" > "$work/last.log" 2>&1 || { cat "$work/last.log" >&2; exit 1; }; e=$(date +%s.%N); echo "$e - $s" | bc; }

start_kiln
idle=$(rss_mib "$kiln_pid")
ssh_time=$(seconds env NIX_SSHOPTS="$ssh_opts" nix copy --from "local?root=$work/source" --to "ssh-ng://kiln@127.0.0.1" "$large")
ssh_peak=$(peak_mib)

if [ -n "$s3" ]; then
  from=$(($(wc -l < "$work/rss") + 1))
  pull_time=$(seconds nix copy --from "http://127.0.0.1:$http_port" --to "local?root=$work/pull" --option netrc-file "$work/netrc" --no-check-sigs "$large")
  pull_peak=$(peak_mib "$from")
  cmp -s "$work/source$large" "$work/pull$large" || { echo "the NAR pulled back is not the one pushed" >&2; exit 1; }
  stop_kiln
  echo
  echo "kiln serve memory with its blobs in S3 (radosgw $(radosgw --version | awk '{ print $3 }'), a 1 GiB blob cache; VmRSS; $(nproc) cores; client: $(nix --version))"
  printf '%-66s %10s\n' "idle, once started" "$idle MiB"
  printf '%-66s %10s\n' "pushing one $size_mib MiB NAR over ssh-ng:// into S3 (${ssh_time}s): peak" "$ssh_peak MiB"
  printf '%-66s %10s\n' "pulling it over http:// from S3 (${pull_time}s): peak" "$pull_peak MiB"
  "$repo/tests/radosgw/stop.sh" "$work/rgw"
  rm -rf "$work"
  exit 0
fi

echo "$sessions idle SSH sessions held open..."
before=$(rss_mib "$kiln_pid")
# (In a subshell of their own, whose job-control messages go nowhere when they are ended.)
( for _ in $(seq 1 "$sessions"); do
    ( sleep 40 | ssh $ssh_opts kiln@127.0.0.1 nix-daemon --stdio > /dev/null 2>&1 || true ) &
  done
  wait ) > /dev/null 2>&1 &
holders=$!
# Until every session's bridge is up (a hundred logins at once take a while on two cores; a count taken too early would
# flatter the figure), then a moment for them to settle.
# (The login user's: sshd's AuthorizedKeysCommand runs kiln-bridge --auth-keys as root, briefly, for each login.)
for _ in $(seq 1 600); do [ "$(pgrep -xc -u kiln kiln-bridge || true)" -ge "$sessions" ] && break; sleep 0.1; done
sleep 2
with=$(rss_mib "$kiln_pid")
bridge_pids=($(pgrep -x -u kiln kiln-bridge || true))
sshd_pids=($(pgrep -f "sshd.*$work/kiln/ssh|sshd: kiln" || true))
bridge_mib=$(( $(pss_kib "${bridge_pids[@]}") / 1024 )) sshd_mib=$(( $(pss_kib "${sshd_pids[@]}") / 1024 ))
stop_kiln
pkill -f "^sleep 40$" 2> /dev/null || true
wait "$holders" 2> /dev/null || true

start_kiln
http_idle=$(rss_mib "$kiln_pid")
http_time=$(seconds nix copy --from "local?root=$work/source" --to "http://127.0.0.1:$http_port?compression=none" --option netrc-file "$work/netrc" "$large")
http_peak=$(peak_mib)
stop_kiln

echo
echo "kiln serve memory (VmRSS; $(nproc) cores; client: $(nix --version))"
printf '%-58s %10s\n' "idle, once started" "$idle MiB"
printf '%-58s %10s\n' "pushing one $size_mib MiB NAR over ssh-ng:// (${ssh_time}s): peak" "$ssh_peak MiB"
printf '%-58s %10s\n' "pushing it over http:// (${http_time}s): peak" "$http_peak MiB"
printf '%-58s %10s\n' "$sessions idle SSH sessions: kiln serve before / with them" "$before / $with MiB"
printf '%-58s %10s\n' "  their ${#bridge_pids[@]} kiln-bridge processes (PSS)" "$bridge_mib MiB"
printf '%-58s %10s\n' "  their ${#sshd_pids[@]} sshd processes (PSS, not Kiln's)" "$sshd_mib MiB"
summary "memory: one ${size_mib} MiB NAR pushed over ssh-ng://, peak above idle" - $((ssh_peak - idle)) MiB "max<=150"
summary "memory: one ${size_mib} MiB NAR pushed over http://, peak above idle" - $((http_peak - http_idle)) MiB "max<=150"
summary "memory: $sessions idle SSH sessions, kiln serve + bridges" - $((with + bridge_mib)) MiB "max<=200"
summary "memory: kiln serve idle" - "$idle" MiB -
rm -rf "$work"
