#!/bin/sh
# Verify: no postmaster.pid is left in DATADIR (a configured cluster), or the one
# there belongs to a live process.
set -eu
datadir=${1:?usage: check-no-pid-file.sh DATADIR}
if ! printf '%s\n' "${LOGMEND_PARAM_DATA_DIRS:-}" | grep -Fxq -- "$datadir"; then
  echo "refusing $datadir: not a configured data directory" >&2
  exit 2
fi
file="$datadir/postmaster.pid"
[ -e "$file" ] || [ -L "$file" ] || exit 0
[ -f "$file" ] && [ ! -L "$file" ] || { echo "$file is not a regular file" >&2; exit 1; }
pid=$(head -n 1 -- "$file")
case "$pid" in ''|*[!0-9]*) echo "$file names no PID" >&2; exit 1 ;; esac
[ -d "/proc/$pid" ] && exit 0
echo "$file still names dead PID $pid" >&2
exit 1
