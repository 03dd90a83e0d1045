#!/usr/bin/env bash
# make test-arm64: the same Dockerfile built for linux/arm64 and run under qemu user emulation,
# as on an ARM64 gateway: the container must report aarch64 and classify a real JPEG correctly.
# Emulated inference is ~500-900x slower than native, so one small int8 variant and few profiling
# runs. Needs root; `ARM64_STEPS=setup` stops after the emulator and base (to warm a cache).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

IMAGE=localhost/edgefit:ci-arm64
NAME=edgefit-ci-arm64-$$
READY_LIMIT_S=${READY_LIMIT_S:-900}
# qemu's default `max` CPU model is ~8x slower on onnxruntime's kernels than a plain Neoverse-N1
# (the core of most ARM64 gateways and cloud instances).
export QEMU_CPU=${QEMU_CPU:-neoverse-n1}

trap 'cleanup_container "$NAME"' EXIT

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

run_container() {
    PORT=$(free_port)
    "${PODMAN_RUN[@]}" -d --name "$NAME" --arch arm64 --read-only -p "127.0.0.1:$PORT:8000" \
        -v "$STORE_SRC:/models:ro" -e QEMU_CPU="$QEMU_CPU" \
        -e EDGEFIT_VARIANTS="$VARIANT" -e EDGEFIT_PROFILE_RUNS="${EDGEFIT_PROFILE_RUNS:-3}" \
        -e EDGEFIT_WORKERS=1 -e EDGEFIT_THREADS=1 \
        "$IMAGE" 2> >(grep -v 'systemd connection' >&2) >/dev/null
    URL=http://127.0.0.1:$PORT
    log "started $NAME on $URL (variant $VARIANT, QEMU_CPU=$QEMU_CPU)"
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
VARIANT=${EDGEFIT_ARM64_VARIANT:-$(pick_variants small)}
step "install buildah, podman, runc, debootstrap" container_tools
step "qemu-user-static 10 (bookworm-backports) + binfmt" qemu_setup
step "base image (debootstrap bookworm arm64 --foreign + second stage, cached)" make_base arm64
[ "${ARM64_STEPS:-all}" = setup ] && exit 0
step "build image from Dockerfile (linux/arm64, emulated)" build_image arm64 "$IMAGE"
check_size "$IMAGE" "${MAX_IMAGE_MB:-275}"
step "run under emulation (read-only root, store read-only)" run_container
step "wait for /readyz" wait_ready "$URL" "$READY_LIMIT_S" "$NAME"
step "reports aarch64" check_arch
step "classify a real JPEG ($SAMPLE_IMAGE)" classify "$URL"
log "test-arm64 passed in $((SECONDS - T0)) s"
