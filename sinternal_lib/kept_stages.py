"""Kept copies of finished stages: another config never silently replaces a finished stage.

Layout: `runs/<run>/<NN_stage>.previous/<config_hash>/` holds the finished stage folder of one config (the
16-hex `config_hash` of its manifest; one copy per config, the newest), plus `kept_metrics.json` (its
metrics.json section, timing and attempts, which leave metrics.json with it) and `kept_notebook.ipynb` (the
runner's executed copy of its notebook). `prepare` is the one rule the runner and `Stage.begin()` follow:
a kept copy whose config, inputs and outputs match the request comes back (`restore`) instead of being
recomputed; a finished stage of other inputs (an earlier stage was redone) is set aside; one of another
config is set aside only when asked (`--force`, `stage.set_aside()`) or when the requested config is kept
too, otherwise `StageConfigChanged` names the changed keys and the two ways on. `rm -r <NN_stage>.previous`
frees the space.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from .runs import MANIFEST, Run, Stage, StageIncomplete, atomic_write_json, hash_path, read_manifest
from .stages import STAGES, stage_info

KEPT = ".previous"
KEPT_METRICS = "kept_metrics.json"  # the stage's metrics.json section, timing and attempts
KEPT_NOTEBOOK = "kept_notebook.ipynb"  # the runner's executed copy of the stage's notebook
MAX_LISTED = 6  # changed keys named in a refusal


class StageConfigChanged(RuntimeError):
    """A finished stage of another config would be replaced: says which keys changed and what to do."""

    def __init__(self, stage: Stage, changes: list[str], kept_at: Path, runner: bool = False):
        self.stage, self.changes = _live(stage).name, changes
        listed = "; ".join(changes[:MAX_LISTED]) + (f"; {len(changes) - MAX_LISTED} more" if len(changes) > MAX_LISTED else "")
        name = "try-" + (changes[0].split(":")[0].split(".")[-1].replace("_", "-") if changes else "other")
        if runner:
            keep = f"run this config under a new --run-name (e.g. --run-name {name})"
            replace = "add --force"
        else:
            first = upstream(stage.name)
            keep = (f'set run_name to a new name in the parameters cell (e.g. run_name = "{name}")'
                    + (f" and run notebook{'s' if len(first) > 1 else ''} {', '.join(first)} with it first" if first else ""))
            replace = "run `stage.set_aside()` in a cell, then this one again, or pass --force to the runner"
        super().__init__(
            f"stage {self.stage} of run '{stage.run.name}' finished under another config ({listed}), so it is "
            f"not replaced. To keep it, {keep}; to replace it in this run, {replace} (the finished stage is then "
            f"kept in {kept_at}/ and comes back when its config is asked for again).")


def upstream(name: str) -> list[str]:
    """The notebooks a stage needs finished first in its run (its dependencies, transitively), in order."""
    need, todo = set(), list(stage_info(name).depends)
    while todo:
        need.add(dep := todo.pop())
        todo += STAGES[dep].depends
    return [s.notebook for s in STAGES.values() if s.name in need]


def _live(stage: Stage) -> Path:
    """The stage folder, without creating it (`stage.dir` does)."""
    return stage.run.path / stage_info(stage.name).folder


def kept_root(stage: Stage) -> Path:
    """`<NN_stage>.previous/`; one left by an older kit (a single stage folder) becomes its config's slot."""
    root = _live(stage).with_name(_live(stage).name + KEPT)
    if (root / MANIFEST).is_file():
        slot = _config_hash_of(_manifest(root)) or "unknown"
        tmp = root.with_name(f"{root.name}.{os.getpid()}.tmp")
        root.rename(tmp)
        root.mkdir()
        tmp.rename(root / slot)
    return root


def _manifest(folder: Path) -> dict | None:
    try:
        return read_manifest(folder)
    except StageIncomplete:  # a corrupt manifest: the stage counts as unfinished
        return None


def trusted_manifest(stage: Stage) -> dict | None:
    """The manifest of a stage finished with this config, these inputs and intact outputs, else None."""
    try:
        return read_manifest(_live(stage)) if stage.stale_reason() is None else None
    except StageIncomplete:
        return None


def _config_hash_of(m: dict | None) -> str:
    return str((m or {}).get("config_hash") or "unknown")


def _flat(cfg: dict[str, Any]) -> dict[str, Any]:
    return {f"{k}.{kk}" if isinstance(v, dict) else k: vv
            for k, v in cfg.items() for kk, vv in (v.items() if isinstance(v, dict) else [(None, v)])}


def config_changes(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """`section.key: old -> new` for every recipe key that differs between two stage configs."""
    if old is None:
        return ["(the finished stage's manifest records no config)"]
    a, b = _flat(old), _flat(new)
    show = lambda v: json.dumps(v, default=str)[:40] if v is not None else "(absent)"  # noqa: E731
    return [f"{k}: {show(a.get(k))} -> {show(b.get(k))}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)] or [
        "no recipe key differs, but the config's hash does"]


def refusal(stage: Stage, runner: bool = False) -> StageConfigChanged | None:
    """The refusal for a finished stage of another config with no kept copy of the requested one, else None."""
    m = _manifest(_live(stage))
    want = stage._config_hash()
    if m is None or m.get("config_hash") == want or (kept_root(stage) / want / MANIFEST).is_file():
        return None
    return StageConfigChanged(stage, config_changes(m.get("config"), stage.config), kept_root(stage) / _config_hash_of(m), runner)


def _move_metrics(run: Run, name: str, put: dict[str, Any] | None) -> dict[str, Any]:
    """Take the stage's metrics.json section, timing and attempts out (returned), then put `put`'s in."""
    with run._file_lock(run.path / ".metrics.lock"):  # the lock `Run.update_metrics` takes
        try:
            data = run.read_metrics()
        except ValueError:  # a corrupt metrics.json: nothing to carry
            return {}
        took = {"section": data.pop(name, None), **{k: data.get(k, {}).pop(name, None) for k in ("timings", "attempts")}}
        for k, v in (put or {}).items():
            if v is not None and k == "section":
                data[name] = v
            elif v is not None:
                data.setdefault(k, {})[name] = v
        atomic_write_json(run.metrics_path, data)
    return took


def _notebook_copy(stage: Stage) -> Path:
    return stage.run.path / "notebooks" / f"{stage_info(stage.name).notebook}.ipynb"


def set_aside(stage: Stage) -> Path | None:
    """Move the finished stage folder to its config's slot (replacing an older copy of that config), with
    its metrics and executed notebook; returns the slot, or None when the stage has not finished."""
    live, m = _live(stage), _manifest(_live(stage))
    if m is None:
        return None
    slot = kept_root(stage) / _config_hash_of(m)
    atomic_write_json(live / KEPT_METRICS, _move_metrics(stage.run, stage.name, None))
    if _notebook_copy(stage).is_file():
        os.replace(_notebook_copy(stage), live / KEPT_NOTEBOOK)
    if slot.exists():
        shutil.rmtree(slot)
    slot.parent.mkdir(exist_ok=True)
    live.rename(slot)
    return slot


def restore(stage: Stage) -> str | None:
    """Bring back the kept copy of this config when its inputs and outputs match (the finished stage in its
    place goes to its own slot); returns what was done, or None."""
    want, inputs = stage._config_hash(), stage._input_hashes()
    live, slot = _live(stage), kept_root(stage) / stage._config_hash()
    m, cur = _manifest(slot), _manifest(live)
    if m is None or m.get("config_hash") != want or m.get("input_hashes") != inputs:
        return None
    if cur is not None and cur.get("config_hash") == want and cur.get("input_hashes") == inputs:
        return None  # the live folder is this config already
    if any(hash_path(slot / o) != h for o, h in m.get("output_hashes", {}).items()):
        return None  # a damaged copy is left where it is, never read
    tmp = slot.with_name(f".restoring.{os.getpid()}")
    slot.rename(tmp)
    aside = set_aside(stage)
    if live.exists():
        shutil.rmtree(live)  # unfinished files of another attempt
    tmp.rename(live)
    kept = live / KEPT_METRICS
    _move_metrics(stage.run, stage.name, json.loads(kept.read_text(encoding="utf-8")) if kept.is_file() else None)
    kept.unlink(missing_ok=True)
    if (live / KEPT_NOTEBOOK).is_file():
        _notebook_copy(stage).parent.mkdir(exist_ok=True)
        os.replace(live / KEPT_NOTEBOOK, _notebook_copy(stage))
    return (f"{live.name}: the finished stage of this config and these inputs is restored from {slot}/, not "
            "recomputed" + (f"; the one it replaces is kept in {aside}/" if aside else ""))


def prepare(stage: Stage, force: bool = False) -> str | None:
    """Before a stage starts: restore a kept copy of this config, else set a finished stage of other inputs
    (or, with `force` or a kept copy of this config, of another config) aside; raises StageConfigChanged
    for a finished stage of another config otherwise. Returns what was done, or None."""
    if (note := restore(stage)):
        return note
    m = _manifest(_live(stage))
    if m is None or (m.get("config_hash") == stage._config_hash() and m.get("input_hashes") == stage._input_hashes()):
        return None
    other_config = m.get("config_hash") != stage._config_hash()
    if other_config and not force and (err := refusal(stage)):
        raise err
    slot = set_aside(stage)
    what = "another config" if other_config else "other inputs (an earlier stage was redone)"
    return f"{_live(stage).name}: the finished stage of {what} is kept in {slot}/; starting the stage afresh"
