#!/usr/bin/env bash
# Installs what the side-by-side benchmarks need, if it is missing: QEMU (Debian's qemu-system-x86
# from bookworm-backports, adding that suite to the apt sources if needed) and GNU time (for peak
# RSS). Nothing installed is upgraded: the install is simulated first and refused if apt would
# upgrade an installed package. Idempotent; prints the QEMU in use.
set -euo pipefail

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    if ! grep -rqsE '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        printf '%s\n' 'Types: deb' 'URIs: http://deb.debian.org/debian' 'Suites: bookworm-backports' \
            'Components: main' 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' |
            $sudo tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null
    fi
    $sudo apt-get update -qq
    install=(apt-get install -y -qq --no-install-recommends -t bookworm-backports "${need[@]}")
    # "Inst name [installed version] (new version ...)" is an upgrade of something already there.
    upgrades=$($sudo env DEBIAN_FRONTEND=noninteractive "${install[@]}" -s | grep -E '^Inst [^ ]+ \[' || true)
    if [ -n "$upgrades" ]; then
        echo "setup.sh: installing ${need[*]} from bookworm-backports would upgrade installed packages;" \
            "not doing it:" >&2
        echo "$upgrades" >&2
        exit 1
    fi
    $sudo env DEBIAN_FRONTEND=noninteractive "${install[@]}" >/dev/null
fi
qemu-system-x86_64 --version | head -n 1
