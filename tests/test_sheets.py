"""Sample sheets: each bad input fails with the file, the row and the fix."""

from __future__ import annotations

import pytest

from healnet.sheets import read_sample_sheet


def _write(tmp_path, text):
    path = tmp_path / "slides.tsv"
    path.write_text(text)
    return path


def test_good_sheet(tmp_path):
    (tmp_path / "a.svs").write_bytes(b"x")
    path = _write(tmp_path, f"case_id\tslide_id\tpath\tmpp\nP1\tS1\t{tmp_path}/a.svs\t0.25\n")
    sheet = read_sample_sheet(path)
    assert list(sheet["slide_id"]) == ["S1"] and sheet["mpp"].iloc[0] == 0.25


def test_missing_column(tmp_path):
    path = _write(tmp_path, "case_id\tpath\nP1\ta.svs\n")
    with pytest.raises(ValueError, match=r"slides.tsv: missing column\(s\) \['slide_id'\]"):
        read_sample_sheet(path)


def test_duplicate_slide_ids_name_lines(tmp_path):
    path = _write(tmp_path, "case_id\tslide_id\tpath\nP1\tS1\ta\nP2\tS2\tb\nP3\tS1\tc\n")
    with pytest.raises(ValueError, match=r"duplicate slide_id 'S1' \(lines 2, 4\)"):
        read_sample_sheet(path, check_files=False)


def test_missing_slide_file_names_line_and_path(tmp_path):
    path = _write(tmp_path, "case_id\tslide_id\tpath\nP1\tS1\tnowhere/x.svs\n")
    with pytest.raises(FileNotFoundError, match=r"line 2: nowhere/x.svs"):
        read_sample_sheet(path)


def test_missing_sheet(tmp_path):
    with pytest.raises(FileNotFoundError, match="cohorts.<name>.slides"):
        read_sample_sheet(tmp_path / "absent.tsv")
