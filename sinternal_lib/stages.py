"""The stage registry: the five pipeline stages and the one name each carries everywhere.

`STAGES` (name -> `StageInfo`) is the one table the CLI, the run folders (`runs.stage_for`), checkpoint
discovery, the report and the notebooks read: per stage its number, the recipe sections that decide its
outputs (its config hash), the earlier stages it reads, and its title. A stage `<name>` has the recipe
section, metrics.json section and module `sinternal_lib/<name>.py` (entry `run(run, log)`), and the
folder and notebook `<number>_<name>`. `stage_info` accepts a name, number or folder.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StageInfo:
    """One pipeline stage and the one name it carries everywhere: recipe section, metrics.json section,
    module `sinternal_lib/<name>.py` (entry `run(run, log)`), folder and notebook `<number>_<name>`."""

    name: str
    number: str
    sections: tuple[str, ...]  # recipe sections that decide its outputs (its config hash)
    depends: tuple[str, ...]  # earlier stages whose manifests are its inputs
    title: str

    @property
    def folder(self) -> str:
        return f"{self.number}_{self.name}"

    @property
    def notebook(self) -> str:
        return self.folder

    @property
    def module(self) -> str:
        return f"sinternal_lib.{self.name}"


# The one stage table: the CLI, checkpoint discovery, the report and every stage read it. A stage's inputs
# are the manifests of the stages it reads, so rerunning an earlier stage makes every later one stale.
STAGES: dict[str, StageInfo] = {s.name: s for s in (
    StageInfo("diagnose", "01", ("model", "spec", "data", "judge", "diagnose"), (),
              "Diagnose: can the policy verify answers?"),
    StageInfo("build_data", "02", ("model", "spec", "data", "judge", "teacher", "build_data"), (),
              "Build verification data"),
    StageInfo("sft", "03", ("model", "spec", "data", "judge", "lora", "sft"), ("build_data",),
              "Verification SFT (QLoRA)"),
    StageInfo("grpo", "04", ("model", "data", "judge", "lora", "grpo"), ("sft",), "GRPO"),
    StageInfo("evaluate", "05", ("model", "spec", "data", "judge", "diagnose", "evaluate"),
              ("diagnose", "build_data", "sft", "grpo"), "Evaluate generation"),
    StageInfo("self_verification", "06", ("model", "spec", "data", "judge", "self_verification"),
              ("build_data", "sft"), "Beyond the paper: the model as its own guard; a swapped spec"),
)}
# metrics.json sections of runs made before the stages had one name each (read as the new names)
LEGACY_SECTIONS = {"diagnosis": "diagnose", "data": "build_data", "rl": "grpo", "eval": "evaluate"}


def stage_info(ref: str) -> StageInfo:
    """The stage named by its name, number or folder (`sft`, `03`, `3`, `03_sft`); a clear error otherwise."""
    for s in STAGES.values():
        if ref in (s.name, s.number, s.number.lstrip("0"), s.folder):
            return s
    raise KeyError(f"unknown stage {ref!r}; stages: {', '.join(s.folder for s in STAGES.values())}")
