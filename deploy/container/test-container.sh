#!/usr/bin/env bash
# make test-container: builds the repo's Dockerfile for linux/amd64 with buildah (no Docker, no
# registry: the base is a local debootstrap of bookworm), runs it with podman on a read-only root
# with the store mounted read-only, and checks it the way a gateway operator would: ready, healthy,
# classifies a real JPEG correctly, has no torch, stops cleanly on SIGTERM. Needs root and the
# store from `make setup`.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

IMAGE=localhost/edgefit:ci-amd64
NAME=edgefit-ci-amd64-$$
READY_LIMIT_S=${READY_LIMIT_S:-300}

trap 'cleanup_container "$NAME"' EXIT

run_container() {
    PORT=$(free_port)
    # --read-only as Kubernetes' readOnlyRootFilesystem would; the image's VOLUME gives the
    # latency-table cache a writable anonymous volume, and podman mounts a tmpfs on /tmp.
    "${PODMAN_RUN[@]}" -d --name "$NAME" --read-only -p "127.0.0.1:$PORT:8000" \
        -v "$STORE_SRC:/models:ro" \
        -e EDGEFIT_VARIANTS="$VARIANTS" -e EDGEFIT_PROFILE_RUNS="${EDGEFIT_PROFILE_RUNS:-5}" \
        "$IMAGE" 2> >(grep -v 'systemd connection' >&2) >/dev/null
    URL=http://127.0.0.1:$PORT
    log "started $NAME on $URL (variants $VARIANTS)"
}

check_running() {
    # podman runs HEALTHCHECKs from systemd timers, which CI lacks: run the image's own once.
    podman "${STORAGE[@]}" healthcheck run "$NAME" 2> >(grep -v 'systemd connection' >&2) \
        || die "the image's HEALTHCHECK failed"
    log "HEALTHCHECK: healthy"
    local machine user served cached
    machine=$(get_json "$URL/v2" 'j["machine"]')
    [ "$machine" = x86_64 ] || die "/v2 machine is $machine, expected x86_64"
    user=$(podman "${STORAGE[@]}" exec "$NAME" id -u)
    [ "$user" = 10001 ] || die "server runs as uid $user, expected 10001"
    # EDGEFIT_VARIANTS is honoured: exactly the requested subset is served.
    served=$(get_json "$URL/models" '",".join(sorted(v["name"] for v in j["variants"]))')
    [ "$served" = "$(tr , '\n' <<<"$VARIANTS" | sort | paste -sd,)" ] \
        || die "served $served, asked for $VARIANTS"
    # Read-only root, yet the latency table was written to the cache volume.
    if podman "${STORAGE[@]}" exec "$NAME" touch /opt/venv/x 2>/dev/null; then
        die "the root filesystem is writable"
    fi
    cached=$(podman "${STORAGE[@]}" exec "$NAME" ls -A /var/cache/edgefit)
    [ -n "$cached" ] || die "nothing written to EDGEFIT_CACHE_DIR (/var/cache/edgefit)"
    log "/v2 machine: $machine; uid: $user; served: $served; root read-only; cache: $cached"
}

# Exec-form CMD makes the server PID 1: SIGTERM must reach it and it must exit 0 after draining.
check_sigterm() {
    podman "${STORAGE[@]}" stop -t 30 "$NAME" >/dev/null 2> >(grep -v 'systemd connection' >&2)
    local code
    code=$(podman "${STORAGE[@]}" inspect -f '{{.State.ExitCode}}' "$NAME")
    [ "$code" = 0 ] || { podman "${STORAGE[@]}" logs "$NAME" 2>&1 | tail -20 >&2;
        die "exit code $code after SIGTERM, expected 0"; }
    log "SIGTERM: exited 0"
}

preflight
# A few variants (the smallest int8, the most accurate int8 and fp32) keep profiling short.
VARIANTS=${EDGEFIT_VARIANTS:-$(pick_variants)}
step "install buildah, podman, runc, debootstrap" container_tools
step "base image (debootstrap bookworm amd64, cached)" make_base amd64
step "build image from Dockerfile (linux/amd64)" build_image amd64 "$IMAGE"
check_size "$IMAGE" "${MAX_IMAGE_MB:-250}"
step "import torch must fail" check_no_torch "$IMAGE"
step "run (read-only root, store read-only)" run_container
step "wait for /readyz" wait_ready "$URL" "$READY_LIMIT_S" "$NAME"
step "healthcheck, /v2, non-root" check_running
step "classify a real JPEG ($SAMPLE_IMAGE)" classify "$URL"
step "graceful stop" check_sigterm
log "test-container passed in $((SECONDS - T0)) s"
