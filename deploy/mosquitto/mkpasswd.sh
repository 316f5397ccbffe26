#!/usr/bin/env bash
# Add or update one account in the site broker's password file.
#
#   mkpasswd.sh [-f PASSWD_FILE] USERNAME [PASSWORD]
#
# USERNAME is an asset id for a sensor, "forewarn-agent", "display-<name>" or
# "monitor" (see acl). Without PASSWORD a random one is generated and printed
# once on stdout; give it to the device, it is not stored in clear anywhere.
# Afterwards: systemctl reload mosquitto (re-reads the password file and ACL).
set -euo pipefail

passwd_file=/etc/mosquitto/forewarn/passwd
if [[ "${1:-}" == "-f" ]]; then
    passwd_file=${2:?"-f needs a file"}
    shift 2
fi
user=${1:?"usage: mkpasswd.sh [-f PASSWD_FILE] USERNAME [PASSWORD]"}
password=${2:-}

# The username becomes a topic level through the ACL's %u: same alphabet as
# asset ids in edge/core/config.py, and never a level the agent itself writes.
if [[ ! "$user" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$ ]]; then
    echo "mkpasswd.sh: username '$user' is not a valid asset id ([A-Za-z0-9][A-Za-z0-9_.-]*)" >&2
    exit 2
fi
if [[ "$user" == *.* ]]; then
    echo "mkpasswd.sh: username '$user' contains '.', which separates edge node and device in asset ids (a node 'a' with device 'b' is asset a.b)" >&2
    exit 2
fi
case "$user" in
    alerts | events | drift)
        echo "mkpasswd.sh: username '$user' is reserved (it would let a sensor forge $user)" >&2
        exit 2
        ;;
esac

if [[ -z "$password" ]]; then
    password=$(head -c 24 /dev/urandom | base64 | tr -d '/+=' | head -c 24)
    generated=1
fi

mkdir -p "$(dirname "$passwd_file")"
if [[ ! -e "$passwd_file" ]]; then
    (umask 027 && : >"$passwd_file")
fi
mosquitto_passwd -b "$passwd_file" "$user" "$password"
if getent group mosquitto >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]]; then
    chgrp mosquitto "$passwd_file"
    chmod 0640 "$passwd_file"
fi
if [[ -n "${generated:-}" ]]; then
    echo "$password"
fi
