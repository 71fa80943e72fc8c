#!/bin/sh
# Remove postmaster.pid left behind by a crash, and only if it is stale:
# the file names exactly the PID from the log line, and no process has that PID.
# Acts only on DATADIR/postmaster.pid.
set -eu
datadir=${1:?usage: remove-stale-pid.sh DATADIR PID}
pid=${2:?usage: remove-stale-pid.sh DATADIR PID}
case "$pid" in ''|*[!0-9]*) echo "not a pid: $pid" >&2; exit 2 ;; esac
case "$datadir" in /*) ;; *) echo "refusing relative path: $datadir" >&2; exit 2 ;; esac
file="$datadir/postmaster.pid"
if [ ! -e "$file" ]; then
  echo "no $file: nothing to do"
  exit 0
fi
first=$(head -n 1 -- "$file")
if [ "$first" != "$pid" ]; then
  echo "$file names PID $first, not $pid: leaving it" >&2
  exit 1
fi
if kill -0 "$pid" 2>/dev/null || [ -d "/proc/$pid" ]; then
  echo "PID $pid is alive: the lock is not stale, leaving it" >&2
  exit 1
fi
rm -f -- "$file"
echo "removed stale $file (PID $pid is gone)"
