"""CI refuses to run the tests without bubblewrap: a sandbox test that skips proves nothing.

`.ci/run` is copied into a temp folder and run with a PATH of stubs only:
`apt-get` that fails or succeeds, `bwrap` present or not, and a `python3`
that records it was reached (and fails, so nothing else runs).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / ".ci" / "run"


def run_ci(tmp_path: Path, apt_ok: bool, has_bwrap: bool) -> tuple[int, str, bool]:
    """(exit code, stderr, whether the script got past the bubblewrap step)."""
    (tmp_path / ".ci").mkdir()
    shutil.copy(SCRIPT, tmp_path / ".ci" / "run")
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    reached = tmp_path / "reached"
    scripts = {"apt-get": f"exit {0 if apt_ok else 100}", "python3": f"touch {reached}\nexit 1"}
    if has_bwrap:
        scripts["bwrap"] = "exit 0"
    for name, body in scripts.items():
        (stubs / name).write_text(f"#!/bin/sh\n{body}\n")
        (stubs / name).chmod(0o755)
    for tool in ("dirname", "touch"):
        os.symlink(shutil.which(tool), stubs / tool)
    proc = subprocess.run(["/bin/bash", str(tmp_path / ".ci" / "run")], env={"PATH": str(stubs)},
                          capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stderr, reached.exists()


@pytest.mark.parametrize("apt_ok, has_bwrap", [(False, False), (True, False)], ids=["apt_fails", "still_no_bwrap"])
def test_ci_stops_when_bubblewrap_cannot_be_installed(tmp_path, apt_ok, has_bwrap):
    code, stderr, reached = run_ci(tmp_path, apt_ok, has_bwrap)
    assert code != 0 and "bubblewrap" in stderr and not reached, (code, stderr)


def test_ci_goes_on_when_bubblewrap_is_there(tmp_path):
    # The control: the same harness sees the script reach the next step.
    assert run_ci(tmp_path, apt_ok=True, has_bwrap=True)[2]


@pytest.mark.parametrize("ci, outcome", [("true", "1 failed"), ("", "1 skipped")], ids=["in_ci", "elsewhere"])
def test_bwrap_tests_fail_in_ci_and_skip_elsewhere_without_bwrap(ci, outcome):
    test = "tests/test_sandbox.py::test_third_party_packages_are_hidden_unless_asked_for"
    env = {**os.environ, "PATH": "/nonexistent", "CI": ci}  # bwrap not on PATH: as on a fresh machine
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test], env=env,
                          cwd=SCRIPT.parent.parent, capture_output=True, text=True, timeout=120)
    assert outcome in proc.stdout, proc.stdout[-2000:]
