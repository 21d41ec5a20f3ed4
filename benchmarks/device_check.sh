#!/bin/bash
# The device checks of issues 12 and 14, as one script for a session that is lent a GPU (run it there from the
# repository root; ~6 min on an H200). The machine has PyTorch but not pydantic: carry its wheels, fetched here with
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     pydantic==2.14.3 pydantic_core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5
# and call the device tool with carry [".whl"] and the command `bash benchmarks/device_check.sh`.
# Writes each table to $OUT (or ./device-out) as markdown.
set -u
OUT=${OUT:-device-out}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 2
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
# expected time per run of the CIFAR suites (random tensors of CIFAR's shape: the files do not travel)
for s in resnet_d_cifar resnet_s_cifar resnet_ds_mnist; do
  timeout 150 python3 benchmarks/suite_cost.py suites/paper/$s.yaml --device cuda --steps 20 --warmup 3 \
    2>&1 | tee "$OUT/cost-$s.md"
done
# solver overhead vs the F-evaluation bound and peak memory on CUDA (issue 14)
timeout 120 python3 benchmarks/bench_overhead.py --device cuda --sections 1,2 2>&1 | tee "$OUT/overhead-cuda.md"
