#!/usr/bin/env bash
# The GPU checks of a lent device machine, in two steps, so that its few minutes go to measuring:
#
#   bash benchmarks/device.sh pack     here: .device/site.tar.xz, the Python packages the device
#                                      image lacks, built for its Python (3.12, x86_64)
#   bash benchmarks/device.sh check    there, through the device tool, carrying .device:
#                                      installs them and cnnsuite, runs the recipe's tests and
#                                      `cnnsuite bench --quick` (recipe, pipeline, endtoend) into $OUT
#
# The device image has torch, torchvision, lightning, torchmetrics, matplotlib and the rest of
# benchmarks/device-image.txt, and no package index. The bundle is the rest of cnnsuite's
# requirements as this checkout's .venv resolves them, less the serving and sweep stacks (not
# used by the checks), and must fit the 64 MiB the device tool carries with the working tree.
set -euo pipefail
cd "$(dirname "$0")/.."

PY_VERSION=${PY_VERSION:-3.12}  # another for a trial of the script on this machine
BUNDLE=.device/site.tar.xz
CARRY_LIMIT_MB=60  # the device tool carries 64 MiB, the working tree included
# Packages only `cnnsuite serve` and `cnnsuite sweep` import: not needed by the checks.
SKIP="litserve fastapi starlette uvicorn pydantic pydantic-core annotated-types typing-inspection pyzmq
      python-multipart opentelemetry-api optuna optuna-integration sqlalchemy alembic mako colorlog"

pack() {
    local py=.venv/bin/python work=.device/build
    [ -x "$py" ] || { echo "device.sh pack: $py not found: run make setup first" >&2; exit 2; }
    rm -rf "$work" && mkdir -p "$work/wheels" "$work/site"
    SKIP="$SKIP" "$py" - benchmarks/device-image.txt >"$work/requirements.txt" <<'EOF'
"""cnnsuite's requirements, closed over this environment, pinned to its versions, less the
device image's packages and SKIP."""
import os, re, sys
from importlib import metadata
from packaging.requirements import Requirement

def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()

present = {norm(line.split("#")[0].strip()) for line in open(sys.argv[1]) if line.split("#")[0].strip()}
present |= {norm(n) for n in os.environ["SKIP"].split()}
found, todo = {}, [("cnnsuite", None)]
while todo:
    name, extras = todo.pop()
    dist = metadata.distribution(name)
    if norm(name) in found:
        continue
    found[norm(name)] = dist.version
    for line in dist.requires or []:
        req = Requirement(line)
        wanted = [{"extra": e} for e in (extras or set()) | {""}]
        if req.marker is None or any(req.marker.evaluate(w) for w in wanted):
            todo.append((req.name, req.extras))
for name, version in sorted(found.items()):
    if name != "cnnsuite" and name not in present and not name.startswith("nvidia-"):
        print(f"{name}=={version}")
EOF
    while read -r req; do
        # a binary wheel for the device's Python where there is one, else this machine builds one
        .venv/bin/pip download -q --no-deps --only-binary=:all: --implementation cp \
            --python-version "$PY_VERSION" --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 --dest "$work/wheels" "$req" 2>/dev/null \
            || .venv/bin/pip wheel -q --no-deps --no-build-isolation -w "$work/wheels" "$req"
    done <"$work/requirements.txt"
    # a wheel unpacked is the package installed (none of these has scripts the checks call)
    for wheel in "$work"/wheels/*.whl; do "$py" -m zipfile -e "$wheel" "$work/site"; done
    find "$work/site" -depth -type d \( -name __pycache__ -o -name tests -o -name test \) -exec rm -rf {} +
    rm -rf "$work/site/pydicom/data/test_files"
    # botocore's models of every AWS service: LitData's s3:// needs S3's and STS's alone
    find "$work/site/botocore/data" -mindepth 1 -maxdepth 1 -type d ! -name s3 ! -name sts -exec rm -rf {} +
    XZ_OPT="-9 -T0" tar -C "$work/site" -cJf "$BUNDLE" .
    local mb=$(( $(stat -c %s "$BUNDLE") / 1048576 ))
    echo "device.sh pack: $BUNDLE, $(wc -l <"$work/requirements.txt") packages, $mb MiB"
    if [ "$mb" -gt "$CARRY_LIMIT_MB" ]; then
        echo "device.sh pack: over $CARRY_LIMIT_MB MiB: the device tool would not carry it with the tree" >&2
        exit 1
    fi
    rm -rf "$work"
}

check() {
    [ -f "$BUNDLE" ] || { echo "device.sh check: $BUNDLE not found: run device.sh pack here and carry .device" >&2; exit 2; }
    # everything under runs/device; $OUT (the device tool brings back 8 files) gets the ones read here
    local work=runs/device site=/tmp/cnnsuite-site
    rm -rf "$work" && mkdir -p "$work" "$site" "${OUT:=runs/device-out}"
    tar -C "$site" -xJf "$BUNDLE"
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    python3 -m pip install -q --no-deps --no-build-isolation -e . >"$work/install.log" 2>&1 \
        || { tail -20 "$work/install.log"; exit 1; }
    { nvidia-smi -L || echo "no nvidia-smi"
      python3 -c "import torch, torchvision, lightning; print('torch', torch.__version__, 'torchvision',
          torchvision.__version__, 'lightning', lightning.__version__, 'cuda', torch.cuda.is_available())"
      # the recipe's CUDA path: its test that needs a GPU is skipped everywhere else
      timeout 150 python3 -m pytest -q -o addopts="-ra" -p no:cacheprovider tests/test_recipe.py 2>&1 | tail -15
    } >"$work/check.log" 2>&1
    cat "$work/check.log"
    local section
    for section in "recipe pipeline" endtoend; do
        local name=bench-${section// /-}
        timeout "$([ "$section" = endtoend ] && echo 240 || echo 150)" \
            python3 -m cnnsuite bench --quick --sections $section --out "$work/$name" >"$work/$name.log" 2>&1 \
            || echo "device.sh check: bench --sections $section stopped: $(tail -1 "$work/$name.log")"
        cp "$work/$name.log" "$OUT/"
        for file in bench.md bench.json; do [ -f "$work/$name/$file" ] && cp "$work/$name/$file" "$OUT/$name.${file#bench.}"; done
    done
    cp "$work/check.log" "$OUT/"
    grep -h -E "^\| |^#" "$OUT"/bench-*.md 2>/dev/null | head -60 || true
}

case "${1:-}" in
    pack) pack ;;
    check) check ;;
    *) echo "usage: bash benchmarks/device.sh pack|check" >&2; exit 2 ;;
esac
