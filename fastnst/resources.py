"""Where the shipped configs and pretrained models are: in the package or at the top of a checkout.

A checkout (and an editable install) keeps them at the top of the repository, ``configs/`` and
``checkpoints/``. A wheel carries copies inside the package, in ``fastnst/_shipped/`` (``setup.py``
puts them there), because an installed package has no repository around it. The copy inside the
package is looked at first, so a stray ``configs/`` folder beside site-packages is never picked up.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def shipped_dir(name: str) -> Path:
    """The folder of the shipped ``configs`` or ``checkpoints``."""
    bundled = PACKAGE_DIR / "_shipped" / name
    return bundled if bundled.is_dir() else PACKAGE_DIR.parent / name


CONFIG_DIR = shipped_dir("configs")
CHECKPOINT_DIR = shipped_dir("checkpoints")
