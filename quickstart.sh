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
# semantics to keep: the learning check's rates and 6 m start for the fresh head, the student starting
# from the teacher, no semantic loss. The teacher learns from LiDAR here: in 180 steps it gives a depth
# map that reads as one (about 0.19 abs_rel by day), where the self-supervised teacher, the paper's,
# is still flat (about 0.53); the learning check trains both.
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
python train_teacher.py $TINY --data-root "$OUT/world" --out "$OUT/teacher" --steps 180 --supervision lidar \
    --lr-encoder 3e-3 --lr-decoder 3e-3 --init-depth 6 $(resume "$OUT/teacher")
python train_student.py $TINY --data-root "$OUT/world" --out "$OUT/student" --steps 80 \
    --teacher "$OUT/teacher/ckpt.pt" --gdt-root "$OUT/gdt_classic" --conds night rain --teacher-mask none \
    --init-from-teacher --w-sem 0 --lr-encoder 1e-4 --lr-decoder 1e-4 $(resume "$OUT/student")
echo "== teacher (LiDAR-supervised, day-clear training frames only)"
python evaluate.py --ckpt "$OUT/teacher/ckpt.pt" --data-root "$OUT/world" --size $SIZE --workers 0 \
    --out "$OUT/eval_teacher" --save-vis 1
echo "== student (day + classic night / rain translations, distilled from the teacher on the day frame)"
python evaluate.py --ckpt "$OUT/student/ckpt.pt" --data-root "$OUT/world" --size $SIZE --workers 0 \
    --out "$OUT/eval_student" --save-vis 2
echo "quickstart done in $(( $(date +%s) - start )) s: tables in $OUT/eval_*/metrics.csv, pictures (image | predicted"
echo "depth | LiDAR) in $OUT/eval_*/vis/. One seed and a few steps: a smoke run. What SSD gains at night and in"
echo "rain, over seeds and with its spread, is measured by tools/learning_check.py: docs/results.md, section 2."
