#!/usr/bin/env bash
# Container smoke test, end to end on one machine with Docker (docs/deploy.md):
#   1. builds the Debian base image from Debian packages if it is missing (debootstrap + docker import; no registry)
#   2. builds inspector-line and inspector-fit from one snapshot of the source (one at a time)
#   3. checks the line image holds no torch and the fit image does
#   4. generates a synthetic category and fits a tiny PatchCore inside the fit image, into a host folder;
#      calibrates it inside the line image (torch-free)
#   5. starts the compose stack (read-only root, non-root user) on that folder, waits for /readyz and the health
#      check, POSTs a good and a defective image, checks the verdicts and the stored records
#   6. POSTs a burst, sends SIGTERM while it is in flight (`compose stop`), checks the stop took less than the
#      grace period, every answered inspection is in the store and the SQLite file passes PRAGMA integrity_check
#   7. prints image sizes, build, fit, start-to-ready and stop seconds
#
# Needs: docker (daemon running; a client that does BuildKit: Docker >= 23, or 20.10 with DOCKER_BUILDKIT=1,
# which this script sets), docker compose v2 or docker-compose >= 1.28, curl, python3; debootstrap and root only
# when the base image has to be built. Environment (all optional):
#   DOCKER=/usr/bin/docker   the docker client        BASE_IMAGE=inspector-base:bookworm
#   DEBIAN_MIRROR / DEBIAN_SECURITY_MIRROR            the base's apt sources (default deb.debian.org)
#   PIP_INDEX_URL            a package index mirror for the builds (default PyPI)
#   PIP_CERT                 CA bundle for pip in the builds (TLS-intercepting proxy); passed as a build secret
#   TORCH_INDEX_URL          extra index for torch in the fit image; default: the CPU wheel index when it is
#                            reachable, else none (torch from PyPI with its CUDA libraries); "" forces none
#   SMOKE_PORT=18000  SMOKE_THREADS=2  SMOKE_WORK=<dir>  SMOKE_KEEP=1 (keep the work folder)
#   SMOKE_GPU_IMAGE=1        also build inspector-line-gpu (LINE_EXTRAS=gpu) and list its onnxruntime providers;
#                            it is only built here, not run (that needs an NVIDIA GPU)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
DOCKER=${DOCKER:-docker}
BASE_IMAGE=${BASE_IMAGE:-inspector-base:bookworm}
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -1)
LINE_IMAGE=inspector-line:$VERSION
FIT_IMAGE=inspector-fit:$VERSION
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
PORT=${SMOKE_PORT:-18000}
THREADS=${SMOKE_THREADS:-2}
GRACE_S=30          # docker-compose.yml stop_grace_period
PROJECT=inspector-smoke
WORK=${SMOKE_WORK:-$(mktemp -d /tmp/inspector-smoke.XXXXXX)}
export DOCKER_BUILDKIT=1 COMPOSE_DOCKER_CLI_BUILD=1

T0=$(date +%s.%N)
now() { date +%s.%N; }
since() { awk -v a="$(now)" -v b="$1" 'BEGIN { printf "%.1f", a - b }'; }
log() { printf '[smoke %6ss] %s\n' "$(since "$T0")" "$*"; }
fail() { log "FAIL: $*"; exit 1; }
lt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }  # lt A B: A < B (decimals)
mb() { awk -v a="$1" 'BEGIN { printf "%d", a / 1e6 }'; }
json() { python3 -c "import json, sys; d = json.load(sys.stdin); print($1)"; }

if $DOCKER compose version >/dev/null 2>&1; then COMPOSE=("$DOCKER" compose)
elif command -v docker-compose >/dev/null; then COMPOSE=(docker-compose)
else fail "neither 'docker compose' nor docker-compose is installed"; fi
for tool in curl python3 awk; do command -v $tool >/dev/null || fail "$tool is needed"; done
$DOCKER info >/dev/null 2>&1 || fail "cannot reach the Docker daemon with '$DOCKER' (is dockerd running?)"

STACK_UP=0
cleanup() {
    if [ "$STACK_UP" = 1 ]; then "${COMPOSE[@]}" down --remove-orphans >/dev/null 2>&1 || true; fi
    if [ "${SMOKE_KEEP:-0}" = 1 ]; then log "work folder kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

log "docker: $($DOCKER version --format 'client {{.Client.Version}}, server {{.Server.Version}}'); compose: $("${COMPOSE[@]}" version --short 2>/dev/null || "${COMPOSE[@]}" version | head -1)"
log "source: $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src pyproject.toml README.md Dockerfile 2>/dev/null || echo ' + uncommitted changes')"

# ---- 1. the base image -------------------------------------------------------------------------------------
if $DOCKER image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    log "base image $BASE_IMAGE present"
else
    [ "$(id -u)" = 0 ] || fail "building $BASE_IMAGE needs root (debootstrap); or build it once as root"
    command -v debootstrap >/dev/null || fail "debootstrap is needed to build $BASE_IMAGE (apt-get install debootstrap)"
    start=$(now)
    rootfs=$WORK/rootfs
    log "building $BASE_IMAGE: debootstrap --variant=minbase bookworm from $DEBIAN_MIRROR"
    debootstrap --variant=minbase bookworm "$rootfs" "$DEBIAN_MIRROR" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log"; fail "debootstrap failed"; }
    # The same suites the host uses: security and point-release updates, not only the release.
    cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $DEBIAN_MIRROR bookworm main
deb $DEBIAN_MIRROR bookworm-updates main
deb $DEBIAN_SECURITY_MIRROR bookworm-security main
EOF
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    : >"$rootfs/etc/hostname"
    tar --numeric-owner -C "$rootfs" -c . \
        | $DOCKER import -c 'ENV LANG=C.UTF-8' -c 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
    log "base image built in $(since "$start") s"
fi

# ---- 2. both images, from one snapshot of the source (others may be editing the checkout meanwhile) --------
context=$WORK/context
mkdir -p "$context"
tar -C "$ROOT" --exclude=__pycache__ --exclude='*.pyc' --exclude='*.egg-info' \
    -c Dockerfile .dockerignore pyproject.toml README.md src | tar -C "$context" -x
build_args=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
[ -n "${PIP_INDEX_URL:-}" ] && build_args+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL")
if [ -n "${PIP_CERT:-}" ]; then
    [ -s "$PIP_CERT" ] || fail "PIP_CERT=$PIP_CERT is not a file"
    build_args+=(--secret "id=pip_cert,src=$PIP_CERT")
fi
if [ -z "${TORCH_INDEX_URL+set}" ]; then
    if curl -sf -m 10 -o /dev/null https://download.pytorch.org/whl/cpu/torch/; then
        TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
    else
        TORCH_INDEX_URL=
        log "download.pytorch.org is not reachable: torch comes from PyPI (with its CUDA libraries)"
    fi
fi

build() {  # target tag [extra args]
    local start target=$1 tag=$2
    shift 2
    start=$(now)
    $DOCKER build --progress=plain "${build_args[@]}" "$@" --target "$target" -t "$tag" "$context" \
        >"$WORK/build-$target.log" 2>&1 || { tail -40 "$WORK/build-$target.log"; fail "building $target"; }
    BUILD_S=$(since "$start")
    log "built $tag in $BUILD_S s"
}
build inspector-line "$LINE_IMAGE"
LINE_BUILD_S=$BUILD_S
build inspector-fit "$FIT_IMAGE" --build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL"
FIT_BUILD_S=$BUILD_S
if [ "${SMOKE_GPU_IMAGE:-0}" = 1 ]; then
    GPU_IMAGE=inspector-line-gpu:$VERSION
    build inspector-line "$GPU_IMAGE" --build-arg LINE_EXTRAS=gpu
    log "$GPU_IMAGE (not run: no GPU here): $($DOCKER run --rm --entrypoint python3 "$GPU_IMAGE" -c "import onnxruntime as o, faiss; print('providers', o.get_available_providers(), 'faiss GPU build', hasattr(faiss, 'StandardGpuResources'))")"
fi

# ---- 3. torch is in the fit image and not in the line image ------------------------------------------------
if out=$($DOCKER run --rm --entrypoint python3 "$LINE_IMAGE" -c "import torch" 2>&1); then
    fail "the line image imports torch"
fi
echo "$out" | grep -q "No module named 'torch'" || fail "unexpected: $out"
for module in torch torchvision timm; do
    $DOCKER run --rm --entrypoint python3 "$LINE_IMAGE" -c "import importlib.util as u, sys; sys.exit(u.find_spec('$module') is not None)" \
        || fail "$module is installed in the line image"
done
log "line image: import torch fails ($(echo "$out" | tail -1)); no torchvision, no timm"
log "fit image: $($DOCKER run --rm --entrypoint python3 "$FIT_IMAGE" -c "import torch, torchvision, timm; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__)")"

# ---- 4. a tiny model, fitted in the fit image and calibrated in the line image -----------------------------
mkdir -p "$WORK/data" "$WORK/models" "$WORK/inspections"
if [ "$(id -u)" = 0 ]; then
    RUN_UID=10001 RUN_GID=10001
    chown -R "$RUN_UID:$RUN_GID" "$WORK/data" "$WORK/models" "$WORK/inspections"
else
    RUN_UID=$(id -u) RUN_GID=$(id -g)
fi
as_user=(--rm --read-only --tmpfs /tmp --user "$RUN_UID:$RUN_GID" --network none)
$DOCKER run "${as_user[@]}" -v "$WORK/data:/work/data" "$FIT_IMAGE" data synthetic --data-root /work/data >/dev/null
start=$(now)
$DOCKER run "${as_user[@]}" -v "$WORK/data:/work/data:ro" -v "$WORK/models:/app/models" "$FIT_IMAGE" \
    fit --category synthetic --data-root /work/data --out /app/models/synthetic --image-size 128 \
    --coreset-ratio 0.1 --threads "$THREADS" -q >"$WORK/fit.log" 2>&1 || { cat "$WORK/fit.log"; fail "fit"; }
FIT_S=$(since "$start")
log "fitted models/synthetic in the fit image in $FIT_S s (read-only root, no network): $(cd "$WORK/models/synthetic" && echo *)"
$DOCKER run "${as_user[@]}" -v "$WORK/data:/work/data:ro" -v "$WORK/models:/app/models" "$LINE_IMAGE" \
    calibrate --model-dir /app/models/synthetic --category synthetic --data-root /work/data --threads "$THREADS" -q \
    >"$WORK/calibrate.log" 2>&1 || { cat "$WORK/calibrate.log"; fail "calibrate in the line image"; }
[ -s "$WORK/models/synthetic/calibration.json" ] || fail "calibrate wrote no calibration.json"
log "calibrated in the line image: threshold $(json "d['image_threshold']" <"$WORK/models/synthetic/calibration.json")"

# ---- 5. the compose stack ----------------------------------------------------------------------------------
export COMPOSE_PROJECT_NAME=$PROJECT COMPOSE_FILE=$ROOT/docker-compose.yml
export INSPECTOR_CAMERA_KEY=cam-$RANDOM$RANDOM INSPECTOR_OPERATOR_KEY=op-$RANDOM$RANDOM INSPECTOR_MODEL=synthetic
export INSPECTOR_MODELS_HOST_DIR=$WORK/models INSPECTOR_STORE_HOST_DIR=$WORK/inspections
export INSPECTOR_PUBLISH=127.0.0.1:$PORT INSPECTOR_UID=$RUN_UID INSPECTOR_GID=$RUN_GID
"${COMPOSE[@]}" config -q || fail "compose config does not validate"
"${COMPOSE[@]}" --profile gpu config -q || fail "compose config (profile gpu) does not validate"
log "compose config validates (default and gpu profile)"
URL=http://127.0.0.1:$PORT
start=$(now)
STACK_UP=1
"${COMPOSE[@]}" up -d --no-build inspector >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log"; fail "compose up"; }
CID=$("${COMPOSE[@]}" ps -q inspector)
until [ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/readyz")" = 200 ]; do
    lt "$(since "$start")" 180 || { "${COMPOSE[@]}" logs; fail "/readyz not 200 after 180 s"; }
    [ "$($DOCKER inspect -f '{{.State.Running}}' "$CID")" = true ] || { "${COMPOSE[@]}" logs; fail "the container exited"; }
    sleep 0.2
done
READY_S=$(since "$start")
log "compose up -d -> /readyz 200 in $READY_S s: $(curl -s "$URL/readyz")"
until [ "$($DOCKER inspect -f '{{.State.Health.Status}}' "$CID")" = healthy ]; do
    lt "$(since "$start")" 240 || fail "health check not healthy: $($DOCKER inspect -f '{{json .State.Health}}' "$CID")"
    sleep 0.5
done
HEALTHY_S=$(since "$start")
log "docker health check healthy after $HEALTHY_S s (interval 10 s)"
log "container: user $($DOCKER inspect -f '{{.Config.User}}' "$CID"), read-only root $($DOCKER inspect -f '{{.HostConfig.ReadonlyRootfs}}' "$CID"), $($DOCKER exec "$CID" sh -c 'touch /app/x 2>&1 || true' | sed 's/^touch: //')"

inspect() {  # image part_id -> the JSON answer
    curl -s -f -H "X-API-Key: $INSPECTOR_CAMERA_KEY" -F "image=@$1;type=image/png" "$URL/v1/inspect?part_id=$2&line=smoke"
}
images=("$WORK/data/synthetic/test/good/"*.png)
good_image=${images[0]}
for defect_dir in "$WORK/data/synthetic/test/"*/; do [ "$(basename "$defect_dir")" != good ] && break; done
images=("$defect_dir"*.png)
defect_image=${images[0]}
[ "$(curl -s -o /dev/null -w '%{http_code}' -F "image=@$good_image;type=image/png" "$URL/v1/inspect")" = 401 ] \
    || fail "an inspection without a key was not refused"
good=$(inspect "$good_image" smoke-good) || fail "POST /v1/inspect (good)"
defect=$(inspect "$defect_image" smoke-defect) || fail "POST /v1/inspect (defect)"
good_verdict=$(echo "$good" | json "d['verdict']")
defect_verdict=$(echo "$defect" | json "d['verdict']")
log "POST /v1/inspect: good part -> verdict $good_verdict, score $(echo "$good" | json "round(d['score'], 3)"); $(basename "$defect_dir") part -> verdict $defect_verdict, score $(echo "$defect" | json "round(d['score'], 3)"), $(echo "$defect" | json "len(d['regions'])") region(s); no key -> 401"
[ "$good_verdict" = pass ] || fail "the good part did not pass: $good"
[ "$defect_verdict" = fail ] || fail "the defective part did not fail: $defect"
ids=$(curl -s -f -H "X-API-Key: $INSPECTOR_CAMERA_KEY" "$URL/v1/inspections?limit=10" | json "' '.join(i['id'] + ':' + str(i['verdict']) for i in d['items'])")
for id in $(echo "$good" | json "d['id']") $(echo "$defect" | json "d['id']"); do
    echo "$ids" | grep -q "$id" || fail "record $id is not in GET /v1/inspections ($ids)"
done
log "both records are in the store (GET /v1/inspections: $ids)"

# ---- 6. SIGTERM while inspections are in flight ------------------------------------------------------------
# Two cameras post back to back; after a second the stack is stopped (SIGTERM). Every inspection the service
# admitted must be answered and recorded: the store holds exactly the answered ones, and once a camera's
# request fails (the listener has closed) none of its later requests is answered. Through the published port
# a failure shows as a reset (curl 55/56: docker-proxy accepts, then finds the container's listener gone) or,
# once the container is gone, as a refused connection (curl 7).
poster() {  # camera
    local i=0 code rc
    while [ ! -e "$WORK/stopped" ] && [ $i -lt 500 ]; do
        i=$((i + 1))
        rc=0
        code=$(curl -s -o /dev/null -w '%{http_code}' -H "X-API-Key: $INSPECTOR_CAMERA_KEY" \
            -F "image=@$good_image;type=image/png" "$URL/v1/inspect?part_id=$1-$i&camera=$1") || rc=$?
        echo "$code $rc $(now)" >>"$WORK/burst-$1"
    done
}
poster cam1 & p1=$!
poster cam2 & p2=$!
sleep 1
start=$(now)
"${COMPOSE[@]}" stop -t $GRACE_S inspector >/dev/null 2>&1
STOP_S=$(since "$start")
touch "$WORK/stopped"
wait $p1 $p2
cat "$WORK"/burst-cam* >"$WORK/burst"
answered=$(awk '$1 == 200' "$WORK/burst" | wc -l)
after_term=$(awk -v t="$start" '$1 == 200 && $3 > t' "$WORK/burst" | wc -l)
summary=$(awk '{ n[$1 " (curl " $2 ")"]++ } END { for (k in n) printf "%s x%d, ", k, n[k] }' "$WORK/burst" | sed 's/, $//')
exit_code=$($DOCKER inspect -f '{{.State.ExitCode}}' "$CID")
exited=$(awk -v a="$(date -d "$($DOCKER inspect -f '{{.State.FinishedAt}}' "$CID")" +%s.%N)" -v b="$start" 'BEGIN { printf "%.1f", a - b }')
log "compose stop (SIGTERM) while 2 cameras post: stopped in $STOP_S s (grace $GRACE_S s), exit code $exit_code"
log "requests (HTTP code, curl exit): $summary; $after_term answered 200 after \`compose stop\` began; the container exited $exited s after it began"
for camera in cam1 cam2; do
    awk 'BEGIN { bad = 0 } $1 != 200 && $1 != 503 { failed = 1 } failed && $1 == 200 { bad = 1 } END { exit bad }' \
        "$WORK/burst-$camera" || fail "$camera got an answer after a failed request: not a clean shutdown ($summary)"
done
lt "$STOP_S" "$GRACE_S" || fail "the service did not stop within the grace period (SIGKILL)"
[ "$exit_code" = 0 ] || fail "the service exited with $exit_code after SIGTERM"
"${COMPOSE[@]}" logs --no-color inspector 2>&1 | grep -E "Shutting down|Waiting for application shutdown|Finished server process|Application shutdown" \
    | sed 's/^/[smoke]   log: /'
wal=$WORK/inspections/inspections.db-wal
[ ! -s "$wal" ] || log "note: a non-empty $(basename "$wal") is left ($(stat -c %s "$wal") bytes)"
check=$($DOCKER run "${as_user[@]}" -v "$WORK/inspections:/data/inspections" --entrypoint python3 "$LINE_IMAGE" -c "
import sqlite3
c = sqlite3.connect('/data/inspections/inspections.db')
print(c.execute('PRAGMA integrity_check').fetchone()[0], c.execute('SELECT count(*) FROM inspections').fetchone()[0])")
read -r integrity records <<<"$check"
log "store after stop: PRAGMA integrity_check = $integrity; $records records (2 + $answered answered 200 to the cameras); -wal left: $([ -e "$wal" ] && echo "yes, $(stat -c %s "$wal") bytes" || echo no)"
[ "$integrity" = ok ] || fail "integrity_check: $integrity"
[ "$records" = $((2 + answered)) ] || fail "$records records in the store, expected $((2 + answered))"
"${COMPOSE[@]}" down --remove-orphans >/dev/null 2>&1
STACK_UP=0

# ---- 7. summary --------------------------------------------------------------------------------------------
line_bytes=$($DOCKER image inspect -f '{{.Size}}' "$LINE_IMAGE")
fit_bytes=$($DOCKER image inspect -f '{{.Size}}' "$FIT_IMAGE")
base_bytes=$($DOCKER image inspect -f '{{.Size}}' "$BASE_IMAGE")
ratio=$(awk -v a="$line_bytes" -v b="$fit_bytes" 'BEGIN { printf "%.3f", a / b }')
echo
echo "container smoke: PASS ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(uname -m), $(nproc) cores)"
printf '  %-28s %6s MB\n' "$BASE_IMAGE" "$(mb "$base_bytes")" "$LINE_IMAGE" "$(mb "$line_bytes")" "$FIT_IMAGE" "$(mb "$fit_bytes")"
if [ -n "${GPU_IMAGE:-}" ]; then printf '  %-28s %6s MB (built, not run)\n' "$GPU_IMAGE" "$(mb "$($DOCKER image inspect -f '{{.Size}}' "$GPU_IMAGE")")"; fi
echo "  line/fit size ratio          $ratio (bar: <= 0.333)"
echo "  torch in the fit image from  ${TORCH_INDEX_URL:-PyPI (default index)}"
echo "  build seconds                line $LINE_BUILD_S, fit $FIT_BUILD_S"
echo "  fit seconds (tiny PatchCore) $FIT_S"
echo "  start-to-ready seconds       $READY_S (compose up -d -> /readyz 200); healthy after $HEALTHY_S"
echo "  stop seconds (SIGTERM)       $STOP_S (grace $GRACE_S s); $after_term answered 200 after it began; container exited after $exited s; store integrity $integrity, $records records"
lt "$line_bytes" "$(awk -v b="$fit_bytes" 'BEGIN { printf "%d", b / 3 + 1 }')" || fail "the line image is more than 1/3 of the fit image"
