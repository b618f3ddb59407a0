#!/usr/bin/env bash
# The whole SSD pipeline, offline, on the synthetic world with tiny random nets (a few minutes on a
# 2-core CPU): render -> classic weather and tiny-model GDT -> teacher -> student -> evaluate.
# Usage: bash quickstart.sh [OUT]   (default runs/quickstart; rerunning continues where it stopped)
set -euo pipefail
cd "$(dirname "$0")"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TRANSFORMERS_VERBOSITY=error
OUT=${1:-runs/quickstart}
SIZE=90x160
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # tiny nets: threads only spin on small tensors
# A smoke run of every stage, not a learning result (tools/learning_check.py is that). Tiny random nets learn
# nothing at the paper's ViT learning rates in a few hundred steps, and a random "DINOv2" has no
# semantics to keep: the learning check's rates, a 6 m start for the fresh head, the pose pairs in time
# order, the student starting from the teacher, no semantic loss.
TINY="--tiny --size $SIZE --batch-size 4 --workers 1 --no-val --log-every 50"
start=$(date +%s)

python tools/synthetic.py --out "$OUT/world"
python tools/classic_weather.py --dataset nuscenes --data-root "$OUT/world" --out "$OUT/gdt_classic" --cond night rain
python tools/tiny_models.py --out "$OUT/models"  # random tiny stand-ins of every GDT model, in hub-id folders
python gdt.py --tiny --models-dir "$OUT/models" --dataset nuscenes --data-root "$OUT/world" --out "$OUT/gdt_tiny" \
    --cond night --style-dir data --captioner blip   # --tiny: 64x112, 2 steps
echo "== GDT ran on random tiny models (its images in $OUT/gdt_tiny are noise); the student below trains on the"
echo "   classic translations in $OUT/gdt_classic. The learning result is tools/learning_check.py (docs/results.md)."
resume() { [ -f "$1/ckpt.pt" ] && echo --resume || true; }
python train_teacher.py $TINY --data-root "$OUT/world" --out "$OUT/teacher" --steps 180 \
    --lr-encoder 1e-3 --lr-decoder 1e-3 --lr-pose 3e-3 --init-depth 6 --pose-order temporal $(resume "$OUT/teacher")
python train_student.py $TINY --data-root "$OUT/world" --out "$OUT/student" --steps 80 \
    --teacher "$OUT/teacher/ckpt.pt" --gdt-root "$OUT/gdt_classic" --conds night rain \
    --init-from-teacher --w-sem 0 --lr-encoder 1e-4 --lr-decoder 1e-4 $(resume "$OUT/student")
echo "== teacher (day-clear training frames only)"
python evaluate.py --ckpt "$OUT/teacher/ckpt.pt" --data-root "$OUT/world" --size $SIZE --workers 0 \
    --out "$OUT/eval_teacher"
echo "== student (day + classic night / rain translations, teacher loss)"
python evaluate.py --ckpt "$OUT/student/ckpt.pt" --data-root "$OUT/world" --size $SIZE --workers 0 \
    --out "$OUT/eval_student" --save-vis 2
echo "quickstart done in $(( $(date +%s) - start )) s; tables in $OUT/eval_*/metrics.csv, pictures in $OUT/eval_student/vis/"
