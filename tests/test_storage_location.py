"""--storage-path: local paths become absolute, shared-storage URIs (s3://, file://) stay URIs."""

from pathlib import Path

from tune.search import _exists, storage_location


def test_local_path_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage_location("results", "s1") == (
        str(tmp_path / "results"),
        str(tmp_path / "results" / "s1"),
    )


def test_uri_is_kept_as_given():
    assert storage_location("s3://bucket/ct/", "s1") == ("s3://bucket/ct", "s3://bucket/ct/s1")


def test_exists_reads_paths_and_file_uris(tmp_path):
    (tmp_path / "there").mkdir()
    assert _exists(str(tmp_path / "there")) and not _exists(str(tmp_path / "absent"))
    assert _exists(Path(tmp_path / "there").as_uri())
    assert not _exists((tmp_path / "absent").as_uri())
