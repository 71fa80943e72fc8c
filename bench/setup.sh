#!/bin/sh
# The peers the benchmarks compare against, from Debian's packages (and the journal:
# journalctl, systemd-journal-remote to write journal files, python3-systemd the binding).
set -eu
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi  # GNU time measures peak RSS
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq fail2ban sec swatch time systemd systemd-journal-remote python3-systemd >/dev/null
echo "installed: $(command -v fail2ban-regex) $(command -v sec) $(command -v swatchdog)"
