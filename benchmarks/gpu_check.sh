#!/usr/bin/env bash
# One prepared GPU check for a CUDA machine (issues 6, 16): extraction overhead (1), probe solver
# (2) and training loop (5) on the device, in float32 and in bf16 autocast with channels-last; the
# streamed data path at 224 px (ResNet-18, bf16, channels-last: pretrain() with RandomResizedCrop
# over varying-size stored images against a bare loop on device tensors); and a bf16
# pretrain/embed smoke run of a tiny config. About 10 minutes on one H200.
# Usage: bash benchmarks/gpu_check.sh [OUTDIR]   (never needed for CI)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-check}
mkdir -p "$out"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))" | tee "$out/device.txt"
for mode in "--precision fp32" "--precision bf16 --channels-last"; do
  python benchmarks/bench_extract.py --images 20000 --width 1.0 --batch 512 $mode | tee -a "$out/extract.md"
  python benchmarks/bench_train.py --images 20000 --width 1.0 $mode | tee -a "$out/train.md"
done
python benchmarks/bench_train.py --arch resnet18 --resolution 224 --images 8192 --width 1.0 --batch 256 --epochs 2 --stream --precision bf16 --channels-last | tee -a "$out/train.md"
python benchmarks/bench_probe.py --rows 50000 --dims 512 2048 | tee "$out/probe.md"
cat > "$out/bf16.yaml" <<YAML
results: $out/study
datasets:
  toy: {source: synthetic, family: shapes, classes: 10, train_per_class: 200, test_per_class: 50}
  glyphs: {source: synthetic, family: glyphs, classes: 10, train_per_class: 100, test_per_class: 50}
grid: {arch: [vggm11, resnet18, vit-t], id_dataset: [toy], resolution: [32]}
ood_sets: [glyphs]
training: {epochs: 2}
compute: {precision: bf16, channels_last: true}
YAML
snakemake --cores 4 --configfile "$out/bf16.yaml" 2>&1 | tail -3
grep -h device "$out"/study/cells/*/cell.json
