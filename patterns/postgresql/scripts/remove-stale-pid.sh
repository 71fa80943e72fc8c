#!/bin/sh
# Remove postmaster.pid left behind by a crash, and only if it is stale: DATADIR is
# one of this host's configured clusters (LOGMEND_PARAM_DATA_DIRS, one per line), the
# lock file is a regular file (not a symlink) that names exactly the PID from the log
# line, and no process has that PID. Acts only on DATADIR/postmaster.pid.
set -eu
datadir=${1:?usage: remove-stale-pid.sh DATADIR PID}
pid=${2:?usage: remove-stale-pid.sh DATADIR PID}
case "$pid" in ''|0|*[!0-9]*) echo "not a pid: $pid" >&2; exit 2 ;; esac
if ! printf '%s\n' "${LOGMEND_PARAM_DATA_DIRS:-}" | grep -Fxq -- "$datadir"; then
  echo "refusing $datadir: not a configured data directory" >&2
  exit 2
fi
if [ -L "$datadir" ] || [ ! -d "$datadir" ]; then
  echo "refusing $datadir: not a real directory" >&2
  exit 2
fi
file="$datadir/postmaster.pid"
if [ -L "$file" ]; then
  echo "refusing $file: it is a symbolic link" >&2
  exit 2
fi
if [ ! -e "$file" ]; then
  echo "no $file: nothing to do"
  exit 0
fi
[ -f "$file" ] || { echo "refusing $file: not a regular file" >&2; exit 2; }
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
