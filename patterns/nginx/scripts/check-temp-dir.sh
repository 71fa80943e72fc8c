#!/bin/sh
# Verify: the temp directory exists, is a real directory (not a symlink), and its
# owner can write to it.
set -eu
dir=${1:?usage: check-temp-dir.sh DIR}
[ ! -L "$dir" ] || { echo "$dir is a symbolic link" >&2; exit 1; }
[ -d "$dir" ] || { echo "$dir is missing" >&2; exit 1; }
[ "$(stat -c %A -- "$dir" | cut -c3)" = w ] || { echo "$dir is not writable by its owner" >&2; exit 1; }
echo "$dir ok"
