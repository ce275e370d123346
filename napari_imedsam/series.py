"""A folder of images annotated one after another (no Qt, no napari).

The series remembers its files, where the annotator is, and where labels go.
Labels are saved as ``<stem>_labels.tif`` (with ``<stem>_labels_uncertainty.tif``
and ``<stem>_labels.json``, the export record) in the output folder, and a
later save of the same image never replaces an earlier one: it becomes
``<stem>_labels-2.tif``, ``-3``... The newest is what a reopened series loads.
The state file ``series.json`` in the output folder lets a reopened series
resume at the image where it stopped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .io import NIFTI_SUFFIXES
from .saving import atomic_save

#: Files a series picks up from a folder (DICOM series are folders: open them one by one).
SERIES_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", *NIFTI_SUFFIXES)
STATE_NAME = "series.json"


def _stem(path: Path) -> str:
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def list_images(folder: str | Path) -> list[Path]:
    """The images of ``folder`` in name order (hidden files and sub-folders left out)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.name.lower().endswith(SERIES_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"{folder} holds no images ({', '.join(SERIES_SUFFIXES)})")
    return files


@dataclass
class Series:
    """Files to annotate in order, the current position and the output folder."""

    files: list[Path]
    out_dir: Path
    index: int = 0
    saved: dict[str, list[str]] = field(default_factory=dict)  # image name -> label files

    @classmethod
    def open(cls, files: list[Path], out_dir: str | Path) -> "Series":
        """A series of ``files``; resumes where a saved series of the same files stopped."""
        if not files:
            raise ValueError("a series needs at least one image")
        out_dir = Path(out_dir)
        series = cls([Path(f) for f in files], out_dir)
        state = out_dir / STATE_NAME
        if state.is_file():
            try:
                data = json.loads(state.read_text())
            except (OSError, ValueError):
                data = {}
            if data.get("files") == [str(f) for f in series.files]:
                series.index = min(max(int(data.get("index", 0)), 0), len(files) - 1)
                series.saved = {k: list(v) for k, v in data.get("saved", {}).items()}
        return series

    @property
    def current(self) -> Path:
        return self.files[self.index]

    def describe(self) -> str:
        return f"image {self.index + 1} of {len(self.files)}: {self.current.name}"

    def move(self, step: int) -> bool:
        """Go ``step`` images on (or back); False at either end."""
        target = self.index + step
        if not 0 <= target < len(self.files):
            return False
        self.index = target
        self.save_state()
        return True

    def labels_path(self, image: Path | None = None) -> Path:
        """Where a first save of ``image``'s labels goes (later saves get ``-2``, ``-3``...)."""
        return self.out_dir / f"{_stem(image or self.current)}_labels.tif"

    def latest_labels(self, image: Path | None = None) -> Path | None:
        """The newest saved labels of ``image`` in the output folder, or None."""
        stem = _stem(image or self.current)
        pattern = re.compile(rf"^{re.escape(stem)}_labels(?:-(\d+))?\.tif$")
        found = []
        for path in self.out_dir.glob(f"{stem}_labels*.tif"):
            match = pattern.match(path.name)
            if match:
                found.append((int(match.group(1) or 1), path))
        return max(found)[1] if found else None

    def record_save(self, image: Path, written: list[Path]) -> None:
        self.saved.setdefault(image.name, []).extend(p.name for p in written)
        self.save_state()

    def save_state(self) -> None:
        text = json.dumps({"files": [str(f) for f in self.files], "index": self.index,
                           "saved": self.saved}, indent=2) + "\n"
        atomic_save(self.out_dir / STATE_NAME, lambda tmp: tmp.write_text(text), overwrite=True)
