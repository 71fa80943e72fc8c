#!/bin/sh
# Free space for a log that cannot be written: delete the rotated copies of that
# one log (LOG.1, LOG.2.gz, LOG-20240301, LOG-20240301.gz, ...), oldest first,
# keeping the newest KEEP of them. Acts only on siblings of the file named by $1.
set -eu
log=${1:?usage: prune-rotated.sh LOG KEEP}
keep=${2:-2}
case "$keep" in ''|*[!0-9]*) echo "KEEP must be a number" >&2; exit 2 ;; esac
case "$log" in /*) ;; *) echo "refusing relative path: $log" >&2; exit 2 ;; esac
dir=$(dirname -- "$log")
base=$(basename -- "$log")
[ -d "$dir" ] || { echo "no directory $dir" >&2; exit 1; }
# newest first by modification time; only names of rotated copies of $base
list=$(cd "$dir" && ls -1t -- 2>/dev/null | grep -E "^$(printf '%s' "$base" | sed 's/[.[\*^$]/\\&/g')([.-][0-9]+)+(\.gz|\.xz|\.zst|\.bz2)?$" || true)
total=$(printf '%s' "$list" | grep -c . || true)
if [ "$total" -le "$keep" ]; then
  echo "only $total rotated cop(ies) of $base: nothing to prune" >&2
  exit 1
fi
printf '%s\n' "$list" | tail -n +"$((keep + 1))" | while IFS= read -r name; do
  rm -f -- "$dir/$name"
  echo "removed $dir/$name"
done
