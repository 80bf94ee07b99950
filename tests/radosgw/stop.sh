#!/bin/bash
# stop.sh DIR: kills the processes start.sh DIR started (listed in DIR/pids; SIGKILL at once, the cluster is
# throwaway and SIGTERM takes the OSD and radosgw about 5 s) and removes DIR.
DIR=${1:?usage: stop.sh DIR}
[ -d "$DIR" ] || exit 0
if [ -f "$DIR/pids" ]; then
  PIDS=$(tac "$DIR/pids")
  for p in $PIDS; do kill -KILL "$p" 2>/dev/null || true; done
  # wait (max ~5 s) until gone or zombie
  for _ in $(seq 100); do
    alive=0
    for p in $PIDS; do
      st=$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null) || continue
      [ "$st" != Z ] && alive=1
    done
    [ $alive = 0 ] && break
    sleep 0.05
  done
fi
rm -rf "$DIR"
