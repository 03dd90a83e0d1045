# Shared by test-container.sh and test-arm64.sh; sourced, never run.
# CI has no Docker engine and no registry: buildah builds the repo's Dockerfile on a Debian
# bookworm base made here with debootstrap, and podman runs it. Everything runs as root.

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SHARED=${SHARED:-$REPO/../shared}
SAMPLE_DIR=${EDGEFIT_SAMPLE_DIR:-$SHARED/imagenet-sample}
STORE_SRC=${STORE_DIR:-$REPO/model_store/artifacts}
# Base tarballs outlive a run: a debootstrap costs minutes, an amd64 one ~2, an emulated one ~6.
CACHE=${EDGEFIT_CI_CACHE:-/var/cache/edgefit-ci}
# vfs + chroot isolation: no overlay or user namespaces needed, which a CI VM may not allow.
STORAGE=(--storage-driver vfs)
# A real ImageNet photo that every variant of the default store classifies correctly with
# p >= 0.84 (the tabby cat is not one: most variants call it an Egyptian cat, 285).
SAMPLE_IMAGE=${EDGEFIT_CHECK_IMAGE:-n01560419_bulbul.JPEG}
T0=$SECONDS

log() { printf '[%s +%4ds] %s\n' "$(date -u +%H:%M:%S)" "$((SECONDS - T0))" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

# Runs one named step and prints how long it took, so CI logs show where the minutes go.
step() {
    local name=$1; shift
    local start=$SECONDS
    log "--- $name"
    "$@"
    log "--- $name: $((SECONDS - start)) s"
}

# Installs only what is missing; apt-get update once per run, and only if something is.
# Waits for the dpkg lock rather than failing when another install is running.
APT=(apt-get -o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)
APT_UPDATED=
apt_ensure() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ -z "$APT_UPDATED" ]; then "${APT[@]}" update -qq; APT_UPDATED=1; fi
    log "apt install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive "${APT[@]}" install -y -qq --no-install-recommends \
        "${missing[@]}" \
        >/dev/null
}

container_tools() {
    apt_ensure buildah podman runc debootstrap ca-certificates netavark aardvark-dns iptables \
        curl
}

# make_base ARCH: a local image localhost/edgefit-base:bookworm-ARCH (debootstrap minbase with
# Python 3.11), made from a cached rootfs tarball when there is one.
# No python3-pip: the image needs venv's own bootstrap wheels only (pip, setuptools and wheel are
# 21 MB). The include list's hash names the tarball and the tag, so a changed list rebuilds them.
BASE_PACKAGES=python3,python3-venv,ca-certificates
make_base() {
    local arch=$1 key
    key=$(printf %s "$BASE_PACKAGES" | sha256sum | cut -c1-8)
    local tag=localhost/edgefit-base:bookworm-$arch-$key
    local tarball=$CACHE/bookworm-$arch-$key.tar
    if buildah "${STORAGE[@]}" inspect --type image "$tag" >/dev/null 2>&1; then
        log "base $tag present"
        BASE_TAG=$tag
        return 0
    fi
    mkdir -p "$CACHE"
    if [ ! -s "$tarball" ]; then
        local root
        root=$(mktemp -d "$CACHE/rootfs-$arch.XXXX")
        local inc=$BASE_PACKAGES
        if [ "$arch" = "$(dpkg --print-architecture)" ]; then
            debootstrap --variant=minbase --include=$inc bookworm "$root" \
                http://deb.debian.org/debian >"$CACHE/debootstrap-$arch.log" 2>&1 \
                || { tail -20 "$CACHE/debootstrap-$arch.log"; die "debootstrap $arch"; }
        else
            # Foreign: unpack here, then run the maintainer scripts under qemu (binfmt).
            debootstrap --arch="$arch" --foreign --variant=minbase --include=$inc bookworm \
                "$root" http://deb.debian.org/debian >"$CACHE/debootstrap-$arch.log" 2>&1 \
                || { tail -20 "$CACHE/debootstrap-$arch.log"; die "debootstrap $arch (1st)"; }
            chroot "$root" /debootstrap/debootstrap --second-stage \
                >>"$CACHE/debootstrap-$arch.log" 2>&1 \
                || { tail -20 "$CACHE/debootstrap-$arch.log"; die "debootstrap $arch (2nd)"; }
        fi
        # Package caches and lists are dead weight in every image built on this base.
        rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
            "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
        tar -C "$root" --numeric-owner -cf "$tarball.tmp" .
        mv "$tarball.tmp" "$tarball"
        rm -rf "$root"
    fi
    local ctx
    ctx=$(mktemp -d)
    ln "$tarball" "$ctx/rootfs.tar" 2>/dev/null || cp "$tarball" "$ctx/rootfs.tar"
    printf 'FROM scratch\nADD rootfs.tar /\nCMD ["/bin/bash"]\n' >"$ctx/Containerfile"
    buildah "${STORAGE[@]}" build --quiet --isolation chroot --arch "$arch" -t "$tag" \
        -f "$ctx/Containerfile" "$ctx" >/dev/null
    rm -rf "$ctx"
    BASE_TAG=$tag
}

# build_image ARCH TAG: the repo's own Dockerfile, as CI's users would build it, on the base.
# --format docker keeps HEALTHCHECK, which the OCI image format has no field for.
# CI reaches PyPI through a TLS-intercepting egress proxy whose CA only the host trusts: the
# host's CA bundle and a pip.conf naming it are bind-mounted into the RUN steps (-v), so the
# build trusts it and the image never contains it.
build_image() {
    local arch=$1 tag=$2 mounts=() ca=/etc/ssl/certs/ca-certificates.crt
    if [ -s "$ca" ]; then
        mkdir -p "$CACHE"
        printf '[global]\ncert = %s\n' "$ca" >"$CACHE/build-pip.conf"
        mounts=(-v "$ca:$ca:ro" -v "$CACHE/build-pip.conf:/etc/pip.conf:ro")
    fi
    # The previous run's image would stay behind untagged, a full copy under vfs.
    buildah "${STORAGE[@]}" rmi -f "$tag" >/dev/null 2>&1 || true
    buildah "${STORAGE[@]}" build --isolation chroot --format docker --layers=false --force-rm \
        "${mounts[@]}" --arch "$arch" --build-arg BASE_IMAGE="$BASE_TAG" \
        --build-arg REVISION="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
        -t "$tag" -f "$REPO/Dockerfile" "$REPO"
}

# podman as CI can run it: runc, explicit ulimits (the defaults exceed this VM's hard limits).
PODMAN_RUN=(podman "${STORAGE[@]}" run --runtime runc
    --ulimit nofile=1024:1024 --ulimit nproc=4096:4096)

# wait_ready URL SECONDS NAME: polls /readyz; fails early if the container died.
wait_ready() {
    local url=$1 limit=$2 name=$3 start=$SECONDS
    while :; do
        if curl -fsS -o /dev/null "$url/readyz" 2>/dev/null; then
            log "ready after $((SECONDS - start)) s"
            return 0
        fi
        if [ "$(podman "${STORAGE[@]}" inspect -f '{{.State.Running}}' "$name" 2>/dev/null)" \
            != "true" ]; then
            podman "${STORAGE[@]}" logs "$name" 2>&1 | tail -40 >&2
            die "container $name exited before it was ready"
        fi
        if [ $((SECONDS - start)) -ge "$limit" ]; then
            podman "${STORAGE[@]}" logs "$name" 2>&1 | tail -40 >&2
            die "not ready within $limit s"
        fi
        sleep 2
    done
}

# The true class: the sample directory is sorted by wnid, which is ImageNet's class order.
true_class() {
    python3 -c 'import os, sys; print(sorted(os.listdir(sys.argv[1])).index(sys.argv[2]))' \
        "$SAMPLE_DIR" "$SAMPLE_IMAGE"
}

# classify URL: posts the real JPEG and checks that top-1 is its true ImageNet class.
classify() {
    local url=$1 out want
    want=$(true_class)
    out=$(curl -fsS --max-time 600 -H 'Content-Type: image/jpeg' \
        --data-binary "@$SAMPLE_DIR/$SAMPLE_IMAGE" "$url/classify?top_k=3") \
        || die "POST /classify failed"
    log "classify $SAMPLE_IMAGE: $out"
    python3 - "$out" "$want" <<'EOF' || die "wrong top-1 for $SAMPLE_IMAGE (true class $want)"
import json, sys
body, want = json.loads(sys.argv[1]), int(sys.argv[2])
top = body["predictions"][0]
print(f"top-1 {top['class_id']} ({top.get('label')}, p={top['score']:.3f}), true {want};"
      f" by {body['model']['name']}, server total {body['timing']['total_ms']} ms",
      file=sys.stderr)
sys.exit(0 if top["class_id"] == want else 1)
EOF
}

# pick_variants: names from the store's manifest, so the checks follow the store: the int8
# variant with the least compute, the most accurate int8 and the most accurate fp32.
pick_variants() {
    python3 - "$STORE_SRC/manifest.json" <<'EOF'
import json, sys
variants = json.load(open(sys.argv[1]))["variants"]
int8 = [v for v in variants if v["precision"] == "int8"] or variants
small = min(int8, key=lambda v: (v["resolution"], v["size_bytes"]))  # least compute
best = lambda vs: max(vs, key=lambda v: v["top1"] or 0)
fp32 = [v for v in variants if v["precision"] == "fp32"] or variants
print(",".join(dict.fromkeys([small["name"], best(int8)["name"], best(fp32)["name"]])))
EOF
}

# Removes what this run started (the container and its anonymous cache volume), even when a
# check failed half-way.
cleanup_container() {
    podman "${STORAGE[@]}" rm -f -v -t 5 "$1" >/dev/null 2>&1 || true
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# get_json URL EXPR: fetches URL and prints the Python expression EXPR of its JSON body `j`.
get_json() {
    curl -fsS --max-time 60 "$1" | python3 -c "import json, sys; j = json.load(sys.stdin); print($2)"
}

image_size_mb() {
    podman "${STORAGE[@]}" image inspect --format '{{.Size}}' "$1" | awk '{printf "%.0f", $1/1e6}'
}

# check_size IMAGE LIMIT_MB: reports the total and each layer that has a size (the base, then the
# app's one layer), and fails above the limit (a gateway pulls it over a thin link).
check_size() {
    local size
    size=$(image_size_mb "$1")
    log "image size: $size MB ($1 on $BASE_TAG); layers:"
    podman "${STORAGE[@]}" image history --format '{{.Size}}\t{{.CreatedBy}}' "$1" \
        | awk -F'\t' '$1 != "0B" && $1 != "0 B" {printf "  %8s  %.70s\n", $1, $2}' >&2
    [ "$size" -le "$2" ] || die "the image is $size MB, more than $2 MB"
}

# check_no_torch IMAGE: the serving image must not contain torch (nor need it).
check_no_torch() {
    local out
    if out=$("${PODMAN_RUN[@]}" --rm --network none "$1" python3 -c 'import torch' 2>&1); then
        die "'import torch' succeeded inside $1"
    fi
    grep -q "No module named 'torch'" <<<"$out" || die "unexpected failure: $out"
    log "import torch fails inside the image, as it must: $(grep -o "No module named 'torch'" <<<"$out")"
}

preflight() {
    [ "$(id -u)" -eq 0 ] || die "run as root (apt, debootstrap, buildah chroot isolation)"
    # SKIP_STORE_CHECK=1 lets the tool and base-image steps run (to warm a cache) before a store.
    [ -n "${SKIP_STORE_CHECK:-}" ] || [ -s "$STORE_SRC/manifest.json" ] \
        || die "no store at $STORE_SRC: run 'make setup' first"
    [ -s "$SAMPLE_DIR/$SAMPLE_IMAGE" ] \
        || die "no $SAMPLE_DIR/$SAMPLE_IMAGE (set SHARED or EDGEFIT_SAMPLE_DIR)"
    # The container runs as uid 10001 and reads the store through a read-only bind mount: files
    # only root can read would fail there as on a gateway, so say so now, not minutes later.
    [ -n "${SKIP_STORE_CHECK:-}" ] && return 0
    local unreadable
    unreadable=$(find "$STORE_SRC" \( -type f ! -perm -o=r \) -o \( -type d ! -perm -o=rx \))
    [ -z "$unreadable" ] || die "store files not readable by the container's non-root user" \
        "(uid 10001): $unreadable -- the store must be world-readable (0644 files, 0755 dirs)"
}
