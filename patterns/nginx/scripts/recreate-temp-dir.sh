#!/bin/sh
# Recreate one nginx temp directory that was removed (tmpfiles cleanup, a careless rm).
# $1 comes from a log line, so it is only a choice among configured things: it must
# name a directory directly inside one of the configured temp roots
# (LOGMEND_PARAM_TEMP_ROOTS, one per line), with one of nginx's temp directory names.
# Nothing is created above it, and nothing that is a symlink is followed or changed.
set -eu
dir=${1:?usage: recreate-temp-dir.sh DIR}
parent=${dir%/*}
name=${dir##*/}
if [ -z "$parent" ] || ! printf '%s\n' "${LOGMEND_PARAM_TEMP_ROOTS:-}" | grep -Fxq -- "$parent"; then
  echo "refusing $dir: not directly inside a configured temp root" >&2
  exit 2
fi
case "$name" in
  client_temp|proxy_temp|fastcgi_temp|uwsgi_temp|scgi_temp|body|proxy|fastcgi|uwsgi|scgi) ;;
  *) echo "not an nginx temp directory: $dir" >&2; exit 2 ;;
esac
if [ -L "$parent" ] || [ ! -d "$parent" ]; then
  echo "refusing $dir: $parent is not a real directory" >&2
  exit 2
fi
if [ -L "$dir" ]; then
  echo "refusing $dir: it is a symbolic link" >&2
  exit 2
fi
if [ -d "$dir" ]; then
  echo "$dir already exists"
  exit 0
fi
mkdir -m 700 -- "$dir"
# nginx workers run as www-data (Debian) or nginx (upstream packages); give the new
# directory the owner of its root so workers can write, whoever they are. -h: should
# the name be swapped for a symlink meanwhile, only the link itself changes owner.
owner=$(stat -c %u:%g -- "$parent")
chown -h -- "$owner" "$dir"
echo "recreated $dir (owner $owner)"
