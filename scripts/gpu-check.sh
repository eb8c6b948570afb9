#!/usr/bin/env bash
# The checks that need a GPU, in one run on a lent machine (see README, "GPU"): the CUDA tests of
# training, evaluation and predict; one NCCL rank through torchrun; the GPU inference bench.
# Run from the repository root on a machine whose python3 has a CUDA torch. Wheels of the
# project's other dependencies may be given in .whl/ (py3.12, no network there); Fashion-MNIST in
# .gpu/fashion-mnist. Results go to $OUT (or ./gpu-out).
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 DM_GPU_FASHION=${DM_GPU_FASHION:-$PWD/.gpu/fashion-mnist}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())' | tee -a "$OUT/gpu.txt"
echo "== pytest (CUDA: device, predict, metrics, loop)"
timeout 240 python3 -m pytest -o addopts="" -q -p no:cacheprovider tests/train/test_device.py \
  tests/evaluate/test_predict.py tests/evaluate/test_metrics.py 2>&1 | tee "$OUT/pytest.txt" | tail -25
echo "== one NCCL rank through torchrun"
W=$(mktemp -d)/ws
python3 -m datamoat --home "$W" init >/dev/null && python3 -m datamoat --home "$W" data import digits --json >/dev/null
timeout 120 python3 -m torch.distributed.run --standalone --nproc-per-node 1 -m datamoat --home "$W" train \
  --data digits --arch mlp --epochs 2 --device cuda --json 2>"$OUT/nccl.err" | tee "$OUT/nccl.json" | head -c 600
echo; tail -5 "$OUT/nccl.err"
echo "== bench gpu_infer"
timeout 300 python3 bench/run.py gpu_infer 2>&1 | tail -30
cp bench/results/gpu_infer.* "$OUT/" 2>/dev/null
