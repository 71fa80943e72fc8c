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
# one argument must be the gunicorn program (".../gunicorn") or its title ("gunicorn: master")
if ! tr '\0' '\n' < "/proc/$pid/cmdline" | grep -qE '^(.*/)?gunicorn(:.*| .*)?$'; then
  echo "process $pid is not gunicorn ($(tr '\0' ' ' < "/proc/$pid/cmdline")): leaving it" >&2
  exit 1
fi
kill -HUP "$pid"
echo "sent SIGHUP to gunicorn master $pid"
