#!/usr/bin/env bash
# make test-arm64: the same Dockerfile built for linux/arm64 and run under qemu user emulation,
# as on an ARM64 gateway: the container must report aarch64 and classify a real JPEG correctly.
# It is also a second device: this machine and the emulated CPU each choose their frontier of one
# small pool (two_devices.py), and each must serve what it measured on its own frontier (qemu's
# timings say nothing of real ARM hardware, but it is a different device). Emulated inference is
# ~500-900x slower than native, so a pool of a few variants, a cut reference set and few
# profiling runs. Needs root; `ARM64_STEPS=setup` stops after the emulator and base (to warm a
# cache).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

IMAGE=localhost/edgefit:ci-arm64
NAME=edgefit-ci-arm64-$$
READY_LIMIT_S=${READY_LIMIT_S:-900}
# qemu's default `max` CPU model is ~8x slower on onnxruntime's kernels than a plain Neoverse-N1
# (the core of most ARM64 gateways and cloud instances).
export QEMU_CPU=${QEMU_CPU:-neoverse-n1}

WORK=$(mktemp -d)
trap 'cleanup_container "$NAME"; [ -z "${NATIVE_PID:-}" ] || kill "$NATIVE_PID" 2>/dev/null; rm -rf "$WORK"' EXIT

# bookworm's qemu 7.2 segfaults on onnxruntime >= 1.28; the backported qemu 10 does not.
qemu_setup() {
    local list=/etc/apt/sources.list.d/bookworm-backports.list
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        echo 'deb http://deb.debian.org/debian bookworm-backports main' >"$list"
        APT_UPDATED=
    fi
    local want=10
    if ! qemu-aarch64-static --version 2>/dev/null | grep -qE "version ($want|1[1-9])\."; then
        "${APT[@]}" update -qq
        APT_UPDATED=1
        DEBIAN_FRONTEND=noninteractive "${APT[@]}" install -y -qq --no-install-recommends \
            -t bookworm-backports qemu-user-static >/dev/null
    fi
    log "$(qemu-aarch64-static --version | head -1)"
    # No systemd-binfmt in CI: mount binfmt_misc and register the handler from qemu's own
    # binfmt.d file (flag F: the kernel keeps the interpreter open, so it works in chroots).
    [ -e /proc/sys/fs/binfmt_misc/register ] \
        || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    local entry=/proc/sys/fs/binfmt_misc/qemu-aarch64
    # A handler left by an older qemu (binfmt-support's) would run the 7.2 binary: replace it.
    if [ -e $entry ] && ! grep -q '^interpreter /usr/libexec/qemu-binfmt/aarch64' $entry; then
        echo -1 >$entry
    fi
    [ -e $entry ] || cat /usr/lib/binfmt.d/qemu-aarch64.conf >/proc/sys/fs/binfmt_misc/register
    echo 1 >$entry
    grep -q '^enabled' $entry || die "qemu-aarch64 binfmt handler not enabled"
}

small_pool() {
    chmod 755 "$WORK"
    log "pool: $(PYTHONPATH="$REPO" "$REPO/.venv/bin/python" "$REPO/deploy/container/two_devices.py" pool "$STORE_SRC" "$WORK/pool")"
}

# This machine's frontier of the pool, as a server here chooses it at its first start.
native_frontier() {
    local port
    port=$(free_port)
    EDGEFIT_CACHE_DIR="$WORK/cache" EDGEFIT_WORKERS=1 EDGEFIT_THREADS=1 \
        "$REPO/.venv/bin/edgefit" serve --port "$port" --store "$WORK/pool" >"$WORK/native.log" 2>&1 &
    NATIVE_PID=$!
    local start=$SECONDS
    until curl -fsS -o /dev/null "http://127.0.0.1:$port/readyz" 2>/dev/null; do
        [ $((SECONDS - start)) -lt 120 ] || { tail -20 "$WORK/native.log" >&2; die "native server not ready"; }
        sleep 1
    done
    curl -fsS "http://127.0.0.1:$port/models?pool=true" >"$WORK/native.json"
    kill "$NATIVE_PID"
    NATIVE_PID=
}

run_container() {
    PORT=$(free_port)
    "${PODMAN_RUN[@]}" -d --name "$NAME" --arch arm64 --read-only -p "127.0.0.1:$PORT:8000" \
        -v "$WORK/pool:/models:ro" -e QEMU_CPU="$QEMU_CPU" \
        -e EDGEFIT_PROFILE_RUNS="${EDGEFIT_PROFILE_RUNS:-3}" \
        -e EDGEFIT_WORKERS=1 -e EDGEFIT_THREADS=1 \
        "$IMAGE" 2> >(grep -v 'systemd connection' >&2) >/dev/null
    URL=http://127.0.0.1:$PORT
    log "started $NAME on $URL (the small pool, QEMU_CPU=$QEMU_CPU)"
}

two_frontiers() {
    curl -fsS "$URL/models?pool=true" >"$WORK/arm64.json"
    podman "${STORAGE[@]}" logs "$NAME" 2>&1 | grep -E "int8 check|frontier of the pool" >&2 || true
    PYTHONPATH="$REPO" "$REPO/.venv/bin/python" "$REPO/deploy/container/two_devices.py" check \
        "this machine=$WORK/native.json" "arm64 under qemu=$WORK/arm64.json" >&2 \
        || die "a device serves a variant off the frontier it measured"
}

check_arch() {
    local machine arch
    arch=$(podman "${STORAGE[@]}" image inspect --format '{{.Architecture}}' "$IMAGE")
    machine=$(get_json "$URL/v2" 'j["machine"]')
    log "image architecture: $arch; /v2 machine: $machine"
    [ "$arch" = arm64 ] || die "image architecture is $arch, expected arm64"
    [ "$machine" = aarch64 ] || die "/v2 machine is $machine, expected aarch64"
}

preflight
step "install buildah, podman, runc, debootstrap" container_tools
step "qemu-user-static 10 (bookworm-backports) + binfmt" qemu_setup
step "base image (debootstrap bookworm arm64 --foreign + second stage, cached)" make_base arm64
[ "${ARM64_STEPS:-all}" = setup ] && exit 0
step "build image from Dockerfile (linux/arm64, emulated)" build_image arm64 "$IMAGE"
check_size "$IMAGE" "${MAX_IMAGE_MB:-275}"
step "a small pool of the store" small_pool
step "this machine's frontier of the pool" native_frontier
step "run under emulation (read-only root, store read-only)" run_container
step "wait for /readyz (the emulated CPU chooses its frontier)" wait_ready "$URL" "$READY_LIMIT_S" "$NAME"
step "reports aarch64" check_arch
step "each device serves its own measured frontier" two_frontiers
step "classify a real JPEG ($SAMPLE_IMAGE)" classify "$URL"
log "test-arm64 passed in $((SECONDS - T0)) s"
