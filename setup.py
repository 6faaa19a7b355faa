"""Packaging glue: the project is described in pyproject.toml; this only adds the shipped data.

A wheel has no repository around it, so the top-level ``configs/`` (Hydra) and ``checkpoints/``
(pretrained models) are copied into the package as ``fastnst/_shipped/``; ``fastnst.resources``
looks there first. Editable installs use the repository's own folders and copy nothing.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED = ("configs", "checkpoints")


class BuildPyWithShipped(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for name in SHIPPED:
            target = Path(self.build_lib) / "fastnst" / "_shipped" / name
            shutil.copytree(ROOT / name, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithShipped})
