#!/bin/sh
# Gracefully replace all workers of one gunicorn master: SIGHUP reloads the
# config and starts fresh workers, finishing in-flight requests on the old ones.
# The PID in $1 comes from a log line, so it only selects among configured masters:
# it must be the PID written in one of this host's pid files (LOGMEND_PARAM_PID_FILES,
# one per line; regular files, not symlinks), and that process must be a gunicorn master.
set -eu
pid=${1:?usage: reload-workers.sh MASTER_PID}
case "$pid" in ''|0|*[!0-9]*) echo "not a pid: $pid" >&2; exit 2 ;; esac
known=""
while IFS= read -r pidfile; do
  [ -n "$pidfile" ] && [ -f "$pidfile" ] && [ ! -L "$pidfile" ] || continue
  if [ "$(head -n 1 -- "$pidfile" | tr -d ' \t\r')" = "$pid" ]; then
    known=$pidfile
    break
  fi
done <<LIST
${LOGMEND_PARAM_PID_FILES:-}
LIST
if [ -z "$known" ]; then
  echo "refusing $pid: no configured pid file names it" >&2
  exit 2
fi
if [ ! -r "/proc/$pid/cmdline" ]; then
  echo "no process $pid (named by $known)" >&2
  exit 1
fi
# one argument must be the gunicorn program (".../gunicorn") or its title ("gunicorn: master")
if ! tr '\0' '\n' < "/proc/$pid/cmdline" | grep -qE '^(.*/)?gunicorn(: master.*| .*)?$'; then
  echo "process $pid is not a gunicorn master: leaving it" >&2
  exit 1
fi
kill -HUP "$pid"
echo "sent SIGHUP to gunicorn master $pid (from $known)"
