"""A damaged cache entry (truncated or corrupt file) is rebuilt with a warning, never trusted."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from sam3d.data.catalog import Case, discover
from sam3d.data.training.cache import CachedCase, cache_case

SPACING = (1.0, 1.0, 1.0)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_last_byte(path: Path) -> None:
    content = bytearray(path.read_bytes())
    content[-1] ^= 0xFF
    path.write_bytes(bytes(content))


DAMAGES: dict[str, tuple[str, Callable[[Path], None]]] = {
    "truncated image": ("image.nii", _truncate),
    "corrupt label, same size": ("label.nii", _flip_last_byte),
    "truncated meta.json": ("meta.json", _truncate),
}


def _content(entry: CachedCase) -> tuple[np.ndarray, np.ndarray, dict]:
    meta = {key: value for key, value in entry.meta.items() if key != "seconds"}
    image, label = (np.asarray(nib.load(entry.folder / name).dataobj) for name in ("image.nii", "label.nii"))
    return image, label, meta


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_cache_entry_is_rebuilt_as_a_fresh_build(blob_root, tmp_path, damage):
    case: Case = next(iter(discover(blob_root, "msd").cases.values()))
    entry = cache_case(case, tmp_path / "cache", SPACING)
    name, damaging = DAMAGES[damage]
    damaging(entry.folder / name)
    with pytest.warns(UserWarning, match=rf"cache entry {entry.folder} of case {case.case_id} is damaged"):
        rebuilt = cache_case(case, tmp_path / "cache", SPACING)
    fresh = cache_case(case, tmp_path / "fresh-cache", SPACING)
    assert rebuilt.folder == entry.folder
    image, label, meta = _content(rebuilt)
    fresh_image, fresh_label, fresh_meta = _content(fresh)
    np.testing.assert_array_equal(image, fresh_image)
    np.testing.assert_array_equal(label, fresh_label)
    assert meta == fresh_meta
    assert sorted(path.name for path in (tmp_path / "cache").iterdir()) == [entry.folder.name]  # nothing left


def test_an_intact_cache_entry_is_used_as_it_is(blob_root, tmp_path, recwarn):
    case = next(iter(discover(blob_root, "msd").cases.values()))
    entry = cache_case(case, tmp_path / "cache", SPACING)
    written = {path.name: path.stat().st_mtime_ns for path in entry.folder.iterdir()}
    again = cache_case(case, tmp_path / "cache", SPACING)
    assert {path.name: path.stat().st_mtime_ns for path in again.folder.iterdir()} == written
    assert not [warning for warning in recwarn if "cache entry" in str(warning.message)]
