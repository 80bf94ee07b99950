# Sourced by bench scripts: the statistic every figure is reported as, and the summary bench/speed/run.sh prints.

# median X…: the middle value (the mean of the two middle ones for an even count).
median() {
  printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.6f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# summary NAME STOCK KILN UNIT GOAL: one line for the summary table when KILN_BENCH_SUMMARY names a file (run from
# bench/speed/run.sh), nothing otherwise. STOCK is the anchor's figure ("-" if none); GOAL is how the issue states
# the target: "time<=R" (Kiln's time at most R times stock's), "rate>=R" (Kiln's throughput at least R times
# stock's), "max<=N" (Kiln's figure at most N), or "-" (reported, no target).
summary() {
  if [ -n "${KILN_BENCH_SUMMARY:-}" ]; then printf '%s\t%s\t%s\t%s\t%s\n' "$@" >> "$KILN_BENCH_SUMMARY"; fi
}

# Memory of processes: rss_mib PID, a process's resident memory now (MiB); sample_rss PID FILE, its VmRSS in KiB every
# 100 ms into FILE for as long as it runs (in the background: the caller waits for $! or lets it end with the process);
# pss_kib PID…, the proportional set size of all of them (KiB; shared pages divided among the processes sharing them).
rss_mib() { awk '/VmRSS/ { printf "%d", $2 / 1024 }' "/proc/$1/status"; }
sample_rss() {
  ( while kill -0 "$1" 2> /dev/null; do awk '/VmRSS/ { print $2 }' "/proc/$1/status" 2> /dev/null; sleep 0.1; done ) > "$2" &
}
pss_kib() { local s=0 p; for p in "$@"; do s=$((s + $(awk '/^Pss:/ { print $2 }' "/proc/$p/smaps_rollup" 2> /dev/null || echo 0))); done; echo $s; }
