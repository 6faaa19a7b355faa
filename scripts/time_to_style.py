"""Quality against wall-clock training time: train recipes for a time budget, score them on held-out photos.

    python scripts/time_to_style.py --style starry --minutes 30 --every 2 \\
        --recipe plain=recipe=johnson --recipe fastnst= \\
        --photos ../shared/assets/content/coco128/val --limit 2 --size 512 \\
        --gatys-json gatys_starry.json --out runs/tts_starry \\
        -- data.root=/path/to/photos loss.weights=/path/to/vgg16.pth

Each recipe is a name and the Hydra overrides that make it (``name=override override ...``); the
arguments after ``--`` go to every run. Each run is ``python -m fastnst.train`` in its own process
with ``trainer.max_time`` set to the budget and ``snapshot_minutes`` set to ``--every``: the run
saves its slim model at those training times and nothing is scored while the clock runs. Afterwards
every snapshot is scored on the held-out photos with ``fastnst.evaluate`` (the model's own loss
settings), the held-out curve is added to the run's TensorBoard (``heldout/*`` by step and by
training second), and the script prints a table, writes JSON and draws ``curve.png``: held-out total
and content loss against minutes, with the Gatys-100 level (and 1.5x it, issue 9's yardstick).

The Gatys level comes from ``--gatys-json`` (a ``fastnst.evaluate --gatys 100 --json`` result on the
same photos and size) or is computed with ``--gatys 100`` (slow: minutes per photo on a CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TERMS = ("content", "style", "tv", "total")
COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]


def hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"00:{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def train(name: str, overrides: list[str], common: list[str], style: str, minutes: float, every: float, run_dir: Path) -> float:
    cmd = [
        sys.executable, "-m", "fastnst.train", f"style={style}", f"run_dir={run_dir}",
        "trainer.max_steps=-1", f"trainer.max_time={hms(minutes * 60)}", f"snapshot_minutes={every}",
        *common, *overrides,
    ]
    print(f"[{name}] {' '.join(cmd[2:])}", file=sys.stderr)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO)
    return time.perf_counter() - t0


def score_run(run_dir: Path, style: str, photos: list[Path], size: int, weights: str, style_image: str | None) -> list[dict[str, Any]]:
    from fastnst.evaluate import evaluate
    from fastnst.model_file import load_model

    files = sorted((run_dir / "snapshots").glob("*.pt"), key=lambda p: float(p.stem.rstrip("s")))
    # The run's own model: <style>.pt, or for style=custom the one named by style.name.
    final = run_dir / f"{style}.pt"
    tops = [final] if final.exists() else sorted(run_dir.glob("*.pt"))
    if len(tops) == 1:
        files.append(tops[0])
    points = []
    for f in files:
        meta = load_model(f)[1]
        if points and meta["steps"] == points[-1]["steps"]:  # the last snapshot holds the same weights
            points[-1]["file"] = str(f)
            continue
        r = evaluate(str(f), photos, size, None, weights, style_image, precision="fp32", progress=False)
        points.append({"file": str(f), "style_name": meta["style"], "seconds": meta["train_seconds"], "steps": meta["steps"], **r["model_mean"], "_samples": r["_samples"]})
        print(f"  {f.name}: {meta['steps']} steps, {meta['train_seconds'] / 60:.1f} min, held-out total {r['model_mean']['total']:.4g} "
              f"(content {r['model_mean']['content']:.4g})", file=sys.stderr)
    return points


def log_tensorboard(run_dir: Path, points: list[dict[str, Any]]) -> None:
    """The held-out curve in the run's own TensorBoard: by step, and by training second."""
    from torch.utils.tensorboard import SummaryWriter
    from torchvision.utils import make_grid

    writer = SummaryWriter(str(run_dir / "tensorboard"))
    for p in points:
        for t in TERMS:
            writer.add_scalar(f"heldout/{t}", p[t], p["steps"])
            writer.add_scalar(f"heldout_by_second/{t}", p[t], round(p["seconds"]))
        panels = [q for pair in p["_samples"] for q in pair[:2]]
        side = min(min(q.shape[-2:]) for q in panels)
        writer.add_image("heldout/samples", make_grid([q[:, :side, :side] for q in panels], nrow=2, padding=2), p["steps"])
    writer.close()


def gatys_level(args: argparse.Namespace, photos: list[Path], first_model: str) -> dict[str, float]:
    """Mean Gatys-``args.gatys`` terms on ``photos``: read from ``--gatys-json``, else computed with ``first_model``'s loss."""
    key = f"gatys{args.gatys}"
    if args.gatys_json:
        data = json.loads(Path(args.gatys_json).read_text())
        if data.get("size") != args.size:
            raise SystemExit(f"error: {args.gatys_json} was measured at size {data.get('size')}, not --size {args.size}")
        rows = {r["photo"]: r[key] for r in data["per_photo"] if key in r}
        missing = [p.name for p in photos if p.name not in rows]
        if missing:
            raise SystemExit(f"error: {args.gatys_json} has no {key} result for {', '.join(missing)}")
        return {t: sum(rows[p.name][t] for p in photos) / len(photos) for t in TERMS}
    from fastnst.evaluate import evaluate

    r = evaluate(first_model, photos, args.size, [args.gatys], args.weights, args.style_image)
    return r[f"{key}_mean"]


def plot(path: Path, curves: dict[str, list[dict[str, Any]]], gatys: dict[str, float] | None, minutes: float, label: str) -> None:
    """Two panels (total, content) of held-out loss against training minutes; log-scaled y."""
    import math

    from PIL import Image, ImageDraw

    W, H, M = 520, 380, (70, 30, 20, 55)  # panel size; margins left, top, right, bottom
    img = Image.new("RGB", (2 * W, H + 40), "white")
    d = ImageDraw.Draw(img)
    d.text((10, 8), label, fill="black")
    for col, term in enumerate(("total", "content")):
        ox = col * W
        values = [p[term] for c in curves.values() for p in c]
        if gatys:
            values += [gatys[term], 1.5 * gatys[term] if term == "total" else 2 * gatys[term]]
        lo, hi = math.log10(min(values) * 0.9), math.log10(max(values) * 1.1)
        x0, y0, x1, y1 = ox + M[0], 40 + M[1], ox + W - M[2], 40 + H - M[3]

        def xy(minute: float, v: float) -> tuple[float, float]:
            return x0 + (x1 - x0) * minute / minutes, y1 - (y1 - y0) * (math.log10(v) - lo) / (hi - lo)

        d.rectangle((x0, y0, x1, y1), outline="black")
        d.text((x0, y0 - 16), f"held-out {term} loss (log scale)", fill="black")
        d.text(((x0 + x1) // 2 - 40, y1 + 28), "training minutes", fill="black")
        for k in range(0, int(minutes) + 1, max(1, int(minutes) // 6)):
            x = xy(k, 10**lo)[0]
            d.line((x, y1, x, y1 + 4), fill="black")
            d.text((x - 6, y1 + 8), str(k), fill="black")
        for e in range(math.floor(lo), math.ceil(hi) + 1):
            for m in (1, 2, 5):
                v = m * 10.0**e
                if lo <= math.log10(v) <= hi:
                    y = xy(0, v)[1]
                    d.line((x0 - 4, y, x0, y), fill="black")
                    d.text((x0 - 40, y - 6), f"{v:g}", fill="black")
        if gatys:
            lines = [(gatys[term], "Gatys L-BFGS 100")]
            lines.append((1.5 * gatys[term], "1.5x Gatys-100") if term == "total" else (2 * gatys[term], "2x Gatys-100"))
            for v, text in lines:
                y = xy(0, v)[1]
                for x in range(int(x0), int(x1), 12):
                    d.line((x, y, min(x + 6, x1), y), fill=(90, 90, 90))
                d.text((x1 - 110, y - 13), text, fill=(90, 90, 90))
        for i, (name, pts) in enumerate(curves.items()):
            colour = COLOURS[i % len(COLOURS)]
            xys = [xy(p["seconds"] / 60, p[term]) for p in pts]
            if len(xys) > 1:
                d.line(xys, fill=colour, width=2)
            for x, y in xys:
                d.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
            d.text((x0 + 10, y0 + 8 + 14 * i), name, fill=colour)
    img.save(path)


def first_time_below(points: list[dict[str, Any]], level: float, term: str = "total") -> float | None:
    for p in points:
        if p[term] <= level:
            return p["seconds"] / 60
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    common: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, common = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--style", required=True, help="style config name (configs/style/); custom takes style.image=... style.name=... after --")
    p.add_argument("--minutes", type=float, default=30.0, help="training budget per recipe (default 30)")
    p.add_argument("--every", type=float, default=2.0, help="minutes between snapshots (default 2)")
    p.add_argument("--recipe", action="append", required=True, help="NAME=OVERRIDES (space-separated Hydra overrides; may be empty)")
    p.add_argument("--photos", type=Path, required=True, help="held-out photos (never trained on)")
    p.add_argument("--limit", type=int, default=2)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--gatys", type=int, default=100, help="L-BFGS iterations of the Gatys level (default 100)")
    p.add_argument("--gatys-json", help="fastnst.evaluate --json result holding that Gatys level for these photos")
    p.add_argument("--no-gatys", action="store_true", help="draw no Gatys level")
    p.add_argument("--weights", default=os.environ.get("FASTNST_VGG_WEIGHTS", "imagenet"), help="VGG weights for scoring")
    p.add_argument("--style-image", help="local style image for scoring, if not found by name")
    p.add_argument("--out", type=Path, required=True, help="folder for the runs, curve.png and results.json")
    p.add_argument("--score-only", action="store_true", help="do not train; score the runs already in --out")
    args = p.parse_args(argv)

    from fastnst.images import list_images

    photos = list_images(args.photos)[: args.limit]
    if not photos:
        raise SystemExit(f"error: no photos in {args.photos}")
    recipes = {}
    for spec in args.recipe:
        name, _, overrides = spec.partition("=")
        recipes[name] = overrides.split()
    args.out.mkdir(parents=True, exist_ok=True)
    wall: dict[str, float] = {}
    if not args.score_only:
        for name, overrides in recipes.items():
            run_dir = args.out / name
            if run_dir.exists():
                raise SystemExit(f"error: {run_dir} exists; pass another --out, or --score-only to score it")
            wall[name] = train(name, overrides, common, args.style, args.minutes, args.every, run_dir)
    curves = {}
    for name in recipes:
        if not (args.out / name).is_dir():
            raise SystemExit(f"error: no run {args.out / name} to score")
        print(f"scoring {name}", file=sys.stderr)
        curves[name] = score_run(args.out / name, args.style, photos, args.size, args.weights, args.style_image)
        if not curves[name]:
            raise SystemExit(f"error: {args.out / name} holds no snapshots or model to score")
        log_tensorboard(args.out / name, curves[name])
    last = curves[next(iter(recipes))][-1]  # the first recipe's final model (every curve has one: checked above)
    first = last["file"]
    gatys = None if args.no_gatys else gatys_level(args, photos, first)

    import torch

    from fastnst.hardware import cpu_name

    style = last["style_name"]  # for style=custom, the name the run gave it
    machine = f"{cpu_name()}, {torch.get_num_threads()} threads" + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")
    print(f"\nstyle {style}, {len(photos)} held-out photos at {args.size} px, budget {args.minutes:g} min; {machine}")
    if gatys:
        print(f"Gatys L-BFGS {args.gatys}: total {gatys['total']:.4g}, content {gatys['content']:.4g}, style {gatys['style']:.4g}")
    print("| recipe | minutes | steps | content | style | tv | total | total / Gatys | content / Gatys |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, pts in curves.items():
        for q in pts:
            rt = f"{q['total'] / gatys['total']:.2f}" if gatys else "-"
            rc = f"{q['content'] / gatys['content']:.2f}" if gatys else "-"
            print(f"| {name} | {q['seconds'] / 60:.1f} | {q['steps']} | {q['content']:.4g} | {q['style']:.4g} | {q['tv']:.4g} | {q['total']:.4g} | {rt} | {rc} |")
    summary = {}
    for name, pts in curves.items():
        s: dict[str, Any] = {"final": {t: pts[-1][t] for t in TERMS} | {"steps": pts[-1]["steps"], "minutes": pts[-1]["seconds"] / 60} if pts else None}
        if gatys and pts:
            s["minutes_to_1.5x_gatys_total"] = first_time_below(pts, 1.5 * gatys["total"])
            ok = [q for q in pts if q["total"] <= 1.5 * gatys["total"] and q["content"] <= 2 * gatys["content"]]
            s["minutes_to_yardstick"] = ok[0]["seconds"] / 60 if ok else None
        summary[name] = s
        print(f"{name}: " + ", ".join(f"{k} {v if not isinstance(v, float) else round(v, 2)}" for k, v in s.items() if k != "final"))
    label = f"fastnst time to style: {style}, {len(photos)} held-out photos at {args.size} px; {machine}"
    plot(args.out / "curve.png", curves, gatys, args.minutes, label)
    result = {
        "style": style, "minutes": args.minutes, "size": args.size, "photos": [p.name for p in photos], "machine": machine,
        "recipes": recipes, "common_overrides": common, "wall_seconds": wall, f"gatys{args.gatys}": gatys, "summary": summary,
        "curves": {n: [{k: v for k, v in q.items() if k != "_samples"} for q in pts] for n, pts in curves.items()},
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out / 'curve.png'} and {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
