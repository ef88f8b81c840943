import json

import pytest

from tagseg.errors import StageError
from tagseg.rundir import ArtifactDir, atomic_write, config_differences, read_manifest, stage_dir


def test_atomic_write_leaves_nothing_when_the_writer_fails(tmp_path):
    target = tmp_path / "out.txt"

    def failing(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, failing)
    assert list(tmp_path.iterdir()) == []
    atomic_write(target, lambda tmp: tmp.write_text("whole"))
    assert target.read_text() == "whole" and list(tmp_path.iterdir()) == [target]


def test_stage_resume_config_check_and_force(tmp_path):
    with stage_dir(tmp_path, "s", {"a": 1, "b": {"c": 2}}) as stage:
        assert stage.pending(["x", "y"], ".txt") == ["x", "y"]
        stage.item_path("x", ".txt").write_text("done")
        stage.record(items_computed=1, metrics={"miou": 0.5})
    manifest = read_manifest(tmp_path / "s")
    assert manifest["status"] == "complete" and manifest["metrics"] == {"miou": 0.5}
    assert manifest["tagseg_version"] and manifest["timings"]["items_computed"] == 1

    with stage_dir(tmp_path, "s", {"a": 1, "b": {"c": 2}}) as stage:  # same config: resumes
        assert stage.pending(["x", "y"], ".txt") == ["y"]
    with pytest.raises(StageError, match=r"different 's' stage config \(b.c: 2 -> 3\).*--force"):
        with stage_dir(tmp_path, "s", {"a": 1, "b": {"c": 3}}):
            pass
    assert (tmp_path / "s" / "x.txt").exists()  # refusal changed nothing
    with stage_dir(tmp_path, "s", {"a": 1, "b": {"c": 3}}, force=True) as stage:
        assert stage.pending(["x", "y"], ".txt") == ["x", "y"]


def test_stale_temporaries_are_swept_and_interrupted_status_recorded(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / ".x.tmp-999.npz").write_bytes(b"partial")
    with pytest.raises(KeyboardInterrupt):
        with stage_dir(tmp_path, "s", {}):
            assert not (tmp_path / "s" / ".x.tmp-999.npz").exists()
            raise KeyboardInterrupt
    assert read_manifest(tmp_path / "s")["status"] == "interrupted"


def test_second_writer_is_refused(tmp_path):
    with ArtifactDir(tmp_path / "d", "thing", {}):
        with pytest.raises(StageError, match="another tagseg process is writing here"):
            with ArtifactDir(tmp_path / "d", "thing", {}):
                pass


def test_unreadable_manifest_is_a_clear_error(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "manifest.json").write_text("{broken")
    with pytest.raises(StageError, match="manifest.json: unreadable manifest"):
        with stage_dir(tmp_path, "s", {}):
            pass


def test_config_differences_lists_added_and_removed_keys():
    assert config_differences({"a": 1, "b": 2}, {"a": 1, "c": 3}) == ["b: 2 -> (absent)", "c: (absent) -> 3"]
    assert json.dumps(config_differences({}, {}))  == "[]"
