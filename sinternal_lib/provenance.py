"""Provenance: what a run's numbers came from, recorded in `env.json` and in every stage manifest.

`package_versions` (Python and the ML packages in PACKAGES), `git_revision` (commit and whether the work
tree was dirty), `hardware` (platform, CPU count, GPU name).
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from .recipe_sections import REPO_ROOT

PACKAGES = ("torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets", "papermill")


def package_versions() -> dict[str, str]:
    """{"python": version, package: version or "not installed"} for the packages that decide results."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_revision() -> dict[str, Any]:
    """{"commit": HEAD or None, "dirty": uncommitted changes or None} of the kit's repository."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def hardware() -> dict[str, Any]:
    """Platform, machine, CPU count and (when CUDA is available) the GPU name."""
    import torch  # here, not at the top: runs (and so the report and the CLI) import this module

    info: dict[str, Any] = {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def precision(recipe: Any) -> dict[str, Any]:
    """The dtype choices of `recipe` on its device, with what they rested on (`precision.precision_record`)."""
    from .models import pick_device  # torch-heavy: imported when a stage finishes, not with runs
    from .precision import precision_record  # as above

    return precision_record(pick_device(recipe.model.device), recipe)
