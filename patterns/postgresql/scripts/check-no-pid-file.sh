#!/bin/sh
# Verify: no postmaster.pid is left in DATADIR, or the one there belongs to a live process.
set -eu
datadir=${1:?usage: check-no-pid-file.sh DATADIR}
file="$datadir/postmaster.pid"
[ -e "$file" ] || exit 0
pid=$(head -n 1 -- "$file")
[ -d "/proc/$pid" ] && exit 0
echo "$file still names dead PID $pid" >&2
exit 1
