"""Run folders: one folder per run, one subfolder per stage, a manifest written last.

Layout (`runs/<run>/`): `recipe.yaml` (resolved), `env.json`, `notebooks/` (executed copies), `metrics.json`,
`01_diagnose/` ... `05_evaluate/`, and finished stages set aside per config (`<folder>.previous/`: `kept_stages`).

A stage is complete only when its `manifest.json` exists and matches the current config hash and the
hashes of its inputs; the manifest is written atomically (temp file + rename) as the stage's last act,
so an interrupted stage has none and is redone. Partial files it left (e.g. an appended samples JSONL)
may be resumed by the stage itself, but no other stage reads them: `require()` refuses an incomplete
stage with a message that says which notebook to run. Which stages exist, and what each depends on, is
the registry in `sinternal_lib/stages.py`; `stage_for(run, name)` gives a stage of a run from it.
Versions, git revision and hardware in env.json and the manifests come from `provenance`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from .config import dump_recipe
from .provenance import git_revision, hardware, package_versions, precision
from .recipe_sections import Recipe
from .stages import LEGACY_SECTIONS, STAGES, stage_info

MANIFEST = "manifest.json"
STAGE_KEY = "stage_key.txt"  # config + inputs the partial files of an unfinished stage belong to
ATTEMPTS = "attempts.json"  # every invocation of the stage for this config, with its wall time


class StageIncomplete(RuntimeError):
    """An earlier stage's outputs are missing or unfinished."""


class RunLocked(RuntimeError):
    """Another process holds this run."""


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write text to `path` through a temp file and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def hash_path(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a folder's (relative name, file hash) list; 'missing' if absent."""
    path = Path(path)
    if path.is_file():
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    if path.is_dir():
        h = hashlib.sha256()
        for p in sorted(q for q in path.rglob("*") if q.is_file() and not q.name.startswith(".")):
            h.update(str(p.relative_to(path)).encode())
            h.update(hash_path(p).encode())
        return h.hexdigest()
    return "missing"


@dataclass
class Stage:
    """One stage of a run: its folder, its config hash and its inputs; `finish()` writes the manifest."""

    run: "Run"
    name: str
    config: dict[str, Any]
    inputs: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    _reused: dict | None = field(default=None, init=False, repr=False)  # the manifest begin() found complete

    @property
    def dir(self) -> Path:
        return self.run.stage_dir(self.name)

    @property
    def manifest_path(self) -> Path:
        return self.dir / MANIFEST

    def _input_hashes(self) -> dict[str, str]:
        return {k: hash_path(v) for k, v in sorted(self.inputs.items())}

    def _config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.config, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def is_complete(self) -> bool:
        """True when a manifest exists and matches this config and these inputs, and outputs are intact."""
        return self.stale_reason() is None

    def stale_reason(self) -> str | None:
        """Why the stage must be (re)done, or None when its manifest can be trusted."""
        m = read_manifest(self.dir)
        if m is None:
            return f"{self.manifest_path} is missing: the stage never finished"
        if m.get("config_hash") != self._config_hash():
            return f"{self.manifest_path}: the stage's config changed since it ran"
        if m.get("input_hashes") != self._input_hashes():
            return f"{self.manifest_path}: an input changed since the stage ran"
        for name, h in m.get("output_hashes", {}).items():
            if hash_path(self.dir / name) != h:
                return f"{self.dir / name} was changed or truncated after the stage finished"
        return None

    def invalidate(self) -> None:
        """Remove the manifest so the stage counts as unfinished (outputs are rewritten by the rerun)."""
        self.manifest_path.unlink(missing_ok=True)

    def set_aside(self) -> Path | None:
        """Keep the finished stage in `<folder>.previous/<config_hash>/` and empty its folder, so that another
        config can run here; asking for its config again brings it back (`kept_stages`)."""
        from . import kept_stages  # here, not at the top: kept_stages imports this module (an import cycle)

        return kept_stages.set_aside(self)

    def begin(self) -> str | None:
        """Start (or resume) the stage after `kept_stages.prepare` (a kept copy of this config comes back; a
        finished stage of another config raises `StageConfigChanged` unless set aside). Partial files are kept
        for resuming only when they came from this config and inputs (`stage_key.txt`), else the folder is
        emptied. A finished stage rerun as it is keeps its manifest if `finish()` sees the same outputs."""
        from . import kept_stages  # here, not at the top: kept_stages imports this module (an import cycle)

        note = kept_stages.prepare(self)
        key_file = self.dir / STAGE_KEY
        key = f"{self._config_hash()}-{hashlib.sha256(json.dumps(self._input_hashes(), sort_keys=True).encode()).hexdigest()[:16]}"
        self._reused = kept_stages.trusted_manifest(self)
        reason = None
        if self._reused is None and self.dir.is_dir() and any(p.name != STAGE_KEY for p in self.dir.iterdir()):
            old = key_file.read_text().strip() if key_file.is_file() else None
            if old != key:
                reason = (f"{self.dir}: its files came from another config or inputs" if old else
                          f"{self.dir}: its files carry no stage key (an older kit)") + "; starting the stage afresh"
                for p in self.dir.iterdir():
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(key_file, key + "\n")
        if self._reused is None:  # a finished stage rerun as it is starts no attempt
            attempts = self._close_open_attempts()
            if attempts and attempts[-1].get("finished"):  # a finished stage redone (--force): time it afresh
                attempts = []
            self.started = time.time()
            attempts.append({"started_at": _iso(self.started), "start": self.started})
            atomic_write_json(self.dir / ATTEMPTS, attempts)
        return "; ".join(x for x in (note, reason) if x) or None

    def _close_open_attempts(self, current: float | None = None) -> list[dict[str, Any]]:
        """The attempts so far; one that never finished (killed) gets the time to the newest file it wrote,
        marked as estimated."""
        path = self.dir / ATTEMPTS
        try:
            attempts = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
        except json.JSONDecodeError:
            attempts = []  # a torn record of timings never blocks the stage
        for a in attempts:
            if "wall_s" not in a and a.get("start") != current:
                files = [p for p in self.dir.rglob("*") if p.is_file() and p.name not in (ATTEMPTS, STAGE_KEY)]
                last = max((p.stat().st_mtime for p in files), default=a["start"])
                a.update(wall_s=round(max(last - a["start"], 0.0), 1), finished=False, estimated=True)
        return attempts

    def finish(self, outputs: list[str], summary: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> dict:
        """Write the manifest (last, atomically) and the stage's section of metrics.json; `outputs` are paths
        relative to the stage folder whose hashes are recorded."""
        wall = time.time() - self.started
        missing = [o for o in outputs if not (self.dir / o).exists()]
        if missing:
            raise StageIncomplete(f"stage {self.name}: declared outputs missing: {missing}")
        out_hashes = {o: hash_path(self.dir / o) for o in outputs}
        kept = self._reused if self._reused and self._reused.get("output_hashes") == out_hashes else None
        if kept:  # a finished stage rerun to the same outputs: its manifest stays as it is
            total, record = kept.get("total_wall_time_s"), kept.get("attempts", [])
        else:
            attempts = [] if self._reused else self._close_open_attempts(current=self.started)
            if not attempts or attempts[-1].get("start") != self.started:  # begin() was not called: count this one too
                attempts.append({"started_at": _iso(self.started), "start": self.started})
            attempts[-1].update(wall_s=round(wall, 1), finished=True, estimated=False)
            atomic_write_json(self.dir / ATTEMPTS, attempts)
            total = round(sum(a["wall_s"] for a in attempts), 1)
            record = [{k: a[k] for k in ("started_at", "wall_s", "finished", "estimated")} for a in attempts]
        if summary is not None:
            self.run.update_metrics(self.name, summary)
            self.run.update_metrics("timings", {self.name: total})
            self.run.update_metrics("attempts", {self.name: record})
        if kept:
            return kept
        manifest = {  # wall_time_s: this invocation; `attempts`: every one for this config
            "stage": self.name, "run": self.run.name,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "wall_time_s": round(wall, 2), "total_wall_time_s": total, "attempts": record,
            "seed": self.run.recipe.run.seed, "config_hash": self._config_hash(), "config": self.config,
            "inputs": {k: str(v) for k, v in sorted(self.inputs.items())}, "input_hashes": self._input_hashes(),
            "output_hashes": out_hashes, "versions": package_versions(), "git": git_revision(),
            "precision": precision(self.run.recipe), **(extra or {}),
        }
        atomic_write_json(self.manifest_path, manifest)
        return manifest


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def read_manifest(stage_dir: str | os.PathLike) -> dict | None:
    """The manifest of a stage folder, or None if absent; a corrupt one raises naming the file."""
    p = Path(stage_dir) / MANIFEST
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise StageIncomplete(f"{p} is corrupt ({e}); delete it to redo the stage") from e


class Run:
    """A run folder bound to a resolved recipe."""

    def __init__(self, recipe: Recipe, name: str | None = None, root: str | os.PathLike | None = None):
        self.recipe = recipe
        self.name = name or recipe.run.name
        base = Path(root) if root is not None else recipe.resolve_path(recipe.run.output_root)
        self.path = base / self.name
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = None

    def stage_dir(self, stage: str) -> Path:
        d = self.path / stage_info(stage).folder
        d.mkdir(parents=True, exist_ok=True)
        return d

    def stage(self, name: str, sections: tuple[str, ...], inputs: dict[str, str | os.PathLike] | None = None) -> Stage:
        """A stage whose config is the named recipe sections (plus the run seed)."""
        cfg = {s: self.recipe.to_dict()[s] for s in sections}
        cfg["seed"] = self.recipe.run.seed
        return Stage(self, name, cfg, {k: str(v) for k, v in (inputs or {}).items()})

    def require(self, stage: str, file: str | None = None) -> Path:
        """Path to a finished earlier stage's folder (or a file in it); refuses unfinished stages."""
        info = stage_info(stage)
        d = self.path / info.folder
        m = read_manifest(d)
        if m is None:
            raise StageIncomplete(
                f"stage '{stage}' of run '{self.name}' has not finished ({d / MANIFEST} missing): "
                f"run notebook {info.notebook}.ipynb first"
            )
        if file is not None:
            p = d / file
            if not p.exists():
                raise StageIncomplete(f"{p} is missing although the stage finished; rerun {info.notebook}")
            if file in m.get("output_hashes", {}) and hash_path(p) != m["output_hashes"][file]:
                raise StageIncomplete(f"{p} no longer matches its manifest (changed or truncated); rerun {info.notebook}")
            return p
        return d

    def is_done(self, stage: str) -> bool:
        return read_manifest(self.path / stage_info(stage).folder) is not None

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.json"

    def read_metrics(self) -> dict[str, Any]:
        if not self.metrics_path.is_file():
            return {}
        try:
            data = json.loads(self.metrics_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{self.metrics_path} is corrupt ({e}); fix it or delete it and rerun the "
                             "stages with --force (each stage writes its own section)") from e
        for old, new in LEGACY_SECTIONS.items():  # a run made before the stages had one name each
            if old in data and new not in data:
                data[new] = data.pop(old)
        return data

    def update_metrics(self, section: str, values: dict[str, Any]) -> dict[str, Any]:
        """Merge `values` into one section of metrics.json (under a file lock, written atomically)."""
        with self._file_lock(self.path / ".metrics.lock"):
            data = self.read_metrics()
            data.setdefault(section, {}).update(values)
            atomic_write_json(self.metrics_path, data)
        return data

    @staticmethod
    @contextlib.contextmanager
    def _file_lock(path: Path) -> Iterator[None]:
        with open(path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def acquire(self) -> None:
        """Hold the run's lock for this process; a second process is refused with a clear message."""
        fd = os.open(self.path / ".run.lock", os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLocked(f"run '{self.name}' ({self.path}) is in use by another process; wait for it or pick another --run-name") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def release(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def write_env(self) -> Path:
        """Write env.json (versions, git, hardware, interpreter) and the resolved recipe.yaml."""
        dump_recipe(self.recipe, self.path / "recipe.yaml")
        env = {
            "run": self.name,
            "recipe_source": self.recipe.source,
            "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "python": sys.executable,
            "versions": package_versions(),
            "git": git_revision(),
            "hardware": hardware(),
            "seed": self.recipe.run.seed,
            "env": {k: os.environ[k] for k in ("SINTERNAL_HOME", "SINTERNAL_SHARED_DATA", "HF_HUB_OFFLINE") if k in os.environ},
        }
        return atomic_write_json(self.path / "env.json", env)


def quiet_loaders() -> None:
    """Silence the libraries' own loading chatter (weight-loading and dataset-saving progress bars,
    info-level logs) so executed notebooks show the kit's results; the kit's progress bars stay."""
    # bitsandbytes warns that the optional hub-fetched `kernels` CPU kernel is absent (the kit never fetches from
    # the hub); transformers 5.24 flags TRL 1.16's `gradient_checkpointing` field as deprecated: nothing to act on.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    logging.getLogger("kernels").setLevel(logging.ERROR)  # "skipping publisher trust check ... offline mode"
    warnings.filterwarnings("ignore", message=r".*gradient_checkpointing.* is deprecated", category=FutureWarning)
    import datasets  # here, not at the top: both take seconds to import
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity_error()


def open_run(recipe: Recipe, name: str | None = None, root: str | os.PathLike | None = None) -> Run:
    """Open (create if needed) the run folder for `recipe`, writing env.json and recipe.yaml; seeds
    everything and quiets the libraries' loading output (`quiet_loaders`)."""
    run = Run(recipe, name, root)
    run.write_env()
    quiet_loaders()  # before anything imports bitsandbytes
    from transformers import set_seed  # here, not at the top: importing transformers takes seconds

    set_seed(recipe.run.seed)  # python, numpy and torch (CPU and CUDA)
    return run


def stage_for(run: Run, name: str) -> Stage:
    """The Stage object for `name` in `run`: its config sections and its upstream manifests as inputs."""
    info = stage_info(name)
    inputs: dict[str, Any] = {dep: run.path / STAGES[dep].folder / MANIFEST for dep in info.depends}
    if "spec" in info.sections:
        inputs["spec_file"] = run.recipe.resolve_path(run.recipe.spec.path)
    for i, path in enumerate(run.recipe.self_verification.spec_variants if info.name == "self_verification" else ()):
        inputs[f"spec_variant_{i}"] = run.recipe.resolve_path(path)  # the edited specs' content, not only their paths
    return run.stage(info.name, info.sections, inputs)


def last_complete_checkpoint(folder: str | os.PathLike) -> str | None:
    """The newest `checkpoint-N` folder that a Trainer finished saving (it holds trainer_state.json,
    which the Trainer writes after the weights and optimizer), or None. A checkpoint half-written by a
    killed run is skipped, so resume never starts from it."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    done = [p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()]
    return str(max(done, key=lambda p: int(p.name.split("-")[-1]))) if done else None
