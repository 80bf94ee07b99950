#!/usr/bin/env bash
# The SSH front door, in one run:
#  * latency: from starting `ssh` to the first protocol byte (the worker handshake's reply), through Kiln's sshd,
#    auth-keys and kiln-bridge, and through a plain sshd whose forced command is stock `nix-daemon --stdio`
#    (same machine, same ssh client; median and quartiles of N connections each);
#  * `nix copy --from ssh-ng://` of a 1,000-path closure the client already has (NixOS/nix#6950 measured 46 s
#    against a remote service), and of the same closure into an empty store.
#
#   bench/ssh/run.sh [--connections 50] [--paths 1000]
#
# Needs root, openssh-server and nix-bin (the host's Nix 2.8 is the client). Figures only, no thresholds.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
connections=50 paths=1000
while [ $# -gt 0 ]; do
  case "$1" in
    --connections) connections="$2"; shift 2 ;;
    --paths) paths="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
work="${KILN_BENCH_DIR:-/tmp/kiln-ssh-bench}"
rm -rf "$work" && mkdir -p "$work" && chmod 755 "$work"
export NIX_CONFIG=$'experimental-features = nix-command\nbuild-users-group = \nsubstituters = \nsandbox = false'
export NIX_REMOTE=

source "$repo/bench/lib/kiln.sh"
publish_kiln "$work"

kiln_port=$((20000 + RANDOM % 10000)) plain_port=$((30000 + RANDOM % 10000))
"$kiln" serve --data "$work/kiln" --ssh-listen "127.0.0.1:$kiln_port" --http-listen none > "$work/kiln.log" 2>&1 &
kiln_pid=$!
ssh-keygen -q -t ed25519 -N "" -C bench -f "$work/id"
await_server "$kiln_pid" "$work/kiln.log" 'grep -q "ssh: listening" "$work/kiln.log"'
"$kiln" account create bench --data "$work/kiln" > /dev/null
"$kiln" key add bench "$(cat "$work/id.pub")" --data "$work/kiln" > /dev/null

# The comparison: the same host key and client, root logging in with a forced `nix-daemon --stdio`.
source "$repo/bench/lib/plain-sshd.sh"
plain_sshd "$work/plain" "$plain_port" "$work/kiln/ssh/ssh_host_ed25519_key" "nix-daemon --stdio" "$(cat "$work/id.pub")"
/usr/sbin/sshd -D -e -f "$work/plain/sshd_config" 2> "$work/plain/sshd.log" &
plain_pid=$!
trap 'kill $kiln_pid $plain_pid 2> /dev/null || true' EXIT
sleep 1

echo "[127.0.0.1]:$kiln_port $(cut -d' ' -f1,2 "$work/kiln/ssh/ssh_host_ed25519_key.pub")" > "$work/known_hosts"
echo "[127.0.0.1]:$plain_port $(cut -d' ' -f1,2 "$work/kiln/ssh/ssh_host_ed25519_key.pub")" >> "$work/known_hosts"
ssh_opts=(-i "$work/id" -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes -o "UserKnownHostsFile=$work/known_hosts" -o LogLevel=ERROR)

# µs from starting ssh to reading the worker handshake's first 16 bytes (magic 2 and the server's version); stdin
# stays open (as a client's does) until the reply is in.
first_byte() { # user port
  local start
  start=$(date +%s%N)
  { printf 'cxin\0\0\0\0'; while [ ! -s "$work/end" ]; do sleep 0.05; done; } |
    ssh "${ssh_opts[@]}" -p "$2" "$1@127.0.0.1" nix-daemon --stdio 2> /dev/null |
    { head -c 16 > "$work/reply"; date +%s%N > "$work/end"; } || true
  [ "$(wc -c < "$work/reply")" = 16 ] || { echo "no handshake reply from port $2" >&2; exit 1; }
  echo $(( ($(cat "$work/end") - start) / 1000 ))
  rm -f "$work/end"
}
stats() { sort -n | awk '{ a[NR] = $1 } END { printf "%7.1f ms median  (%6.1f – %6.1f)", a[int(NR/2)+1]/1000, a[int(NR/4)+1]/1000, a[int(3*NR/4)+1]/1000 }'; }

echo "measuring $connections connections each..."
: > "$work/kiln.times"; : > "$work/plain.times"
for _ in $(seq 1 "$connections"); do
  first_byte kiln "$kiln_port" >> "$work/kiln.times"
  first_byte root "$plain_port" >> "$work/plain.times"
done

echo "making a $paths-path closure (builtins.toFile chain) and pushing it to Kiln..."
cat > "$work/chain.nix" <<NIX
let go = i: prev: if i > $paths then prev else go (i + 1) (builtins.toFile "chain-\${toString i}" "link \${toString i} after \${prev}\n");
in go 1 "start"
NIX
local_store="local?root=$work/client"
top="$(nix-instantiate --store "$local_store" --read-write-mode --eval "$work/chain.nix" | tr -d '"')"
count="$(nix path-info --store "$local_store" -r "$top" | wc -l)"
export NIX_SSHOPTS="-p $kiln_port ${ssh_opts[*]}"
nix copy --from "$local_store" --to "ssh-ng://kiln@127.0.0.1" "$top"

seconds() { local s e; s=$(date +%s%N); "$@" > /dev/null 2>&1; e=$(date +%s%N); echo "scale=2; ($e - $s) / 1000000000" | bc; }
present="$(seconds nix copy --no-check-sigs --from "ssh-ng://kiln@127.0.0.1" --to "$local_store" "$top")"
empty="$(seconds nix copy --no-check-sigs --from "ssh-ng://kiln@127.0.0.1" --to "local?root=$work/empty" "$top")"

# The same against stock Nix: the closure in the host's store, served by the plain sshd's nix-daemon --stdio.
nix copy --no-check-sigs --from "$local_store" --to local "$top" 2> /dev/null
export NIX_SSHOPTS="-p $plain_port ${ssh_opts[*]}"
nix_present="$(seconds nix copy --no-check-sigs --from "ssh-ng://root@127.0.0.1" --to "$local_store" "$top")"
nix_empty="$(seconds nix copy --no-check-sigs --from "ssh-ng://root@127.0.0.1" --to "local?root=$work/empty-nix" "$top")"

echo
echo "SSH front door ($(nix --version) client, $(ssh -V 2>&1 | cut -d, -f1), $(nproc) cores)"
printf '%-58s %s\n' "ssh start → first protocol byte, Kiln (auth-keys + bridge)" "$(stats < "$work/kiln.times")"
printf '%-58s %s\n' "ssh start → first protocol byte, sshd + nix-daemon --stdio" "$(stats < "$work/plain.times")"
printf '%-58s %12s %12s\n' "" "Kiln" "nix-daemon"
printf '%-58s %11.2fs %11.2fs\n' "nix copy --from ssh-ng:// of $count paths already present" "$present" "$nix_present"
printf '%-58s %11.2fs %11.2fs\n' "nix copy --from ssh-ng:// of $count paths into an empty store" "$empty" "$nix_empty"
summary "SSH session: ssh start to first protocol byte (median of $connections)" \
  "$(median $(cat "$work/plain.times") | awk '{ printf "%.1f", $1 / 1000 }')" "$(median $(cat "$work/kiln.times") | awk '{ printf "%.1f", $1 / 1000 }')" ms "time<=1.1"
