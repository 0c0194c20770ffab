"""What each stage folder of the three-stage workflow was trained with, and how a rerun is checked against it.

A finished stage's ``stage.json`` holds its planned step (command, environment, folders, what it starts
from) plus ``settings``: the script, its arguments, the effective environment (what the workflow adds, e.g.
``DATA_PATH``, ``LR``, ``EVAL_DATA_PATH``, and the training variables inherited from the caller, e.g.
``SEED``, ``VISION_TOWER``), what it starts from, and SHA-256 checksums of its inputs (training data,
validation data, the projector file or model folder it starts from). ``started.json`` holds the same
while the stage runs (and after it failed).

On a rerun :func:`check_plan` compares every stage of the requested chain with its folder: identical ->
skipped; finished (or left with checkpoints) under other settings -> ``changed``, which
:func:`refusal` turns into one message listing every difference (the caller refuses unless ``FORCE``);
every stage after one that runs runs too, and folders of other chains that continue a stage that runs are
moved aside (:func:`stale_folders`, :func:`move_aside`). ``plan.json`` (:func:`read_state`,
:func:`update_state`, :func:`write_state`) maps every chain run into the root to its folders and every
folder to its record, so it always describes what the folders hold.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from llava.utils.atomic import atomic_write_json

if TYPE_CHECKING:
    from llava.workflows.plan import StageStep

RECORD, STARTED, PLAN = "stage.json", "started.json", "plan.json"
BIG_FILE = 64 << 20  # files this large are hashed once per (size, mtime) and cached
FOLDER_RE = re.compile(r"stage\d+(?:-\d+)*")
OUTPUT_MARKERS = MappingProxyType({"projector": "mm_projector.bin", "model": "config.json",
                                   "lora": "adapter_config.json"})
CHECKSUM_ROLES = (("data", "DATA_PATH"), ("eval_data", "EVAL_DATA_PATH"), ("init", "the file it starts from"))


class SettingsChanged(ValueError):
    """A rerun asks a stage folder for other settings than the ones it was trained with."""


class Checksums:
    """SHA-256 of files and folders (a folder: its top-level files, by name). Files of :data:`BIG_FILE` bytes
    or more are cached in ``cache_file`` by size and modification time; smaller ones are always read.
    Relative paths are taken from ``base`` (where the stages run), else from the current folder."""

    def __init__(self, cache_file: Path | None = None, base: Path | None = None) -> None:
        self.cache_file = cache_file
        self.base = base
        self._cache: dict[str, Any] = {}
        self._dirty = False
        if cache_file is not None and cache_file.is_file():
            try:
                loaded = json.loads(cache_file.read_text())
            except (OSError, ValueError):
                loaded = {}
            self._cache = loaded if isinstance(loaded, dict) else {}

    def file(self, path: Path) -> str:
        """Hex SHA-256 of one file."""
        st = path.stat()
        key, stamp = str(path.resolve()), {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        hit = self._cache.get(key)
        big = st.st_size >= BIG_FILE
        if big and isinstance(hit, dict) and hit.get("sha256") and all(hit.get(k) == v for k, v in stamp.items()):
            return str(hit["sha256"])
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digest = h.hexdigest()
        if big:
            self._cache[key] = {**stamp, "sha256": digest}
            self._dirty = True
        return digest

    def of(self, path: str | None) -> str | None:
        """Checksum of a file or folder; ``None`` when unset or missing."""
        if not path:
            return None
        p = Path(path)
        if not p.is_absolute() and self.base is not None:
            p = self.base / p
        if p.is_file():
            return self.file(p)
        if p.is_dir():
            h = hashlib.sha256()
            for f in sorted(x for x in p.iterdir() if x.is_file()):
                h.update(f"{f.name}\0{self.file(f)}\n".encode())
            return "folder:" + h.hexdigest()
        return None

    def save(self) -> None:
        """Write the cache of large files' checksums (when it changed)."""
        if self._dirty and self.cache_file is not None:
            atomic_write_json(self.cache_file, self._cache)
            self._dirty = False


def step_record(step: StageStep) -> dict[str, Any]:
    """JSON-able description of a planned step."""
    rec = asdict(step)
    rec["command"] = step.command
    return rec


def stage_settings(step: StageStep, inherited: Mapping[str, str], sums: Checksums,
                   hash_init: bool = True) -> dict[str, Any]:
    """What a stage trains with: script, args, start, effective environment, seed and input checksums.
    ``hash_init=False`` leaves the start's checksum out (it is an earlier stage's output that will change)."""
    env = dict(sorted({**inherited, **step.env}.items()))
    return {"script": Path(step.script).name, "args": list(step.args), "init_from": step.init_from, "env": env,
            "seed": env.get("SEED"),
            "checksums": {"data": sums.of(step.env.get("DATA_PATH")),
                          "eval_data": sums.of(step.env.get("EVAL_DATA_PATH")),
                          "init": sums.of(step.init_from) if hash_init else None}}


def _show(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, (list, tuple)):
        return repr(shlex.join(map(str, value)))
    return str(value)


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _short(digest: Any) -> str:
    return "missing" if not digest else str(digest).split(":")[-1][:12]


def settings_diff(old: Any, new: Mapping[str, Any], ignore_init: bool = False) -> list[str]:
    """Human-readable differences between recorded settings ``old`` and requested ``new`` (empty: identical)."""
    if not isinstance(old, Mapping):
        return ["no settings recorded (trained by an older version of the workflow)"]
    out = [f"{label} {_show(old.get(key))} -> {_show(new.get(key))}"
           for key, label in (("script", "script"), ("init_from", "starts from"), ("args", "args"))
           if _norm(old.get(key)) != _norm(new.get(key))]
    old_env, new_env = old.get("env") or {}, new.get("env") or {}
    out += [f"{k} {_show(old_env.get(k))} -> {_show(new_env.get(k))}" for k in sorted(set(old_env) | set(new_env))
            if old_env.get(k) != new_env.get(k)]
    old_sums, new_sums = old.get("checksums") or {}, new.get("checksums") or {}
    for role, what in CHECKSUM_ROLES:
        if role == "init" and ignore_init:
            continue
        path_same = (old.get("init_from") == new.get("init_from") if role == "init"
                     else old_env.get(what) == new_env.get(what))
        if path_same and old_sums.get(role) != new_sums.get(role):
            out.append(f"{what} contents changed (sha256 {_short(old_sums.get(role))} -> "
                       f"{_short(new_sums.get(role))})")
    return out


@dataclass
class StageCheck:
    """One stage of a requested chain against its folder: ``status`` is ``same`` (finished, identical
    settings), ``new`` (nothing usable there), ``resume`` (an unfinished run with identical settings) or
    ``changed`` (``diffs`` lists how); ``action`` is ``skip``, ``run`` (fresh folder) or ``resume``."""

    step: StageStep
    status: str
    action: str
    diffs: list[str] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)
    reason: str = ""

    @property
    def folder(self) -> str:
        """The stage folder's name under the output root (``stage1-2``)."""
        return Path(self.step.stage_dir).name


def load_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``; ``None`` when missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _folder_status(step: StageStep, settings: Mapping[str, Any],
                   ignore_init: bool) -> tuple[str, list[str], dict[str, Any] | None]:
    folder, out = Path(step.stage_dir), Path(step.output_dir)
    done = load_json(folder / RECORD)
    if done is not None and (out / OUTPUT_MARKERS[step.kind.makes]).exists():
        diffs = settings_diff(done.get("settings"), settings, ignore_init)
        return ("changed" if diffs else "same"), diffs, done
    started = load_json(folder / STARTED)
    if started is not None:
        diffs = settings_diff(started.get("settings"), settings, ignore_init)
        if not diffs:
            return "resume", [], None
        if out.is_dir() and any(out.glob("checkpoint-*")):
            return "changed", [*diffs, "(unfinished; its checkpoints would be resumed)"], None
    return "new", [], None


def check_plan(plan: Sequence[StageStep], inherited: Mapping[str, str], sums: Checksums,
               force_all: bool = False) -> list[StageCheck]:
    """Compare every planned stage with its folder and decide what runs (reads only; see the module doc)."""
    checks: list[StageCheck] = []
    upstream = ""  # folder of the previous stage when it runs
    for step in plan:
        settings = stage_settings(step, inherited, sums, hash_init=not upstream)
        status, diffs, done = _folder_status(step, settings, ignore_init=bool(upstream))
        if force_all:
            action, reason = "run", "FORCE=all"
        elif upstream:
            action, reason = "run", f"it starts from {upstream}, which runs"
        elif status == "same":
            action, reason = "skip", "already finished with these settings"
        elif status == "resume":
            action, reason = "resume", "continuing its unfinished run"
        else:
            action, reason = "run", "settings changed (FORCE)" if status == "changed" else "no finished run here"
        record = done if action == "skip" and done is not None else \
            {**step_record(step), "settings": settings, "finished": False}
        check = StageCheck(step, status, action, diffs, record, reason)
        checks.append(check)
        upstream = check.folder if action != "skip" else ""
    return checks


def stale_folders(root: Path, checks: Sequence[StageCheck]) -> list[Path]:
    """Folders of other chains under ``root`` that continue a stage that runs (they started from its old
    output)."""
    names = {c.folder for c in checks}
    running = [c.folder for c in checks if c.action != "skip"]
    if not running or not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and FOLDER_RE.fullmatch(p.name) and p.name not in names
                  and any(p.name.startswith(r + "-") for r in running))


def refusal(checks: Sequence[StageCheck], stale: Sequence[Path], root: str | Path) -> str | None:
    """The one-line refusal listing every changed stage's differences and how to proceed (``None``: none)."""
    changed = [c for c in checks if c.status == "changed"]
    if not changed:
        return None
    parts = [f"stage {c.step.stage} ({c.folder}): " + ", ".join(c.diffs) for c in changed]
    first = checks.index(changed[0])
    later = [c.folder for c in checks[first + 1:]] + [p.name for p in stale]
    rerun = f"stage {changed[0].step.stage} ({changed[0].folder})" + (
        f" and every later stage ({', '.join(later)})" if later else "")
    return (f"{root} holds stages trained with other settings than requested: " + "; ".join(parts)
            + f". Nothing was run. Set FORCE=1 to rerun {rerun}, or use a new OUTPUT_ROOT to keep these results")


def move_aside(path: Path) -> Path:
    """Rename a stage folder to ``<name>.stale`` (an older ``.stale`` folder of that name is removed)."""
    target = path.with_name(path.name + ".stale")
    if target.exists():
        shutil.rmtree(target)
    path.rename(target)
    return target


def read_state(root: Path) -> dict[str, Any]:
    """``plan.json``: ``{"chains": {label: [folder, ...]}, "stages": {folder: record}}`` (empty when absent or
    written by an older version)."""
    data = load_json(root / PLAN)
    if not data or not isinstance(data.get("chains"), dict) or not isinstance(data.get("stages"), dict):
        return {"chains": {}, "stages": {}}
    return data


def update_state(state: Mapping[str, Any], label: str, checks: Sequence[StageCheck],
                 removed: Collection[str]) -> dict[str, Any]:
    """The state with the requested chain's records; folders in ``removed`` and chains through them dropped."""
    stages = {k: v for k, v in state["stages"].items() if k not in removed}
    stages.update({c.folder: c.record for c in checks})
    chains = {k: v for k, v in state["chains"].items() if k != label and all(f in stages for f in v)}
    chains[label] = [c.folder for c in checks]
    return {"chains": dict(sorted(chains.items())), "stages": dict(sorted(stages.items()))}


def write_state(root: Path, state: Mapping[str, Any]) -> None:
    """Write ``plan.json``."""
    atomic_write_json(root / PLAN, state)


def start_folder(check: StageCheck) -> None:
    """Before a stage runs: a fresh folder (the old one moved aside) or, to resume, the old one without its
    evaluation; then ``started.json``."""
    folder = Path(check.step.stage_dir)
    if check.action == "run" and folder.exists():
        move_aside(folder)
    elif check.action == "resume":
        shutil.rmtree(folder / "eval", ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / STARTED, check.record)


def finish_folder(check: StageCheck) -> dict[str, Any]:
    """After a stage succeeded: ``stage.json`` (the started record, finished); returns it as read back."""
    folder = Path(check.step.stage_dir)
    atomic_write_json(folder / RECORD, {**check.record, "finished": True})
    (folder / STARTED).unlink(missing_ok=True)
    record = load_json(folder / RECORD)
    assert record is not None
    return record
