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
