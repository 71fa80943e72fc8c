#!/bin/sh
# Recreate one nginx temp directory that was removed (tmpfiles cleanup, a careless rm).
# Acts only on the directory named by $1; refuses anything but an absolute path
# whose last component is one of nginx's temp directory names.
set -eu
dir=${1:?usage: recreate-temp-dir.sh DIR}
case "$dir" in
  /*) ;;
  *) echo "refusing relative path: $dir" >&2; exit 2 ;;
esac
case "$dir" in
  *..*) echo "refusing path with '..': $dir" >&2; exit 2 ;;
esac
case "${dir##*/}" in
  client_temp|proxy_temp|fastcgi_temp|uwsgi_temp|scgi_temp|body|proxy|fastcgi|uwsgi|scgi) ;;
  *) echo "not an nginx temp directory: $dir" >&2; exit 2 ;;
esac
mkdir -p -m 700 -- "$dir"
# nginx workers run as www-data (Debian) or nginx (upstream packages); keep the
# owner of the parent so workers can write, whoever they are.
owner=$(stat -c %u:%g -- "$(dirname -- "$dir")")
chown -- "$owner" "$dir" 2>/dev/null || true
echo "recreated $dir (owner $owner)"
