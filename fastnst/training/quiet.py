"""Lightning notices that are noise for fastnst's entry points, silenced in one place."""

from __future__ import annotations

import logging
import warnings


def _not_a_tip(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("💡 Tip")  # Lightning's advert for its cloud logger


def quiet_lightning() -> None:
    """Drop Lightning's cloud-logging tip and warnings that do not apply here (idempotent)."""
    # The VGG inside the loss is in eval mode on purpose; Lightning's notice about it is noise here.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")  # torch/Lightning version skew
    # The summary's size estimate is the only thing mixed precision affects; every bf16 CPU run printed this.
    warnings.filterwarnings("ignore", message=r"Precision .* is not supported by the model summary")
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    if _not_a_tip not in rank_zero.filters:
        rank_zero.addFilter(_not_a_tip)
