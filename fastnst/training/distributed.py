"""Ending a DDP run cleanly."""

from __future__ import annotations

import torch


def close_process_group() -> None:
    """Wait for every process, then close the process group that Lightning's DDP leaves open.

    Left to the interpreter's exit, a gloo group's threads could see a peer that had already exited and abort
    the process ("terminate called without an active exception", exit -6) after all its work was done:
    1 `fastnst.batch_apply` run in 30 with two CPU processes, 0 in 40 with this. Call it only after a run
    ended normally (Lightning exits on an interrupt itself), so that every process reaches the barrier.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
