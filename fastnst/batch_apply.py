"""Stylise a large set of photos on several GPUs or machines with Lightning's DDP.

    python -m fastnst.batch_apply -m starry -o out/ photos/ --devices 4
    python -m fastnst.batch_apply -m starry -o out/ photos/ --devices 8 --num-nodes 2   # under torchrun/SLURM

Each process takes its share of the files (Lightning's distributed sampler for prediction: no file is
repeated), decodes them in DataLoader workers, stylises them with the same :class:`~fastnst.stylize.Stylizer`
as ``fastnst.apply`` and writes its outputs itself, so the files are the same as ``fastnst.apply`` writes.
On one GPU or a CPU, ``fastnst.apply`` does the same without Lightning (and handles videos).

Exit codes as ``fastnst.apply``: 0 all written; 1 some inputs failed (each named on stderr); 2 bad
arguments or an unusable model.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from torch.utils.data import DataLoader

from fastnst._io import first_line
from fastnst.apply import EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, Job, WriteQueue, default_io_threads, plan_jobs, ready_jobs
from fastnst.hardware import PRECISIONS
from fastnst.images import DEFAULT_MAX_PIXELS, ImageError, Photo, read_image
from fastnst.model_file import ModelFileError, load_model
from fastnst.stylize import Stylizer, uses_tiles
from fastnst.training.distributed import close_process_group
from fastnst.training.quiet import quiet_lightning
from fastnst.video import VIDEO_EXTENSIONS


def _devices(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--devices must be a number or auto, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("--devices must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastnst.batch_apply",
        description="Stylise many photos on several GPUs (or machines) with Lightning's DDP; the outputs are those of fastnst.apply.",
        epilog="examples:\n  python -m fastnst.batch_apply -m starry -o out/ photos/ --devices 4\n  python -m fastnst.batch_apply -m starry -o out/ photos/ --accelerator cpu --devices 2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", type=Path, help="image files and/or folders (searched recursively)")
    p.add_argument("-m", "--model", required=True, help="model file (.pt from fastnst.train, or a .ckpt) or the name of a shipped model")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder (created); folders keep their tree below it")
    p.add_argument("--accelerator", default="auto", help="Lightning accelerator: auto, gpu, cpu (default: auto)")
    p.add_argument("--devices", type=_devices, default="auto", metavar="N", help="devices per machine: a number, or auto (every GPU; default)")
    p.add_argument("--num-nodes", type=int, default=1, metavar="N", help="machines (launched by torchrun, SLURM, ...; default: 1)")
    p.add_argument("--workers", type=int, default=2, metavar="N", help="DataLoader processes per device that decode photos (default: 2)")
    p.add_argument("--io-threads", type=int, metavar="N", help="threads per device that encode outputs (default: the cores, up to 8, shared by the devices)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help="arithmetic, as in fastnst.apply (default: auto)")
    p.add_argument("--preserve-color", action=argparse.BooleanOptionalAction, default=None, help="keep the photo's colours (as in fastnst.apply)")
    p.add_argument("--strength", type=float, default=1.0, help="style strength from 0 (the photo) to 1 (default)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files (never done otherwise)")
    p.add_argument("--max-pixels", type=float, default=DEFAULT_MAX_PIXELS, help=f"refuse larger inputs (default: {DEFAULT_MAX_PIXELS:.0f})")
    p.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality (default: 95)")
    return p


@dataclass
class _Item:
    """One file after its DataLoader worker: the decoded photo, or why it could not be read."""

    job: Job
    tiled: bool
    photo: Photo | None = None
    error: str | None = None


class _Photos:
    """The files to stylise, decoded in DataLoader workers (huge ones as uint8, for the banded path)."""

    def __init__(self, jobs: list[Job], max_pixels: int) -> None:
        self.jobs, self.max_pixels = jobs, max_pixels

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int) -> _Item:
        job = self.jobs[i]
        tiled = uses_tiles(job.size[1], job.size[0])  # type: ignore[index]
        try:
            return _Item(job, tiled, read_image(job.src, self.max_pixels, as_uint8=tiled))
        except ImageError as e:
            return _Item(job, tiled, error=str(e))


class StylizeModule(pl.LightningModule):
    """Stylises one photo per step with the Stylizer of ``fastnst.apply`` and hands it to a WriteQueue (encoding
    in threads); counts what it wrote and what failed, summed over all processes at the end."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__()
        self.args = args
        self.runner: Stylizer | None = None
        self.writer: WriteQueue | None = None
        self.counts = torch.zeros(2, dtype=torch.long)  # written, failed

    def on_predict_start(self) -> None:
        a = self.args
        self.runner = Stylizer(a.model, self.device, a.precision, preserve_color=a.preserve_color, strength=a.strength)
        # The machine's cores are shared by its processes (one per device).
        threads = a.io_threads if a.io_threads is not None else max(1, default_io_threads() // self.trainer.num_devices)
        self.writer = WriteQueue(threads, self._report, overwrite=a.overwrite, quality=a.quality)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return batch  # the Stylizer moves the pixels itself (and keeps huge photos in bands)

    def predict_step(self, item: _Item, batch_idx: int) -> None:
        assert self.runner is not None and self.writer is not None
        if item.photo is None:
            self._report(item.job, item.error)
            return
        try:
            rgb = item.photo.rgb
            out = self.runner.stylize_to_uint8(rgb) if item.tiled else self.runner(rgb[None])[0]
        except (ValueError, RuntimeError) as e:  # e.g. out of memory on this photo
            self._report(item.job, f"{item.job.src}: stylising failed ({first_line(e, 200)})")
            return
        self.writer.put(item.job, item.photo, out)
        if item.tiled:
            self.writer.wait()  # a huge photo leaves memory before the next one comes

    def on_predict_end(self) -> None:
        assert self.writer is not None
        self.writer.close()
        self.counts = self.trainer.strategy.reduce(self.counts.to(self.device), reduce_op="sum").cpu()

    def _report(self, job: Job, error: str | None) -> None:
        if error is not None:
            print(f"\nerror: {error}", file=sys.stderr)
        self.counts[0 if error is None else 1] += 1


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.num_nodes < 1 or args.workers < 0 or (args.io_threads or 0) < 0:
        parser.error("--num-nodes must be at least 1, and --workers and --io-threads at least 0")
    if not 0.0 <= args.strength <= 1.0:
        parser.error(f"--strength must be between 0 and 1, got {args.strength}")
    if args.output.suffix and not args.output.is_dir():
        parser.error(f"-o {args.output}: give a folder (a name without an extension, or an existing folder)")

    try:  # in every process: a bad model stops each one with the same one-line message
        load_model(args.model)
    except (ModelFileError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE

    jobs, errors = plan_jobs(args.inputs, args.output, Path(args.model).stem)
    images: list[Job] = []
    for job in jobs:
        if job.src.suffix.lower() in VIDEO_EXTENSIONS:
            errors.append(f"{job.src}: videos are stylised by fastnst.apply, one process per video")
        else:
            images.append(job)
    ready, unusable = ready_jobs(images, args.overwrite, int(args.max_pixels))
    errors += unusable

    quiet_lightning()
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")  # --workers says how many
    warnings.filterwarnings("ignore", message=r".*predict returned None.*")  # on purpose: each step writes its file
    try:
        trainer = pl.Trainer(
            accelerator=args.accelerator,
            devices=args.devices,
            num_nodes=args.num_nodes,
            strategy="auto",  # DDP whenever there is more than one device
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
        )
    except (ValueError, MisconfigurationException) as e:  # e.g. --accelerator gpu without one
        print(f"error: --accelerator {args.accelerator} --devices {args.devices}: {first_line(e, 300)}", file=sys.stderr)
        return EXIT_USAGE
    module = StylizeModule(args)
    loader = DataLoader(_Photos(ready, int(args.max_pixels)), batch_size=None, num_workers=args.workers)  # one photo per step: sizes differ
    if ready:
        trainer.predict(module, loader, return_predictions=False)
        close_process_group()
    written, failed = (int(n) for n in module.counts)
    if trainer.is_global_zero:
        for msg in errors:
            print(f"error: {msg}", file=sys.stderr)
        print(f"{written} ok, {failed + len(errors)} failed", file=sys.stderr)
    return EXIT_SOME_FAILED if failed or errors else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
