#!/bin/sh
# Gracefully replace all workers of one gunicorn master: SIGHUP reloads the
# config and starts fresh workers, finishing in-flight requests on the old ones.
# Acts only on the PID named by $1, and only if that process is a gunicorn master.
set -eu
pid=${1:?usage: reload-workers.sh MASTER_PID}
case "$pid" in ''|*[!0-9]*) echo "not a pid: $pid" >&2; exit 2 ;; esac
if [ ! -r "/proc/$pid/cmdline" ]; then
  echo "no process $pid" >&2
  exit 1
fi
cmdline=$(tr '\0' ' ' < "/proc/$pid/cmdline")
case "$cmdline" in
  *gunicorn*) ;;
  *) echo "process $pid is not gunicorn ($cmdline): leaving it" >&2; exit 1 ;;
esac
kill -HUP "$pid"
echo "sent SIGHUP to gunicorn master $pid"
