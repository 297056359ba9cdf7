#!/usr/bin/env bash
# The project's test command: install what the tests need, then run pytest.
# Arguments are passed to pytest, e.g. `bash tests/run.sh -q -k registry`.
set -euo pipefail
cd "$(dirname "$0")/.."

declare -A packages=(
    [docker-registry]=docker-registry [skopeo]=skopeo [htpasswd]=apache2-utils
    [zstd]=zstd [curl]=curl [openssl]=openssl [nginx]=nginx-light
)
missing=()
for tool in "${!packages[@]}"; do
    PATH="$PATH:/usr/sbin" command -v "$tool" >/dev/null || missing+=("${packages[$tool]}")
done
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)

if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "tests/run.sh: missing tools; run: apt-get install ${missing[*]}" >&2
        exit 1
    fi
    # Keep the docker-registry package from starting its own service on :5000.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Debian's own python3 refuses pip installs unless told this is intended.
export PIP_BREAK_SYSTEM_PACKAGES=1
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore \
    -e '.[test]'

status=0
python3 -m pytest "$@" || status=$?
if ((status == 5)); then
    echo "tests/run.sh: pytest collected no tests" >&2
    exit 1
fi
exit "$status"
