# Sourced by docker/up and docker/down: the repository root, the compose
# command, and the fixed names docker-compose.yml gives its containers.
# shellcheck shell=bash

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly root
readonly project=keel
readonly containers=(keel-node1 keel-node2 keel-node3)

die() {
    echo "$(basename "$0"): $*" >&2
    exit 1
}

# The Compose v2 plugin (`docker compose`) when installed, else the
# standalone v1 `docker-compose`; both read docker-compose.yml the same way.
# The project name is fixed so both name what they create alike.
compose() {
    if docker compose version >/dev/null 2>&1; then
        docker compose -p "$project" -f "$root/docker-compose.yml" "$@"
    elif command -v docker-compose >/dev/null 2>&1; then
        docker-compose -p "$project" -f "$root/docker-compose.yml" "$@"
    else
        die "neither the docker compose plugin nor docker-compose is installed"
    fi
}

require_docker() {
    command -v docker >/dev/null 2>&1 || die "docker is not installed (or not on PATH)"
    docker info >/dev/null 2>&1 || die "cannot reach the Docker daemon (is it running, and may this user use it?)"
}
