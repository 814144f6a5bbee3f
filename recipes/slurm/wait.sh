# Sourced by pretrain.sbatch and node.sh: `wait_through_traps PID` waits for the background
# process PID and returns its exit status. A trapped signal makes bash's `wait` return early
# (status > 128) while PID runs on; this waits again until PID has really ended.
wait_through_traps() {
  local rc again
  while :; do
    wait "$1"; rc=$?
    if [ "$rc" -gt 128 ] && kill -0 "$1" 2>/dev/null; then
      continue
    fi
    if [ "$rc" -gt 128 ]; then  # interrupted as PID ended: its own status, where bash still has it
      wait "$1"; again=$?
      [ "$again" -ne 127 ] && rc=$again
    fi
    return "$rc"
  done
}
