# Shared set-up for scripts/dev and scripts/test: Debian packages and the project venv.
# Sourced, not run. Idempotent: a second run installs nothing new.

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=""
# ensure_apt COMMAND:PACKAGE ...  installs PACKAGE when COMMAND is missing.
ensure_apt() {
    local missing=() pair cmd pkg
    for pair in "$@"; do
        cmd=${pair%%:*}; pkg=${pair#*:}
        if [ "${cmd#/}" != "$cmd" ]; then [ -e "$cmd" ] && continue
        else command -v "$cmd" >/dev/null 2>&1 && continue; fi
        missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "setup: installing Debian packages: ${missing[*]}" >&2
    if [ -z "$apt_updated" ]; then as_root apt-get update -qq; apt_updated=1; fi
    # Never start system services (a system Postfix on port 25) while installing.
    local policy=/usr/sbin/policy-rc.d created=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
        as_root chmod +x "$policy"; created=1
    fi
    echo "postfix postfix/main_mailer_type select No configuration" | as_root debconf-set-selections
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [ -n "$created" ] && as_root rm -f "$policy"
    return 0
}

# ensure_venv [EXTRAS]: .venv with the project installed (plugin visible to twistd).
ensure_venv() {
    local extras=${1:-}
    if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "setup: Python 3.11 or later is needed (python3 is $(python3 --version 2>&1))" >&2
        exit 1
    fi
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv 2>/dev/null || {
            ensure_apt "/usr/share/doc/python3-venv:python3-venv"
            rm -rf .venv; python3 -m venv .venv
        }
    fi
    local spec="."
    [ -n "$extras" ] && spec=".[$extras]"
    local stamp=".venv/.installed-$extras"
    if [ ! -e "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        echo "setup: installing continuity into .venv" >&2
        .venv/bin/pip install -q --disable-pip-version-check -e "$spec" --config-settings editable_mode=compat
        touch "$stamp"
    fi
}
