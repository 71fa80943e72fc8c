#!/bin/sh
# Free space for a log that cannot be written: delete the rotated copies of that
# one log (LOG.1, LOG.2.gz, LOG-20240301, LOG-20240301.gz, ...), oldest first,
# keeping the newest KEEP of them. LOG comes from a log line: it must lie under a
# configured log folder (LOGMEND_PARAM_LOG_DIRS, one per line). Names are compared
# as fixed strings, never turned into a pattern, and only regular files are removed.
set -eu
log=${1:?usage: prune-rotated.sh LOG KEEP}
keep=${2:-2}
case "$keep" in ''|*[!0-9]*) echo "KEEP must be a number" >&2; exit 2 ;; esac
case "$log" in
  /*) ;;
  *) echo "refusing relative path: $log" >&2; exit 2 ;;
esac
case "$log/" in
  */../*|*/./*|*//*) echo "refusing path that is not normal: $log" >&2; exit 2 ;;
esac
dir=${log%/*}
base=${log##*/}
inside=""
while IFS= read -r root; do
  [ -n "$root" ] || continue
  case "$dir/" in "$root"/*) inside=$root; break ;; esac
done <<LIST
${LOGMEND_PARAM_LOG_DIRS:-}
LIST
if [ -z "$inside" ] || [ -z "$base" ]; then
  echo "refusing $log: not under a configured log folder" >&2
  exit 2
fi
if [ -L "$dir" ] || [ ! -d "$dir" ]; then
  echo "refusing $log: $dir is not a real directory" >&2
  exit 1
fi
# the folder as it resolves now (a component swapped for a symlink after the agent's check
# shows here) must still lie in the resolved configured folder; work from it, not the name
real=$(cd -P -- "$dir" && pwd -P) || exit 1
root_real=$(cd -P -- "$inside" && pwd -P) || exit 1
case "$real/" in
  "$root_real"/*) dir=$real ;;
  *) echo "refusing $log: $dir resolves to $real, outside $inside" >&2; exit 2 ;;
esac
# a line can be forged; a full disk cannot: prune only while the filesystem is full
min=${LOGMEND_PARAM_MIN_USE_PERCENT:-90}
case "$min" in ''|*[!0-9]*) echo "min_use_percent must be a number" >&2; exit 2 ;; esac
used=$(df -P -- "$dir" | awk 'NR == 2 { sub("%", "", $5); print $5 }')
case "$used" in ''|*[!0-9]*) echo "cannot tell how full $dir is" >&2; exit 1 ;; esac
if [ "$used" -lt "$min" ]; then
  echo "the filesystem of $dir is $used% full (< $min%): nothing to prune" >&2
  exit 1
fi
# is NAME a rotated copy of BASE: BASE, then [.-]digits groups, then an optional
# compression suffix? Fixed-string prefix test; the rest may hold only [0-9.-].
rotated() {
  rest=${1#"$base"}
  [ "$rest" != "$1" ] || return 1
  for ext in .gz .xz .zst .bz2; do rest=${rest%"$ext"}; done
  case "$rest" in
    [.-][0-9]*) ;;
    *) return 1 ;;
  esac
  case "$rest" in
    *[!0-9.-]*|*[.-]|*[.-][.-]*) return 1 ;;
  esac
  return 0
}
# -q: a name with a newline (or any non-printable) shows as ?, which is no rotated copy
list=$(cd -- "$dir" && ls -1Atq 2>/dev/null) || list=""
copies=""
total=0
newline='
'
while IFS= read -r name; do
  [ -n "$name" ] && rotated "$name" || continue
  [ -f "$dir/$name" ] && [ ! -L "$dir/$name" ] || continue
  copies="$copies$name$newline"
  total=$((total + 1))
done <<LIST
$list
LIST
if [ "$total" -le "$keep" ]; then
  echo "only $total rotated cop(ies) of $base: nothing to prune" >&2
  exit 1
fi
printf '%s' "$copies" | tail -n +"$((keep + 1))" | while IFS= read -r name; do
  rm -f -- "$dir/$name"
  echo "removed $dir/$name"
done
