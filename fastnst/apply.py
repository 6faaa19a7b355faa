"""Apply a trained style to photos: ``python -m fastnst.apply -m starry -o out/ photo.jpg more/``.

Light on purpose: imports torch, torchvision's dependencies and Pillow only (no Lightning,
Hydra or VGG), so a user who only applies styles installs and waits for nothing more.

Exit codes: 0 all inputs written; 1 some inputs failed (each named on stderr, the others
still written); 2 bad arguments or an unusable model.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastnst._io import first_line
from fastnst._progress import Progress
from fastnst.hardware import PRECISIONS
from fastnst.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageError, Photo, list_images, output_format, probe_image, read_image, to_uint8, write_image
from fastnst.model_file import ModelFileError, available_models
from fastnst.video import VIDEO_EXTENSIONS

if TYPE_CHECKING:
    import torch

    from fastnst.stylize import Stylizer

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2


@dataclass
class Job:
    src: Path
    dst: Path
    size: tuple[int, int] | None = None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastnst.apply",
        description="Stylise photos with a trained fastnst model (one forward pass per image).",
        epilog=(
            "examples:\n"
            "  python -m fastnst.apply -m starry photo.jpg -o photo_starry.jpg\n"
            "  python -m fastnst.apply -m runs/starry/last/starry.pt -o stylised/ photos/\n"
            "  python -m fastnst.apply -m starry --preserve-color --strength 0.7 photo.jpg -o soft.jpg\n"
            "  python -m fastnst.apply -m starry --smoothing 0.6 clip.mp4 -o clip_starry.mp4\n"
            "  python -m fastnst.apply -m starry --compile --batch-size 8 long_video.mp4   # on a GPU\n"
            "  python -m fastnst.apply --list-models"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="*", type=Path, help="image files and/or folders (searched recursively)")
    p.add_argument("-m", "--model", help="model file (.pt from fastnst.train, or a .ckpt) or the name of a shipped model")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        help="output file (one input; its extension picks the format) or folder (an existing one, or a name without an extension, created); default: next to each input as NAME_MODEL.EXT (PNG for formats that cannot be written, such as GIF)",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA if available, else CPU), cpu, cuda, cuda:1, ... (default: auto)")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="arithmetic: auto (bf16 on CPUs with native bf16, else fp32; TF32 convolutions on recent GPUs), or force fp32/bf16/fp16 (default: auto)",
    )
    p.add_argument(
        "--tile",
        choices=("auto", "on", "off"),
        default="auto",
        help="run in row bands with whole-image statistics (bounded memory, the same picture); auto: above 4.2 megapixels",
    )
    p.add_argument(
        "--preserve-color",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep the photo's colours, take only the stylised luminance (default: on for models trained with loss.luminance_only)",
    )
    p.add_argument("--strength", type=float, default=1.0, help="style strength from 0 (the photo) to 1 (the full style; default)")
    p.add_argument(
        "--smoothing",
        type=float,
        default=0.0,
        help="videos: temporal smoothing against flicker, 0 (off) to 0.95; static pixels are averaged over frames (default: 0)",
    )
    p.add_argument("--batch-size", type=int, default=4, help="images of the same size stylised together (default: 4)")
    p.add_argument(
        "--compile",
        action="store_true",
        help="GPUs: compile the network (bf16, channels_last) once per image size, 8-13 s each; the network then runs about 2.4x faster on an H100, which pays only for thousands of same-size images whose reading and writing keep up, not for one photo",
    )
    p.add_argument(
        "--io-threads",
        type=int,
        metavar="N",
        default=default_io_threads(),
        help="threads that decode and encode images while the network runs; 0: one after the other (default: one per core, at most 8: %(default)s)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing output files (never done otherwise)")
    p.add_argument(
        "--max-pixels",
        type=float,
        default=DEFAULT_MAX_PIXELS,
        help=f"refuse inputs with more pixels than this, before decoding them (default: {DEFAULT_MAX_PIXELS:.0f})",
    )
    p.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality (default: 95)")
    p.add_argument("--list-models", action="store_true", help="list the models that -m accepts by name, then exit")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no per-file lines")
    return p


_OUTPUT_EXTENSIONS = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS


def names_one_file(output: Path | None) -> bool:
    """Whether ``-o`` names one output file: a known extension and not an existing folder."""
    return output is not None and output.suffix.lower() in _OUTPUT_EXTENSIONS and not output.is_dir()


def output_problem(inputs: list[Path], output: Path | None) -> str | None:
    """Why ``-o`` cannot work with these inputs (one line), or None. A name with an extension is one file."""
    if output is None or output.is_dir() or not output.suffix:
        return None
    if not names_one_file(output):
        return (
            f"-o {output}: unknown output format {output.suffix!r} (use one of {', '.join(_OUTPUT_EXTENSIONS)}; "
            "for a folder, give a name without an extension or create the folder first)"
        )
    if len(inputs) > 1 or inputs[0].is_dir():
        what = f"{len(inputs)} inputs" if len(inputs) > 1 else f"the folder {inputs[0]}"
        return f"-o {output} names one file, but {what} were given; give a folder for -o"
    return None


def derived_output(path: Path) -> Path:
    """An output path made from an input's name: its own format where that can be written, else PNG
    (a GIF is stylised to NAME_MODEL.png rather than refused)."""
    return path if path.suffix.lower() in _OUTPUT_EXTENSIONS else path.with_suffix(".png")


def plan_jobs(inputs: list[Path], output: Path | None, model_name: str) -> tuple[list[Job], list[str]]:
    """Pair every input image with its output path; returns (jobs, errors for inputs that are unusable)."""
    jobs: list[Job] = []
    errors: list[str] = []
    single_file_out = names_one_file(output) and len(inputs) == 1 and not inputs[0].is_dir()
    for src in inputs:
        if src.is_dir():
            found = list_images(src)
            if not found:
                errors.append(f"{src}: folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            for f in found:
                rel = f.relative_to(src)
                dst = (output / src.name / rel) if output is not None else f.with_name(f"{f.stem}_{model_name}{f.suffix}")
                jobs.append(Job(f, dst))
        elif not src.exists():
            errors.append(f"{src}: no such file or folder")
        elif single_file_out:
            jobs.append(Job(src, output))  # type: ignore[arg-type]
        elif output is not None:
            jobs.append(Job(src, derived_output(output / src.name)))
        else:
            jobs.append(Job(src, derived_output(src.with_name(f"{src.stem}_{model_name}{src.suffix}"))))
    return jobs, errors


def ready_jobs(jobs: list[Job], overwrite: bool, max_pixels: int) -> tuple[list[Job], list[str]]:
    """The jobs that can run, with their sizes probed (a known output format, no output written twice, no
    existing file replaced unless ``overwrite``, a readable header), and one line for each that cannot."""
    ready: list[Job] = []
    errors: list[str] = []
    seen_dst: set[Path] = set()
    for job in jobs:
        try:
            output_format(job.dst)
            if job.dst.resolve() in seen_dst:
                raise ImageError(f"{job.src}: output {job.dst} would be written twice in this run")
            if job.dst.exists() and not overwrite:
                raise ImageError(f"{job.src}: output {job.dst} exists; not overwriting it (pass --overwrite to replace it)")
            job.size = probe_image(job.src, max_pixels)
            seen_dst.add(job.dst.resolve())
            ready.append(job)
        except ImageError as e:
            errors.append(str(e))
    return ready, errors


def _batches(jobs: list[Job], batch_size: int) -> list[list[Job]]:
    """Same-size images together (one forward pass each batch), in input order within a size."""
    by_size: dict[tuple[int, int], list[Job]] = {}
    for job in jobs:
        by_size.setdefault(job.size, []).append(job)  # type: ignore[arg-type]
    return [group[i : i + batch_size] for group in by_size.values() for i in range(0, len(group), batch_size)]


def default_io_threads() -> int:
    """Decoding/encoding threads: one per core this process may use, at most 8 (a 1080p PNG takes 0.3-0.5 s
    to encode on one core)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(8, cores or 1))


class WriteQueue:
    """Encodes and writes stylised images in ``threads`` threads while the caller goes on (0: at once).

    Pillow releases the GIL while it encodes, and on a GPU encoding is the slow part: on an H100, a 1080p
    PNG took about 30x longer to encode than to stylise. At most ``2 * threads`` images and ``max_bytes`` of
    uint8 pixels wait. ``done(job, error)`` reports each file (error None: written) in the caller's thread,
    in submission order.
    """

    def __init__(self, threads: int, done: Callable[[Job, str | None], None], overwrite: bool = False, quality: int = 95, max_bytes: int = 512 << 20) -> None:
        self.threads, self.done, self.max_bytes = threads, done, max_bytes
        self.overwrite, self.quality = overwrite, quality
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="fastnst-write") if threads > 0 else None
        self.pending: deque[tuple[Job, Future[str | None], int]] = deque()

    def put(self, job: Job, photo: Photo, out: torch.Tensor) -> None:
        """Queue ``out`` (uint8, or float in [0, 1]) for ``job.dst``, with the photo's alpha and colour profile."""
        out = to_uint8(out)  # a quarter of float32's memory while it waits
        if self.pool is None:
            self.pending.append((job, _finished(self._write(job, photo, out)), 0))
        else:
            self.pending.append((job, self.pool.submit(self._write, job, photo, out), out.numel()))
        self.wait(2 * self.threads, self.max_bytes)

    def wait(self, keep: int = 0, keep_bytes: int = 0) -> None:
        """Report finished files, oldest first, until at most ``keep`` images / ``keep_bytes`` bytes wait."""
        while self.pending and (len(self.pending) > keep or sum(n for _, _, n in self.pending) > keep_bytes):
            job, future, _ = self.pending.popleft()
            self.done(job, future.result())

    def close(self, cancel: bool = False) -> None:
        """Wait for every queued file and report it; ``cancel`` (after an error or Ctrl-C): finish only the
        files being written (each is whole or absent: written atomically) and report nothing more."""
        if cancel:
            self.pending.clear()
        else:
            self.wait()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def _write(self, job: Job, photo: Photo, out: torch.Tensor) -> str | None:
        try:
            write_image(out, job.dst, photo.alpha, overwrite=self.overwrite, quality=self.quality, icc_profile=photo.icc_profile)
        except ImageError as e:
            return str(e)
        return None


def _finished(value: Any) -> Future[Any]:
    done: Future[Any] = Future()
    done.set_result(value)
    return done


def _stylize_images(runner: Stylizer, ready: list[Job], args: argparse.Namespace, progress: Progress) -> tuple[int, int]:
    """Read, stylise and write every job; returns (written, failed). Errors are printed one line each.

    With ``args.io_threads`` > 0 the next batch is decoded in a thread while the network works, and finished
    images are encoded by a :class:`WriteQueue` of that many threads. Huge (banded) photos are written before
    the next is read, so that two never sit in memory at once.
    """
    import torch

    counts = {"ok": 0, "failed": 0}

    def report(job: Job, error: str | None) -> None:
        if error is not None:
            print(f"\nerror: {error}", file=sys.stderr)
        counts["ok" if error is None else "failed"] += 1
        progress.update()

    def read(batch: list[Job]) -> tuple[bool, list[tuple[Job, Photo]], list[tuple[Job, str]]]:
        tiled = runner.uses_tiles(batch[0].size[1], batch[0].size[0])  # type: ignore[index]
        photos, errors = [], []
        for job in batch:
            try:
                photos.append((job, read_image(job.src, int(args.max_pixels), as_uint8=tiled)))
            except ImageError as e:
                errors.append((job, str(e)))
        return tiled, photos, errors

    reader = ThreadPoolExecutor(1, thread_name_prefix="fastnst-read") if args.io_threads > 0 else None
    writer = WriteQueue(args.io_threads, report, overwrite=args.overwrite, quality=args.quality)
    batches = _batches(ready, args.batch_size)

    def start_reading(batch: list[Job]) -> Future[tuple[bool, list[tuple[Job, Photo]], list[tuple[Job, str]]]]:
        return reader.submit(read, batch) if reader is not None else _finished(read(batch))

    try:
        next_read = start_reading(batches[0]) if batches else None
        for i, batch in enumerate(batches):
            tiled, photos, errors = next_read.result()  # type: ignore[union-attr]
            following = batches[i + 1] if i + 1 < len(batches) else None
            # Decode the next batch meanwhile (with threads), unless either is a huge (banded) photo: bounded memory first.
            overlap = reader is not None and following is not None and not tiled and not runner.uses_tiles(following[0].size[1], following[0].size[0])  # type: ignore[index]
            next_read = start_reading(following) if overlap else None  # type: ignore[arg-type]
            for job, error in errors:
                report(job, error)
            try:
                if not photos:
                    outs = []
                elif tiled:
                    outs = [runner.stylize_to_uint8(p.rgb) for _, p in photos]  # one at a time, bounded memory
                else:
                    outs = list(runner(torch.stack([p.rgb for _, p in photos])))
            except (ValueError, RuntimeError) as e:  # e.g. out of memory, or an image an exported model cannot take
                reason = first_line(e, 200)
                for job, _ in photos:
                    report(job, f"{job.src}: stylising failed ({reason})")
                outs = []
            for (job, photo), out in zip(photos, outs):
                writer.put(job, photo, out)
            if tiled:
                writer.wait()
            if next_read is None and following is not None:
                next_read = start_reading(following)
        writer.close()
    except BaseException:
        writer.close(cancel=True)
        raise
    finally:
        if reader is not None:
            reader.shutdown(wait=True, cancel_futures=True)
    return counts["ok"], counts["failed"]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_models:
        models = available_models()
        for name, path in models.items():
            print(f"{name}\t{path}")
        if not models:
            print("no models found (set FASTNST_MODELS to a folder of .pt files)", file=sys.stderr)
        return EXIT_OK
    if not args.model:
        parser.error("-m/--model is required (a model file or one of: " + (", ".join(available_models()) or "none shipped") + ")")
    if not args.inputs:
        parser.error("no input images given")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.io_threads < 0:
        parser.error("--io-threads must be 0 or more")
    if not 0.0 <= args.strength <= 1.0:
        parser.error(f"--strength must be between 0 and 1, got {args.strength}")
    if not 0.0 <= args.smoothing <= 0.95:
        parser.error(f"--smoothing must be between 0 and 0.95, got {args.smoothing}")
    if problem := output_problem(args.inputs, args.output):
        parser.error(problem)

    # Heavy imports after argument checks, so --help and usage errors are instant.
    import torch

    from fastnst.stylize import Stylizer

    try:
        runner = Stylizer(
            args.model,
            args.device,
            args.precision,
            tile={"auto": None, "on": True, "off": False}[args.tile],
            preserve_color=args.preserve_color,
            strength=args.strength,
            compile=args.compile,
        )
    except (ModelFileError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    model_name = str(runner.metadata.get("name") or Path(args.model).stem)

    jobs, errors = plan_jobs(args.inputs, args.output, model_name)
    for msg in errors:
        print(f"error: {msg}", file=sys.stderr)
    failed = len(errors)
    videos = [job for job in jobs if job.src.suffix.lower() in VIDEO_EXTENSIONS]
    jobs = [job for job in jobs if job not in videos]
    ok_videos = 0
    for job in videos:
        from fastnst.video import VideoError, stylize_video

        try:
            info = stylize_video(job.src, job.dst, runner, args.batch_size, args.smoothing, args.overwrite, progress=False if args.quiet else None)
            ok_videos += 1
            if not args.quiet:
                print(f"wrote {job.dst} ({info['frames']} frames at {info['fps']:.3g} fps{', audio copied' if info['audio'] else ''})", file=sys.stderr)
        except VideoError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
    ready, unusable = ready_jobs(jobs, args.overwrite, int(args.max_pixels))
    for msg in unusable:
        print(f"error: {msg}", file=sys.stderr)
    failed += len(unusable)

    progress = Progress(len(ready), desc="stylising", enabled=False if args.quiet else None)
    with progress:
        ok, failed_images = _stylize_images(runner, ready, args, progress)
    failed += failed_images
    ok += ok_videos
    if len(ready) == 1 and ok == 1 and not args.quiet:
        print(f"wrote {ready[0].dst}", file=sys.stderr)
    if failed or len(ready) + len(videos) > 1:
        print(f"{ok} ok, {failed} failed", file=sys.stderr)
    return EXIT_SOME_FAILED if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
