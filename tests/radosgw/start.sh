#!/bin/bash
# start.sh DIR PORT: a throwaway single-node Ceph cluster (one monitor, one OSD on memstore, no manager) and radosgw on
# 127.0.0.1:PORT, for the tests that need an S3 server which checks signatures and expiry (s3rver checks neither).
# Everything (configuration, data, sockets, logs, the pids in DIR/pids) stays in DIR; nothing under /etc/ceph,
# /var/lib/ceph or /var/run/ceph. Prints one line and exits 0 once S3 answers and the user RGW_ACCESS_KEY /
# RGW_SECRET_KEY exists. Needs radosgw, ceph-mon, ceph-osd and ceph-common (Debian's Ceph 16), run as root; about
# 2 s here. Stop it with stop.sh DIR. memstore keeps objects in memory: keep what the tests put there small (1 GiB
# at most, or RGW_MEMSTORE_MIB).
set -euo pipefail
DIR=${1:?usage: start.sh DIR PORT}
PORT=${2:?usage: start.sh DIR PORT}
ACCESS_KEY=${RGW_ACCESS_KEY:-TESTACCESSKEY0000001}
SECRET_KEY=${RGW_SECRET_KEY:-testsecretkey00000000000000000000000001}
TIMEOUT=${RGW_TIMEOUT:-120}

# fail fast if something already listens on PORT (else the readiness probe could talk to it)
python3 -c 'import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", int(sys.argv[1])))' "$PORT" 2>/dev/null \
  || { echo "port $PORT on 127.0.0.1 is in use" >&2; exit 1; }
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
mkdir -p "$DIR"/{run,log,mon.a,osd.0,rgw}
: > "$DIR/pids"
CONF=$DIR/ceph.conf
FSID=$(cat /proc/sys/kernel/random/uuid)
OSD_UUID=$(cat /proc/sys/kernel/random/uuid)
# a free TCP port on loopback for the mon (msgr v1)
MON_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

cat > "$CONF" <<EOF
[global]
fsid = $FSID
mon host = v1:127.0.0.1:$MON_PORT
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr2 = false
ms bind ipv6 = false
auth cluster required = none
auth service required = none
auth client required = none
auth supported = none
keyring = $DIR/keyring
run dir = $DIR/run
admin socket = $DIR/run/\$name.asok
log file = $DIR/log/\$name.log
pid file = $DIR/run/\$name.pid
crash dir = $DIR/crash
log to stderr = false
err to stderr = true
mon cluster log file = $DIR/log/cluster.log
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon warn on pool no redundancy = false
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
# the OSD would otherwise send 'osd crush create-or-move'/'set-device-class' right after auth; with
# auth=none that can race the monmap (fsid 0 -> 'wrong fsid' EPERM -> OSD init fails). Place it ourselves.
osd crush update on start = false
osd class update on start = false
mon max pg per osd = 1000
osd objectstore = memstore
memstore device bytes = $(( ${RGW_MEMSTORE_MIB:-1024} * 1048576 ))
osd memory target = 939524096
osd op num shards = 1
osd op num threads per shard = 2
mon data avail warn = 1
mon data avail crit = 0
# commit osdmap changes (pool creations by rgw) quickly instead of once per second
paxos propose interval = 0.05
paxos min wait = 0.01
mon warn on insecure global id reclaim allowed = false
mon warn on insecure global id reclaim = false

[mon.a]
mon data = $DIR/mon.a

[osd.0]
osd data = $DIR/osd.0

[client.rgw]
rgw data = $DIR/rgw
rgw frontends = beast endpoint=127.0.0.1:$PORT
rgw thread pool size = 32
rgw enable usage log = false
rgw lc debug interval = 10
EOF

wait_for() { # wait_for SECONDS DESCRIPTION CMD...
  local t=$1 what=$2; shift 2
  local end=$((SECONDS + t))
  until "$@" >/dev/null 2>&1; do
    if (( SECONDS >= end )); then echo "timeout waiting for $what" >&2; return 1; fi
    for p in $(cat "$DIR/pids"); do
      kill -0 "$p" 2>/dev/null || { echo "process $p died while waiting for $what" >&2; return 1; }
    done
    sleep 0.3
  done
}
C="ceph -c $CONF --connect-timeout 10"

on_fail() {
  echo "start-rgw.sh failed; last log lines:" >&2
  tail -n 5 "$DIR"/log/*.out >&2 || true
  for p in $(cat "$DIR/pids" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
}
trap on_fail ERR

# --- mon ---
monmaptool --create --clobber --fsid "$FSID" --addv a "[v1:127.0.0.1:$MON_PORT]" "$DIR/monmap" >/dev/null
ceph-authtool --create-keyring "$DIR/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
ceph-authtool "$DIR/keyring" --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' >/dev/null
ceph-mon -c "$CONF" -i a --mkfs --monmap "$DIR/monmap" --keyring "$DIR/keyring" >"$DIR/log/mon.a.out" 2>&1
ceph-mon -c "$CONF" -i a -f >>"$DIR/log/mon.a.out" 2>&1 &
echo "$!" >> "$DIR/pids"
wait_for 30 mon $C -s

# --- osd (memstore) ---
OSD_ID=$($C osd new "$OSD_UUID")
$C osd crush add "osd.$OSD_ID" 1.0 root=default host=localhost >/dev/null 2>&1
ceph-osd -c "$CONF" -i "$OSD_ID" --mkfs --osd-uuid "$OSD_UUID" >"$DIR/log/osd.$OSD_ID.out" 2>&1
ceph-osd -c "$CONF" -i "$OSD_ID" -f >>"$DIR/log/osd.$OSD_ID.out" 2>&1 &
echo "$!" >> "$DIR/pids"
wait_for 60 "osd up" bash -c "$C osd dump | grep -q '^osd.$OSD_ID up'"

# --- radosgw ---
radosgw -c "$CONF" -n client.rgw -f >"$DIR/log/rgw.out" 2>&1 &
echo "$!" >> "$DIR/pids"
wait_for $TIMEOUT "radosgw http" bash -c "curl -sf http://127.0.0.1:$PORT/ | grep -q ListAllMyBucketsResult"

radosgw-admin -c "$CONF" -n client.admin user create --uid=test --display-name=test \
  --access-key="$ACCESS_KEY" --secret-key="$SECRET_KEY" >"$DIR/log/user.json" 2>"$DIR/log/user.err"

echo "rgw ready on http://127.0.0.1:$PORT (mon 127.0.0.1:$MON_PORT) pids: $(tr '\n' ' ' < "$DIR/pids")"
