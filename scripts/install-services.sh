#!/usr/bin/env bash
# Install the real services the test suite runs against (idempotent).
#
# Nothing is started here: tests start their own servers on free ports
# (see tests/services.py). This script only makes sure the binaries exist.
#
# To add a service, add one line to the matching table below:
#   APT_SERVICES  "binary:debian-package"        e.g. "rabbitmq-server:rabbitmq-server"
#   GO_SERVICES   "binary:module/path@version"   e.g. "ferretdb:github.com/FerretDB/FerretDB/cmd/ferretdb@vX.Y.Z"
#   PIP_SERVICES  "binary:pip-requirement"       e.g. "moto_server:moto[server]>=5"
# A binary already on PATH (or in $(go env GOPATH)/bin for Go tools) is
# left alone, so reruns cost nothing.
set -euo pipefail

LOG_PREFIX=install-services
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

APT_SERVICES=(
    "redis-server:redis-server"
    "redis-cli:redis-tools"  # redis-cli --cluster create (tests/services/redis_cluster_svc.py)
    "rabbitmq-server:rabbitmq-server"
    "memcached:memcached"
    "chromium:chromium"  # the dashboard's browser test (tests/integration/test_dashboard_browser.py)
    "chromedriver:chromium-driver"
)
GO_SERVICES=(
    # "ferretdb:github.com/FerretDB/FerretDB/cmd/ferretdb@<version>"
)
PIP_SERVICES=(
    # "moto_server:moto[server]"
)

PYTHON=${PYTHON:-python3}

install_apt() {
    local entry bin pkg missing=()
    for entry in "${APT_SERVICES[@]}"; do
        bin=${entry%%:*}; pkg=${entry#*:}
        if command -v "$bin" >/dev/null 2>&1 || [[ -x /usr/sbin/$bin || -x /usr/bin/$bin ]]; then
            continue
        fi
        missing+=("$pkg")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "apt services present"
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install manually: ${missing[*]}"

    # Keep Debian's maintainer scripts from auto-starting the daemons
    # (tests start their own on free ports; no systemd here anyway).
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [[ ! -e $policy ]]; then
        as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
        created_policy=1
        # shellcheck disable=SC2064
        trap "as_root rm -f $policy" EXIT
    fi

    local apt_opts=(-o DPkg::Lock::Timeout=300 -o Dpkg::Use-Pty=0)
    run "apt-get update" as_root env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" -qq update
    run "apt-get install ${missing[*]}" as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get "${apt_opts[@]}" -qq install -y --no-install-recommends "${missing[@]}"

    if [[ $created_policy -eq 1 ]]; then
        as_root rm -f "$policy"
        trap - EXIT
    fi
    for entry in "${APT_SERVICES[@]}"; do
        bin=${entry%%:*}
        command -v "$bin" >/dev/null 2>&1 || die "$bin still missing after apt-get install"
    done
}

install_go() {
    [[ ${#GO_SERVICES[@]} -eq 0 ]] && return 0
    command -v go >/dev/null 2>&1 || die "go not found (needed for: ${GO_SERVICES[*]})"
    local gobin entry bin mod
    gobin=$(go env GOBIN); [[ -n $gobin ]] || gobin="$(go env GOPATH)/bin"
    for entry in "${GO_SERVICES[@]}"; do
        bin=${entry%%:*}; mod=${entry#*:}
        if command -v "$bin" >/dev/null 2>&1 || [[ -x $gobin/$bin ]]; then
            continue
        fi
        run "go install $mod" go install "$mod"
    done
    case ":$PATH:" in *":$gobin:"*) ;; *) log "note: add $gobin to PATH for the Go-installed services" ;; esac
}

install_pip() {
    [[ ${#PIP_SERVICES[@]} -eq 0 ]] && return 0
    local entry bin req reqs=()
    for entry in "${PIP_SERVICES[@]}"; do
        bin=${entry%%:*}; req=${entry#*:}
        command -v "$bin" >/dev/null 2>&1 || reqs+=("$req")
    done
    [[ ${#reqs[@]} -eq 0 ]] && return 0
    run "pip install ${reqs[*]}" "$PYTHON" -m pip install -q --disable-pip-version-check \
        --root-user-action=ignore "${reqs[@]}"
}

install_apt
install_go
install_pip
# FerretDB (MongoDB wire protocol, SQLite backend) for the MongoDB backend tests: cached build
bash "$(dirname "${BASH_SOURCE[0]}")/build-ferretdb.sh" >/dev/null
# Azurite (Azure Storage emulator, npm) for the Azure Storage Queues broker tests: pinned,
# installed into a cache directory keyed by version (tests/services/azurite_svc.py finds it)
AZURITE_VERSION=3.37.0  # keep in step with tests/services/azurite_svc.py
azurite_dir=${MC_CACHE_DIR:-$HOME/.cache/machinery_compat}/azurite-$AZURITE_VERSION
if [[ -x $azurite_dir/node_modules/.bin/azurite-queue ]]; then
    log "azurite $AZURITE_VERSION present: $azurite_dir"
else
    command -v npm >/dev/null 2>&1 || die "npm not found (needed to install azurite $AZURITE_VERSION)"
    mkdir -p "$azurite_dir"
    run "npm install azurite@$AZURITE_VERSION" npm install --prefix "$azurite_dir" --no-audit \
        --no-fund --silent "azurite@$AZURITE_VERSION"
fi
