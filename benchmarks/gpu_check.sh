#!/usr/bin/env bash
# The first minutes on a GPU machine, spent measuring rather than debugging (docs/scaling.md, "GPU check").
#
#   bash benchmarks/gpu_check.sh            # from the repo root; results in ${OUT:-gpu-check}/
#
# Budget: under 10 minutes on one H100/H200-class GPU with 16 CPU cores. Steps, each timed and logged:
#   0. environment: nvidia-smi, torch / CUDA versions, the Python packages ncbench needs (fails at once,
#      naming the missing ones, instead of half-way through);
#   1. the CUDA test marks: every test that skips without a CUDA device (pytest -k cuda);
#   2. the scale rehearsal on CUDA (benchmarks/scale.py): CIFAR-FS at full size, then mini-ImageNet at full
#      size: per-stage wall time, images/s, peak RSS and peak GPU memory, achieved GFLOP/s of a training step;
#   3. DistributedDataParallel on NCCL with 1 GPU (torchrun, 1 process): ncbench's own training step on
#      conv4, images/s and peak GPU memory.
# Nothing is downloaded: the rehearsal writes synthetic data in the real on-disk formats.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0
step() { echo; echo "=== $1 ($(date -u +%T))"; }

step "0. environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || { echo "gpu_check: no NVIDIA GPU visible" >&2; exit 2; }
$PY - <<'PY' || exit 2
import importlib, sys
missing = [m for m in ("torch", "torchvision", "numpy", "pandas", "sklearn", "safetensors", "yaml", "filelock", "tqdm",
                       "PIL", "matplotlib", "pytest") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu_check: missing Python packages {missing}: install them (pip install -e '.[test]') first")
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, device {torch.cuda.get_device_name(0)}, "
      f"bf16 {torch.cuda.is_bf16_supported()}")
assert torch.cuda.is_available(), "torch sees no CUDA device"
PY

step "1. CUDA tests"
timeout 120 $PY -m pytest -q -k cuda -p no:cacheprovider tests/ 2>&1 | tee "$OUT/cuda-tests.log" | tail -5 || status=1

step "2. scale rehearsal on CUDA"
for run in cifar-fs:150 mini-imagenet:330; do  # task:timeout; mini-ImageNet writes and decodes 60,000 JPEGs on the CPU
  task=${run%%:*}
  timeout "${run##*:}" $PY benchmarks/scale.py "$task" --device cuda --json "$OUT/scale-$task.json" 2>&1 \
    | tee "$OUT/scale-$task.log" | grep -v '^\s*$' | tail -22 || status=1
done

step "3. DDP on NCCL, 1 GPU"
timeout 120 $PY -m torch.distributed.run --standalone --nproc-per-node=1 - <<'PY' 2>&1 | tee "$OUT/ddp.log" || status=1
import time
import numpy as np, torch, torch.distributed as dist
from ncbench.backbones import build_backbone
from ncbench.pretrain import _make_classifier, _Net, _train_epoch

dist.init_process_group("nccl")
dev = torch.device("cuda", 0)
torch.cuda.set_device(dev)
pp = {"image_size": [32, 32], "channels": 1, "mean": [0.5], "std": [0.25]}
torch.manual_seed(0)
model = build_backbone("conv4", in_channels=1, image_size=32).to(dev)
net = torch.nn.parallel.DistributedDataParallel(_Net(model, _make_classifier("linear", model.feature_dim, 64, 0).to(dev)),
                                                device_ids=[0])
opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
rng = np.random.default_rng(0)
images = torch.from_numpy(rng.integers(0, 256, (256 * 40, 32, 32, 1), dtype=np.uint8))
labels = torch.from_numpy(rng.integers(0, 64, len(images)))
_train_epoch(net, opt, images[:2560], labels[:2560], pp, "ce", 256, torch.Generator().manual_seed(1))  # warm-up
torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); start = time.perf_counter()
loss, acc = _train_epoch(net, opt, images, labels, pp, "ce", 256, torch.Generator().manual_seed(0))
torch.cuda.synchronize(); seconds = time.perf_counter() - start
print(f"DDP/NCCL world_size {dist.get_world_size()}: conv4 32x32, 40 steps of 256: {len(images) / seconds:.0f} images/s, "
      f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB, loss {loss:.3f}")
dist.destroy_process_group()
PY

echo; echo "gpu_check: done (exit $status); logs in $OUT/"
exit $status
