#!/usr/bin/env bash
# Run a command under a memory limit (a cgroup-v1 memory controller, as this machine has;
# root) and report its wall time and peak memory: peak anonymous RSS (sampled every 0.2 s
# from /proc/PID/status RssAnon: the heap, not the memory-mapped model), the kernel's VmHWM
# (anonymous + mapped file pages), and the cgroup's own peak (which counts page cache too).
# Usage: scripts/mem_limit.sh LIMIT (bytes, or e.g. 6G) CMD [ARGS...]
set -uo pipefail
limit=$(numfmt --from=iec "$1"); shift
cg=/sys/fs/cgroup/memory/quantize-limit-$$
mkdir "$cg" || { echo "mem_limit: cannot create $cg (needs root and the v1 memory controller)" >&2; exit 2; }
trap 'rmdir "$cg" 2>/dev/null || true' EXIT
echo "$limit" > "$cg/memory.limit_in_bytes"
start=$(date +%s.%N)
bash -c 'echo $$ > "$1/cgroup.procs"; shift; exec "$@"' _ "$cg" "$@" &
pid=$!
peak_anon=0
peak_hwm=0
while kill -0 "$pid" 2>/dev/null; do
  read -r anon hwm < <(awk '/^RssAnon/{a=$2} /^VmHWM/{h=$2} END{print a+0, h+0}' "/proc/$pid/status" 2>/dev/null || echo "0 0")
  [ "${anon:-0}" -gt "$peak_anon" ] && peak_anon=$anon
  [ "${hwm:-0}" -gt "$peak_hwm" ] && peak_hwm=$hwm
  sleep 0.2
done
wait "$pid"; rc=$?
wall=$(echo "$(date +%s.%N) - $start" | bc)
echo "mem_limit: rc=$rc wall_s=$wall limit=$(numfmt --to=iec "$limit") peak_anon=$(numfmt --to=iec $((peak_anon*1024))) vm_hwm=$(numfmt --to=iec $((peak_hwm*1024))) cgroup_peak=$(numfmt --to=iec "$(cat "$cg/memory.max_usage_in_bytes")") oom_events=$(awk '/oom_kill /{print $2}' "$cg/memory.oom_control" 2>/dev/null || echo ?)" >&2
exit "$rc"
