"""The commit a result records: the checked-out sha, "+dirty" with uncommitted tracked changes, None outside a
repository; a result file without one reads as "unrecorded", never a guess."""

import subprocess

from par import provenance


def _repo(tmp_path):
    git = lambda *a: subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    (tmp_path / "code.py").write_text("v1\n")
    (tmp_path / "analysis").mkdir()
    (tmp_path / "analysis" / "report.md").write_text("v1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    return subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()


def test_git_commit_is_the_checked_out_sha_and_says_when_the_tree_differs(tmp_path):
    sha = _repo(tmp_path)
    assert provenance.git_commit(tmp_path) == sha and len(sha) == 40
    (tmp_path / "analysis" / "report.md").write_text("v2\n")  # rewritten by every run: does not count
    (tmp_path / "untracked.txt").write_text("x\n")
    assert provenance.git_commit(tmp_path) == sha
    (tmp_path / "code.py").write_text("v2\n")
    assert provenance.git_commit(tmp_path) == f"{sha}+dirty"
    assert provenance.git_provenance(tmp_path / "analysis", cwd=tmp_path) == f"{sha} with uncommitted changes (code.py)"


def test_outside_a_repository_there_is_no_commit_and_old_files_are_unrecorded(tmp_path):
    assert provenance.git_commit(tmp_path) is None
    assert provenance.git_provenance(cwd=tmp_path) == "unknown"
    assert provenance.recorded({"params": 3}) == provenance.UNRECORDED == "unrecorded"
    assert provenance.recorded(None) == "unrecorded" and provenance.recorded({"commit": None}) == "unrecorded"
    assert provenance.recorded({"commit": "abc"}) == "abc"
