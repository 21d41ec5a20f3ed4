#!/bin/bash
# The device checks of issues 12 and 14, as one script for a session that is lent a GPU (run it there from the
# repository root; ~8 min on an H200 (measured 2026-12-04: 6 min for parts 1-3 then), each part bounded by its own timeout and written to $OUT as it goes, so a
# cut-short run still returns what it measured). The machine has PyTorch but neither pydantic nor MLflow/Optuna:
# carry their wheels (~36 MB; the repository is ~25 MB of the 64 MiB that travel), fetched here with
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d /tmp/w mlflow==3.17.2 optuna==5.0.0 torchdeq
# keeping in .whl only the wheels whose package the machine lacks (../.library/device/KINDS.md lists its packages),
# and call the device tool with carry [".whl"] and the command `bash benchmarks/device_check.sh`.
#   DEV=cpu bash benchmarks/device_check.sh   runs the same parts here (slowly), to check the script itself.
set -u
OUT=${OUT:-device-out}
DEV=${DEV:-cuda}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 2
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  python3 -c "import torch, mlflow, optuna, pydantic; print('python', __import__('sys').version.split()[0], 'torch', \
torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no cuda', 'mlflow', \
mlflow.__version__, 'optuna', optuna.__version__, 'pydantic', pydantic.__version__)" 2>&1; } | tee "$OUT/gpu.txt"

# 1. issue 14: solver overhead vs the F-evaluation bound (and torchdeq's Anderson) and peak memory on CUDA
timeout 120 python3 benchmarks/bench_overhead.py --device "$DEV" --sections 1,2 2>&1 | tee "$OUT/overhead.md"

# 2. the CLI end to end on the device: the quickstart suite tracked in MLflow and its report (on CUDA each cell in a
#    fresh process); then one implicit cell alone into a second store, and the digits cells one after another in one
#    process (--executor local) into a third, compared curve by curve with the first (same numbers whatever ran
#    before them in the process?)
Q=/tmp/qs; rm -rf $Q; mkdir -p $Q
( timeout 200 python3 -m bench run suites/quickstart.yaml --device "$DEV" --tracking-uri sqlite:///$Q/a.db 2>&1 \
    | tail -25
  ls reports/quickstart 2>/dev/null | head -20
  cp reports/quickstart/index.md "$OUT/quickstart-index.md" 2>/dev/null
  timeout 60 python3 -m bench run suites/quickstart.yaml --device "$DEV" --only case=digits \
    --only model.layer.theta=1.0 --no-report --tracking-uri sqlite:///$Q/b.db 2>&1 | tail -5
  timeout 90 python3 -m bench run suites/quickstart.yaml --device "$DEV" --only case=digits --executor local \
    --no-report --tracking-uri sqlite:///$Q/l.db 2>&1 | tail -5
  python3 benchmarks/compare_stores.py sqlite:///$Q/a.db sqlite:///$Q/b.db 2>&1
  python3 benchmarks/compare_stores.py sqlite:///$Q/b.db sqlite:///$Q/l.db 2>&1
) | tee "$OUT/quickstart.txt"

# 3. issue 12: expected time per run of the CIFAR suites and of NEMON's conv model (random tensors of the real
#    shapes: the data files do not travel)
for s in resnet_d_cifar resnet_s_cifar resnet_ds_mnist nemon_mnist; do
  only=""; [ $s = nemon_mnist ] && only="--only conv"
  timeout 80 python3 benchmarks/suite_cost.py suites/paper/$s.yaml --device "$DEV" --steps 10 --warmup 2 $only \
    2>&1 | tee "$OUT/cost-$s.md"
done
