#!/bin/sh
# Verify: the temp directory exists and is a directory its owner can write to.
set -eu
dir=${1:?usage: check-temp-dir.sh DIR}
[ -d "$dir" ] || { echo "$dir is missing" >&2; exit 1; }
[ "$(stat -c %A -- "$dir" | cut -c3)" = w ] || { echo "$dir is not writable by its owner" >&2; exit 1; }
echo "$dir ok"
