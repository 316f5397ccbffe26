#!/usr/bin/env bash
# Install the Forewarn edge agent on a Debian 12 gateway.
#
#   sudo deploy/install.sh                      # Mosquitto + agent from this checkout
#   sudo deploy/install.sh --wheel forewarn-0.1.0-py3-none-any.whl
#   sudo deploy/install.sh --uninstall [--purge]
#
# Idempotent: a second run with the same inputs changes no file. Existing
# configuration and credentials are never overwritten.
#
# --prefix DIR stages everything under DIR (like DESTDIR) and performs no
# system changes: no apt-get, no useradd, no chown, no systemctl. The actions it
# skipped are listed in DIR/opt/forewarn/skipped-actions.txt.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: install.sh [options]
  --prefix DIR     stage under DIR; no apt, useradd, chown or systemctl
  --source DIR     project source to install (default: the checkout holding this script)
  --wheel FILE     install this wheel instead of the source directory
  --no-pip         create the virtual environment but install nothing into it
  --no-apt         do not apt-get install mosquitto and python3-venv
  --start          start (or restart) the agent after installing
  --uninstall      remove the agent, its units and /opt/forewarn; keep config and data
  --purge          with --uninstall: also remove /etc/forewarn, /var/lib/forewarn,
                   /var/log/forewarn and the forewarn user
  -h, --help       this text
EOF
}

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source_dir=$(dirname "$script_dir")
prefix=""
wheel=""
do_pip=1
do_apt=1
do_start=0
uninstall=0
purge=0

while [[ $# -gt 0 ]]; do
    case "$1" in
        --prefix) prefix=$(realpath -m "${2:?--prefix needs a directory}"); shift 2 ;;
        --source) source_dir=$(realpath "${2:?--source needs a directory}"); shift 2 ;;
        --wheel) wheel=$(realpath "${2:?--wheel needs a file}"); shift 2 ;;
        --no-pip) do_pip=0; shift ;;
        --no-apt) do_apt=0; shift ;;
        --start) do_start=1; shift ;;
        --uninstall) uninstall=1; shift ;;
        --purge) purge=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "install.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
    esac
done
if [[ $purge -eq 1 && $uninstall -eq 0 ]]; then
    echo "install.sh: --purge only goes with --uninstall" >&2
    exit 2
fi

APP_USER=forewarn
OPT="$prefix/opt/forewarn"
VENV="$OPT/venv"
ETC="$prefix/etc/forewarn"
STATE="$prefix/var/lib/forewarn"
LOGS="$prefix/var/log/forewarn"
UNITS="$prefix/etc/systemd/system"
UNIT_FILES=(forewarn-agent.service forewarn-retrain.service forewarn-retrain.timer)
SKIPPED="$OPT/skipped-actions.txt"
skipped=()

log() { echo "install.sh: $*"; }

# Run a system-changing command, or in --prefix mode record that we did not.
system() {
    if [[ -n "$prefix" ]]; then
        skipped+=("$*")
    else
        "$@"
    fi
}

systemd_running() { [[ -z "$prefix" && -d /run/systemd/system ]]; }

# Copy a file only when its content or mode differs: reruns touch nothing.
put() {
    local src=$1 dest=$2 mode=$3
    if [[ -f "$dest" ]] && cmp -s "$src" "$dest" \
        && [[ $(stat -c %a "$dest") == "${mode#0}" ]]; then
        return 0
    fi
    install -D -m "$mode" "$src" "$dest"
    log "wrote $dest"
}

# Create a file only if it does not exist yet (configuration, secrets).
put_once() {
    local dest=$1 mode=$2 content=$3
    if [[ -e "$dest" ]]; then
        return 0
    fi
    mkdir -p "$(dirname "$dest")"
    (umask 077 && printf '%s' "$content" >"$dest")
    chmod "$mode" "$dest"
    log "created $dest"
}

dir() {
    local path=$1 mode=$2 owner=${3:-}
    if [[ ! -d "$path" ]]; then
        install -d -m "$mode" "$path"
        log "created $path/"
    elif [[ $(stat -c %a "$path") != "${mode#0}" ]]; then
        chmod "$mode" "$path"
    fi
    if [[ -n "$owner" ]]; then
        system chown "$owner" "$path"
    fi
}

source_stamp() {
    if [[ -n "$wheel" ]]; then
        sha256sum "$wheel" | cut -d' ' -f1
    else
        (cd "$source_dir" && find pyproject.toml edge trainer -type f \
            ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 2>/dev/null \
            | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
    fi
}

do_install() {
    if [[ $do_apt -eq 1 ]]; then
        if [[ -n "$prefix" ]]; then
            skipped+=("apt-get install -y mosquitto mosquitto-clients python3-venv")
        else
            local missing=()
            for pkg in mosquitto mosquitto-clients python3-venv; do
                dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" \
                    || missing+=("$pkg")
            done
            if [[ ${#missing[@]} -gt 0 ]]; then
                DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
            fi
        fi
    fi

    if [[ -z "$prefix" ]] && ! getent passwd "$APP_USER" >/dev/null; then
        useradd --system --user-group --home-dir /var/lib/forewarn --no-create-home \
            --shell /usr/sbin/nologin --comment "Forewarn edge agent" "$APP_USER"
        log "created system user $APP_USER"
    elif [[ -n "$prefix" ]]; then
        skipped+=("useradd --system --user-group --home-dir /var/lib/forewarn $APP_USER")
    fi

    dir "$OPT" 0755
    dir "$ETC" 0755
    dir "$ETC/credentials" 0700
    dir "$ETC/keys" 0755
    dir "$ETC/tls" 0755
    dir "$STATE" 0750 "$APP_USER:$APP_USER"
    dir "$STATE/models" 0750 "$APP_USER:$APP_USER"
    dir "$LOGS" 0750 "$APP_USER:$APP_USER"

    # Virtual environment: created once, project (re)installed only when the
    # source or wheel changed since the last run.
    if [[ ! -x "$VENV/bin/python" ]]; then
        python3 -m venv "$VENV"
        log "created virtual environment $VENV"
    fi
    if [[ $do_pip -eq 1 ]]; then
        local stamp target
        stamp=$(source_stamp)
        if [[ ! -f "$OPT/installed-from" || $(cat "$OPT/installed-from") != "$stamp" ]]; then
            target=${wheel:-$source_dir}
            "$VENV/bin/pip" install --quiet --disable-pip-version-check "$target"
            printf '%s\n' "$stamp" >"$OPT/installed-from"
            log "installed $target into $VENV"
        fi
    fi

    # Reference material next to the code (the unit's Documentation= points here).
    put "$source_dir/docs/operations.md" "$OPT/share/doc/operations.md" 0644
    for f in mosquitto.conf acl bridge.conf; do
        put "$script_dir/mosquitto/$f" "$OPT/share/mosquitto/$f" 0644
    done
    put "$script_dir/mosquitto/mkpasswd.sh" "$OPT/share/mosquitto/mkpasswd.sh" 0755
    put "$script_dir/forewarn.toml.example" "$OPT/share/forewarn.toml.example" 0644

    # Configuration and secrets: written once, never overwritten.
    put_once "$ETC/agent.toml" 0644 "$(cat "$script_dir/forewarn.toml.example")
"
    local password
    password=$(head -c 32 /dev/urandom | base64 | tr -d '/+=' | head -c 32)
    put_once "$ETC/credentials/mqtt-password" 0600 "$password
"
    put_once "$ETC/credentials/api-tokens" 0600 ""

    local changed_units=0
    for unit in "${UNIT_FILES[@]}"; do
        if ! cmp -s "$source_dir/systemd/$unit" "$UNITS/$unit"; then
            changed_units=1
        fi
        put "$source_dir/systemd/$unit" "$UNITS/$unit" 0644
    done
    if systemd_running; then
        if [[ $changed_units -eq 1 ]]; then
            systemctl daemon-reload
        fi
        systemctl enable forewarn-agent.service
        if [[ $do_start -eq 1 ]]; then
            systemctl restart forewarn-agent.service
        fi
    elif [[ -n "$prefix" ]]; then
        skipped+=("systemctl daemon-reload" "systemctl enable forewarn-agent.service")
    else
        log "systemd is not running: enable forewarn-agent.service yourself"
    fi

    if [[ -n "$prefix" ]]; then
        local tmp
        tmp=$(mktemp)
        printf '%s\n' "${skipped[@]}" >"$tmp"
        put "$tmp" "$SKIPPED" 0644
        rm -f "$tmp"
    fi
    log "done. Next: edit $ETC/agent.toml, add the agent's broker account"
    log "  ($OPT/share/mosquitto/mkpasswd.sh forewarn-agent \"\$(cat $ETC/credentials/mqtt-password)\")"
    log "  then: forewarn agent --config $ETC/agent.toml --check-config"
}

do_uninstall() {
    if systemd_running; then
        systemctl disable --now forewarn-agent.service 2>/dev/null || true
    fi
    for unit in "${UNIT_FILES[@]}"; do
        if [[ -e "$UNITS/$unit" ]]; then
            rm -f "$UNITS/$unit"
            log "removed $UNITS/$unit"
        fi
    done
    if systemd_running; then
        systemctl daemon-reload
    fi
    if [[ -d "$OPT" ]]; then
        rm -rf "$OPT"
        log "removed $OPT"
    fi
    if [[ $purge -eq 1 ]]; then
        for d in "$ETC" "$STATE" "$LOGS"; do
            if [[ -d "$d" ]]; then
                rm -rf "$d"
                log "purged $d"
            fi
        done
        if [[ -z "$prefix" ]] && getent passwd "$APP_USER" >/dev/null; then
            userdel "$APP_USER"
            log "removed user $APP_USER"
        fi
    else
        log "kept $ETC, $STATE and $LOGS (use --uninstall --purge to remove them)"
    fi
}

if [[ -z "$prefix" && $(id -u) -ne 0 ]]; then
    echo "install.sh: run as root, or use --prefix DIR to stage without system changes" >&2
    exit 1
fi
if [[ $uninstall -eq 1 ]]; then
    do_uninstall
else
    do_install
fi
