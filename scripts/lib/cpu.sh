# Sourced by scripts/wrk.sh: CPU time spent by each party of a run, read
# from /proc, so that a run's claims/s comes with where the two cores went.
#   cpu_mark            # remembers the counters now
#   cpu_since N         # prints "service redis postgres rest busy%": µs of
#                       # CPU per request for each party over N requests
#                       # since the mark ("rest" is the client and anything
#                       # else running), and the machine's busy share of all
#                       # its cores
# Needs SERVE_PID and REDIS_URL.

# utime + stime of the given processes, in clock ticks (threads included).
# The command name in /proc/PID/stat may hold spaces: cut up to its ')'.
proc_ticks() {
  local t=0 p s
  for p in "$@"; do
    s=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null) || continue
    t=$(( t + $(awk '{print $12 + $13}' <<<"$s") ))
  done
  echo "$t"
}

# Busy and total ticks of the whole machine (all cores).
machine_ticks() {
  awk '/^cpu / {busy = $2 + $3 + $4 + $7 + $8 + $9; print busy, busy + $5 + $6}' /proc/stat
}

cpu_pids() {
  REDIS_PID=$(redis-cli -u "$REDIS_URL" info server | awk -F: '/^process_id/ {print $2+0}')
  PG_PIDS=$(pgrep -x postgres || pgrep -f '^postgres' || true)
}

cpu_mark() {
  cpu_pids
  CPU0_SVC=$(proc_ticks "$SERVE_PID")
  CPU0_REDIS=$(proc_ticks "$REDIS_PID")
  # shellcheck disable=SC2086
  CPU0_PG=$(proc_ticks $PG_PIDS)
  read -r CPU0_BUSY CPU0_ALL < <(machine_ticks)
}

cpu_since() {
  local n=$1 svc redis pg busy all hz
  hz=$(getconf CLK_TCK)
  svc=$(( $(proc_ticks "$SERVE_PID") - CPU0_SVC ))
  redis=$(( $(proc_ticks "$REDIS_PID") - CPU0_REDIS ))
  # shellcheck disable=SC2086
  pg=$(( $(proc_ticks $PG_PIDS) - CPU0_PG ))
  read -r busy all < <(machine_ticks)
  busy=$(( busy - CPU0_BUSY )); all=$(( all - CPU0_ALL ))
  awk -v n="$n" -v hz="$hz" -v s="$svc" -v r="$redis" -v p="$pg" -v b="$busy" -v a="$all" \
    'BEGIN { us = 1e6 / hz / (n > 0 ? n : 1);
             printf "%.1f %.1f %.1f %.1f %.0f\n", s * us, r * us, p * us, (b - s - r - p) * us, 100 * b / (a > 0 ? a : 1) }'
}
