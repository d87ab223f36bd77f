"""The model store: which model the monitors use, every promotion and rollback with who and why.

A folder (``[monitor] models_dir``, default ``models``)::

    current.json      the model in use: {"id", "path", "sha256", "time", "by", "why"}
    history.jsonl     one line per promotion or rollback, appended and synced, never rewritten
    <id>/model.pt     every model ever promoted (with model.onnx, MODEL_CARD.md, evaluation.json and, for a
                      fine-tune that held frames out, holdout.json: how it did on them before and after)

``current.json`` is replaced atomically; a monitor that was not given a model explicitly watches it and
switches to the new model between two layers, without a restart. No current.json: the shipped model.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segmentation.errors import SegmentationError

__all__ = ["DEFAULT_MODELS_DIR", "ModelStore", "ModelStoreError", "model_name", "operator_name"]

DEFAULT_MODELS_DIR = Path("models")
_MAX_FILE_BYTES = 16 << 20


class ModelStoreError(SegmentationError):
    """The store cannot be read or changed; the message names the file and what to do."""


def model_name(path: Path) -> str:
    """A model's name: its file's stem, or its folder's name for a ``model.pt`` (finetune's output, the
    store's copies), which says nothing by itself."""
    return path.parent.name if path.name == "model.pt" and path.parent.name else path.stem


def operator_name(given: str | None) -> str:
    """Who asks: ``--by``, else ``LAYERWATCH_OPERATOR``, else the login name."""
    return given or os.environ.get("LAYERWATCH_OPERATOR") or getpass.getuser()


@dataclass(frozen=True)
class Entry:
    event: str  # "promote" or "rollback"
    id: str
    path: Path
    sha256: str
    time: float
    by: str
    why: str
    forced: bool = False
    previous: str = ""

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "path": str(self.path)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Entry:
        return cls(**{**data, "path": Path(data["path"])})


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def current_file(self) -> Path:
        return self.root / "current.json"

    @property
    def history_file(self) -> Path:
        return self.root / "history.jsonl"

    def current(self) -> Entry | None:
        """The model in use, or None (the shipped model)."""
        if not self.current_file.is_file():
            return None
        data = self._read_json(self.current_file)
        try:
            entry = Entry.from_json(data)
        except (TypeError, KeyError) as err:
            raise ModelStoreError(f"{self.current_file}: not a model entry ({err}); restore it from history") from err
        if not entry.path.is_file():
            raise ModelStoreError(f"{self.current_file} names {entry.path}, which is missing; run `model rollback`")
        return entry

    def current_model(self, default: Path) -> Path:
        entry = self.current()
        return entry.path if entry is not None else default

    def stamp(self) -> float:
        """Changes whenever the current model does (what a monitor watches)."""
        try:
            return self.current_file.stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def history(self) -> list[Entry]:
        if not self.history_file.is_file():
            return []
        if self.history_file.stat().st_size > _MAX_FILE_BYTES:
            raise ModelStoreError(f"{self.history_file} is over {_MAX_FILE_BYTES >> 20} MB: not a model history")
        entries = []
        for n, line in enumerate(self.history_file.read_text().splitlines(), 1):
            if line.strip():
                try:
                    entries.append(Entry.from_json(json.loads(line)))
                except (ValueError, TypeError, KeyError) as err:
                    raise ModelStoreError(f"{self.history_file} line {n}: not a history entry ({err})") from err
        return entries

    def promote(self, candidate: Path, *, by: str, why: str, forced: bool, evaluation: dict[str, Any]) -> Entry:
        """Copy the candidate (and its ONNX, card) into the store and make it current."""
        from segmentation.model import file_sha256

        if not candidate.is_file():
            raise ModelStoreError(f"{candidate}: no such model checkpoint")
        sha = file_sha256(candidate)
        model_id = f"{model_name(candidate)}-{sha[:12]}"
        folder = self.root / model_id
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / "model.pt"
        if not target.is_file():
            shutil.copyfile(candidate, folder / "model.pt.part")
            (folder / "model.pt.part").replace(target)
        sidecars = (
            candidate.with_suffix(".onnx"),
            candidate.parent / "MODEL_CARD.md",
            candidate.parent / "holdout.json",
        )
        for extra in sidecars:
            if extra.is_file():
                shutil.copyfile(extra, folder / ("model.onnx" if extra.suffix == ".onnx" else extra.name))
        (folder / "evaluation.json").write_text(json.dumps(evaluation, indent=1, default=str))
        previous = self.current()
        entry = Entry("promote", model_id, target.resolve(), sha, time.time(), by, why, forced,
                      previous.id if previous else "shipped")  # fmt: skip
        self._make_current(entry)
        return entry

    def rollback(self, *, by: str, why: str, to: str | None = None) -> Entry:
        """Back to the model that was in use before the current one was promoted (or to the promoted model
        ``to``; "shipped": the shipped model)."""
        from segmentation.inference import DEFAULT_MODEL
        from segmentation.model import file_sha256

        current = self.current()
        promoted = {e.id: e for e in self.history() if e.event == "promote"}  # the latest promotion of each
        if to is None:
            if current is None or current.id not in promoted:
                raise ModelStoreError("the shipped model is in use: there is nothing to roll back (--to ID)")
            to = promoted[current.id].previous  # what was in use before it was promoted
        if to == "shipped":
            target = Entry("rollback", "shipped", DEFAULT_MODEL.resolve(), file_sha256(DEFAULT_MODEL), time.time(),
                           by, why, False, current.id if current else "")  # fmt: skip
        elif to in promoted:
            e = promoted[to]
            target = Entry("rollback", e.id, e.path, e.sha256, time.time(), by, why, False,
                           current.id if current else "shipped")  # fmt: skip
        else:
            known = ", ".join(sorted(promoted)) or "none"
            raise ModelStoreError(f"--to {to}: not a promoted model (promoted: {known}; or 'shipped')")
        self._make_current(target)
        return target

    # ---- files ------------------------------------------------------------------------------------
    def _make_current(self, entry: Entry) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with self.history_file.open("a") as f:  # the history first: a crash never leaves an unexplained change
            f.write(json.dumps(entry.to_json()) + "\n")
            f.flush()
            os.fsync(f.fileno())
        tmp = self.current_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(entry.to_json()))
        tmp.replace(self.current_file)

    def _read_json(self, path: Path) -> dict[str, Any]:
        if path.stat().st_size > _MAX_FILE_BYTES:
            raise ModelStoreError(f"{path} is over {_MAX_FILE_BYTES >> 20} MB: not a model entry")
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as err:
            raise ModelStoreError(f"{path}: not JSON ({err}); restore it from {self.history_file.name}") from err
        if not isinstance(data, dict):
            raise ModelStoreError(f"{path}: not a model entry")
        return data
