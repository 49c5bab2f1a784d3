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


def _sheet(tmp_path, rows):
    return _write(tmp_path, "case_id\tslide_id\tpath\n" + "".join(f"{c}\t{s}\t{p}\n" for c, s, p in rows))


def test_same_path_under_two_slide_ids_names_both_lines(shared_data, tmp_path):
    """The same real slide, spelt two ways, under two slide ids (and two patients)."""
    cmu = shared_data / "slides/CMU-1-Small-Region.svs"
    tcga = shared_data / "slides/TCGA-CR-7395-01A-01-TS1.svs"
    path = _sheet(tmp_path, [("P1", "S1", cmu), ("P2", "S2", tcga), ("P3", "S3", f"{cmu.parent}/../slides/{cmu.name}")])
    with pytest.raises(
        ValueError,
        match=r"slides.tsv: one slide file under several slide ids, by the same path: "
        r"line 2 \(slide_id 'S1', case_id 'P1', path .*CMU-1-Small-Region.svs\) "
        r"and line 4 \(slide_id 'S3', case_id 'P3'",
    ):
        read_sample_sheet(path)
    assert len(read_sample_sheet(path, check_files=False)) == 3  # later readers trust the checked sheet


def test_same_content_under_two_slide_ids(shared_data, tmp_path):
    """A byte copy of a real slide under another name is the same slide; a file of the same size with
    other bytes is not."""
    cmu = shared_data / "slides/CMU-1-Small-Region.svs"
    data = cmu.read_bytes()
    (tmp_path / "copy.svs").write_bytes(data)
    (tmp_path / "other.svs").write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])  # same size
    path = _sheet(
        tmp_path, [("P1", "S1", cmu), ("P1", "S2", tmp_path / "other.svs"), ("P2", "S3", tmp_path / "copy.svs")]
    )
    with pytest.raises(
        ValueError,
        match=r"by the same content \(size and sha256 of the first 1 MiB\): line 2 "
        r"\(slide_id 'S1'.*\) and line 4 \(slide_id 'S3', case_id 'P2', path .*copy.svs\)",
    ):
        read_sample_sheet(path)
    assert len(read_sample_sheet(path, check_files=False)) == 3  # checked where the files are checked
    ok = _sheet(tmp_path, [("P1", "S1", cmu), ("P1", "S2", tmp_path / "other.svs")])
    assert list(read_sample_sheet(ok)["slide_id"]) == ["S1", "S2"]
