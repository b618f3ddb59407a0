"""Summary of a gdt.py output folder: per condition the count, the rejection rate, the delta1 / abs_rel
percentiles of the geometry audit (report.json), the delta1 histogram (<cond>_agreement.png) and the
16 worst frames (<cond>_worst.png: day | control depth | translation | its depth), docs/method.md §1.

    python tools/gdt_report.py /data/gdt                        # writes /data/gdt/report/
    python tools/gdt_report.py runs/gdt_tiny --out runs/report --models-dir runs/tiny_models

The worst frames' depth maps are recomputed with the run's depth model (from the manifest; or
--depth-model, or the same folder name under --models-dir).
"""
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tools/ is not a package
import data  # noqa: E402
import gdt  # noqa: E402

WORST_COUNT = 16


def percentiles(values):
    v = np.asarray(values, dtype=np.float64)
    return {"min": float(v.min()), **{f"p{q}": float(np.percentile(v, q)) for q in (5, 25, 50, 75, 95)},
            "max": float(v.max()), "mean": float(v.mean())}


def agreement_histogram(delta1, threshold, title, path):
    """PNG histogram of the delta1 agreements (20 bins over [0, 1]), --min-agreement as a red line."""
    width, height, (x0, x1, y0, y1) = 480, 260, (40, 465, 28, 225)
    counts = np.histogram(delta1, bins=20, range=(0, 1))[0]
    image = Image.new("RGB", (width, height), "white")
    pen, font = ImageDraw.Draw(image), ImageFont.load_default(size=12)  # TrueType: the bitmap default drops spaces
    for b, count in enumerate(counts):
        left = x0 + (x1 - x0) * b / 20
        pen.rectangle([left + 1, y1 - (y1 - y0) * count / max(counts.max(), 1), left + (x1 - x0) / 20 - 1, y1],
                      fill=(70, 110, 180))
    pen.line([x0, y0, x0, y1, x1, y1], fill="black")
    for v in (0, 0.25, 0.5, 0.75, 1):
        pen.text((x0 + (x1 - x0) * v - 8, y1 + 4), f"{v:g}", fill="black", font=font)
    pen.text((4, y0 - 4), str(counts.max()), fill="black", font=font)
    pen.text((4, y1 - 10), "0", fill="black", font=font)
    if threshold:
        pen.line([x0 + (x1 - x0) * threshold, y0, x0 + (x1 - x0) * threshold, y1], fill=(220, 30, 30), width=2)
    pen.text((x0, 6), title, fill="black", font=font)
    pen.text((x0 + 90, y1 + 18), "delta1: share of pixels within 1.25x of the control depth", fill="black", font=font)
    gdt.save_atomic(image, Path(path))


def fit(pen, text, font, width):
    """`text`, shortened from the left with an ellipsis until it fits `width` pixels (a path's tail names it)."""
    if pen.textlength(text, font=font) <= width:
        return text
    while text and pen.textlength("..." + text, font=font) > width:
        text = text[1:]
    return "..." + text


def contact_sheet(rows, path, height=96):
    """One PNG of rows ((name, scores), [day, control depth, translation, depth of the translation]), each
    panel `height` pixels high, in titled columns; the name and the scores under each row, both kept inside
    the sheet."""
    titles = ("day", "control depth", "translation", "its depth, aligned")
    rows = [(label, [im.resize((round(im.width * height / im.height), height)) for im in panels])
            for label, panels in rows]
    lefts = np.cumsum([0] + [max(panels[c].width for _, panels in rows) + 4 for c in range(len(titles))])
    font = ImageFont.load_default(size=12)  # a TrueType font: the bitmap default drops spaces
    sheet = Image.new("RGB", (int(lefts[-1]), 18 + len(rows) * (height + 18)), "white")
    pen = ImageDraw.Draw(sheet)
    for left, right, title in zip(lefts, lefts[1:], titles):
        pen.text((int(left) + 2, 2), fit(pen, title, font, right - left - 4), fill="black", font=font)
    for r, ((name, scores), panels) in enumerate(rows):
        top = 18 + r * (height + 18)
        for left, im in zip(lefts, panels):
            sheet.paste(im.convert("RGB"), (int(left), top))
        scores_width = pen.textlength(scores, font=font)
        pen.text((2, top + height + 2), fit(pen, name, font, sheet.width - scores_width - 16), fill="black", font=font)
        pen.text((sheet.width - 2, top + height + 2), scores, fill="black", font=font, anchor="ra")
    gdt.save_atomic(sheet, Path(path))


def depth_model_of(record, args):
    """The depth model to recompute a record's maps with: --depth-model, else the run's own (from the
    manifest; under --models-dir, the folder of the same name there), else gdt.py's default."""
    run_model = record.get("models", {}).get("depth_model") or gdt.GDT_MODELS["depth_model"]
    if args.depth_model:
        return args.depth_model
    return os.path.join(args.models_dir, os.path.basename(run_model.rstrip("/"))) if args.models_dir else run_model


def grey(x):
    return Image.fromarray(gdt.to_uint8(x[..., 0] if x.ndim == 3 else x))


def worst_frames_sheet(args, cond, records, path, loaded):
    """Contact sheet of the WORST_COUNT frames of lowest delta1 that have an image (ok, or kept
    rejected), their depth maps recomputed (models kept in `loaded` for the next condition).
    Returns their recomputed agreements: the manifest's when the model is the run's."""
    folder = Path(args.gdt_root, cond)

    def image_path(record):
        return folder / record["output"] if record["status"] == "ok" else folder / "rejected" / record["output"]
    shown = sorted((r for r in records if image_path(r).exists()), key=lambda r: r["agreement"]["delta1"])
    shown = shown[:WORST_COUNT]
    if not shown:
        return []
    settings, model = shown[0].get("settings", {}), depth_model_of(shown[0], args)
    if model not in loaded:
        loaded[model] = gdt.load_depth_model(model, torch.device("cpu"), torch.float32, "--depth-model DIR or ")
    predict, tiles, control_dir = loaded[model], settings.get("depth_tiles", 1), settings.get("control_dir")
    rows, worst = [], []
    for r in shown:
        day = gdt.as_rgb8(data.load_image(os.path.join(args.data_root, r["key"]) if args.data_root else r["source"]))
        control = gdt.load_control_map(control_dir, r["key"]) if control_dir else gdt.control_depth(predict, day, tiles)
        translation = gdt.as_rgb8(data.load_image(image_path(r)))
        metrics, aligned = gdt.geometry_agreement(gdt.control_depth(predict, translation, tiles), control)
        rows.append(((r["output"], f"delta1 {metrics['delta1']:.3f}   abs_rel {metrics['abs_rel']:.3f}   {r['status']}"),
                     [day, grey(control), translation, grey(aligned)]))
        worst.append(dict(output=r["output"], status=r["status"], **metrics))
    contact_sheet(rows, path)
    return worst


def condition_summary(args, cond, out, loaded):
    """report.json's entry of one condition; writes its histogram and contact sheet."""
    records = list(data.read_manifests(Path(args.gdt_root, cond)).values())
    for r in records:
        r.setdefault("status", "ok")  # runs from before the audit
    audited = [r for r in records if r.get("agreement")]
    rejected = sum(r["status"] == "rejected" for r in records)
    summary = dict(count=len(records), ok=len(records) - rejected, rejected=rejected,
                   rejection_rate=rejected / len(records), audited=len(audited))
    if audited:
        threshold = max(r.get("settings", {}).get("min_agreement") or 0 for r in audited)
        delta1 = [r["agreement"]["delta1"] for r in audited]
        agreement_histogram(delta1, threshold, f"{cond}: {len(audited)} audited, {rejected} rejected",
                            out / f"{cond}_agreement.png")
        summary.update(min_agreement=threshold, histogram=f"{cond}_agreement.png",
                       mean_attempts=float(np.mean([len(r.get("attempts", [0])) for r in audited])),
                       delta1=percentiles(delta1), abs_rel=percentiles([r["agreement"]["abs_rel"] for r in audited]))
        summary["worst"] = worst_frames_sheet(args, cond, audited, out / f"{cond}_worst.png", loaded)
        summary["contact_sheet"] = f"{cond}_worst.png" if summary["worst"] else None
    return summary


def parse_args(argv=None):
    p = data.ArgumentParser(description=__doc__)
    p.add_argument("gdt_root", help="a gdt.py output folder (its --out)")
    p.add_argument("--out", help="report folder (default GDT_ROOT/report)")
    p.add_argument("--data-root", help="the day images (default: each record's source path)")
    p.add_argument("--depth-model", help="depth model for the worst frames' maps (default: the run's)")
    p.add_argument("--models-dir", help="the run's depth model from this folder (as gdt.py --models-dir)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out or Path(args.gdt_root, "report"))
    conds = sorted({p.parent.name for p in Path(args.gdt_root).glob("*/manifest.rank*.jsonl")})
    if not conds:
        raise ValueError(f"no manifest.rank*.jsonl under {args.gdt_root}/<cond>/: is it the --out of a gdt.py run?")
    out.mkdir(parents=True, exist_ok=True)
    summary, loaded = {}, {}
    for cond in conds:
        s = summary[cond] = condition_summary(args, cond, out, loaded)
        print(f"{cond}: {s['count']} frames, {s['rejected']} rejected ({100 * s['rejection_rate']:.1f}%), "
              + (f"delta1 median {s['delta1']['p50']:.3f} (p5 {s['delta1']['p5']:.3f})" if s["audited"]
                 else "not audited"))
    data.write_atomic(out / "report.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=1)))
    print(f"report: {out / 'report.json'} and the PNGs beside it")
    return summary


if __name__ == "__main__":
    data.run_cli(main, "gdt_report.py")
