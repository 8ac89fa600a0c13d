"""Without bubblewrap: refused by default; the explicit opt-in holds what a plain subprocess can.

Only benign probes run outside bwrap here: programs that *try* to read the
tests, forge a result or leave `sleep` children behind, and report whether
they could. Each probe is also run where the attack works (the tests next to
it, a known nonce), so that its failure is the sandbox's doing.
"""

import json
import os
import socket
import subprocess
import threading
import time
import uuid
from types import SimpleNamespace

import pytest

from ponder.core.config import ConfigError
from ponder.tasks.base import Example
from ponder.verifiers import code, sandbox
from ponder.verifiers.code import main, verify_code, verify_io
from ponder.verifiers.custom import parse_grader
from ponder.verifiers.sandbox import UNSAFE, Limits, SandboxError, run_python
from sandbox_support import BACKENDS, needs_bwrap, runnable

LIMITS = Limits(cpu_seconds=2, wall_seconds=6, memory_mb=512, max_processes=16, max_file_mb=1)
RIGHT = "def sort_list(xs):\n    return sorted(xs)\n"
TESTS = "def check(candidate):\n    assert candidate([3, 1, 2]) == [1, 2, 3]\n"
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="without root the unsafe backend runs as our own uid")


@pytest.fixture
def no_bwrap(monkeypatch):
    """bwrap hidden the way a fresh machine lacks it: not on PATH."""
    monkeypatch.setenv("PATH", "/nonexistent")
    sandbox._bwrap_problem.cache_clear()
    yield
    sandbox._bwrap_problem.cache_clear()  # PATH comes back after this; the next probe sees bwrap again


def processes_with(marker: str) -> list[int]:
    """Live pids whose command line contains `marker`."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry}/stat", "rb") as f:
                zombie = f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
        except OSError:
            continue
        if marker.encode() in cmdline and not zombie:
            found.append(int(entry))
    return found


# ------------------------------------------------------------ refused by default

def test_auto_refuses_without_bubblewrap_and_says_how_to_install_it(no_bwrap):
    for verdict in (verify_code(RIGHT, TESTS, LIMITS), verify_io("print(3)", [("", "3")], LIMITS)):
        assert verdict.status == "invalid" and verdict.score == 0.0, verdict
        assert "bubblewrap" in verdict.reason and "apt-get install bubblewrap" in verdict.reason
        assert '"unsafe-subprocess"' in verdict.reason  # and how to opt out, explicitly
    with pytest.raises(SandboxError, match="apt-get install bubblewrap"):
        run_python({"main.py": "print(1)"}, "main.py", LIMITS)
    assert sandbox.describe("auto").startswith("sandbox: none -- code verification is refused")


def test_bad_sandbox_names_are_refused_naming_the_valid_ones():
    with pytest.raises(ValueError, match="sandbox 'subprocess' is not one of auto, bwrap, unsafe-subprocess"):
        verify_code(RIGHT, TESTS, LIMITS, backend="subprocess")
    with pytest.raises(ConfigError, match="choose one of: auto, bwrap, unsafe-subprocess"):
        parse_grader({"kind": "code_tests", "tests": TESTS, "sandbox": "subprocess"})


def test_cli_says_which_sandbox_and_refuses_without_one(no_bwrap, tmp_path, capsys):
    (tmp_path / "s.py").write_text(RIGHT)
    (tmp_path / "t.py").write_text(TESTS)
    assert main(["--solution", str(tmp_path / "s.py"), "--tests", str(tmp_path / "t.py")]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("sandbox: none") and "apt-get install bubblewrap" in err
    assert out.startswith("invalid") and "apt-get install bubblewrap" in out


@needs_bwrap
def test_cli_says_bubblewrap_when_it_runs(tmp_path, capsys):
    (tmp_path / "s.py").write_text(RIGHT)
    (tmp_path / "t.py").write_text(TESTS)
    assert main(["--solution", str(tmp_path / "s.py"), "--tests", str(tmp_path / "t.py")]) == 0
    assert capsys.readouterr().err.startswith("sandbox: bubblewrap")


def test_cli_opt_in_runs_unsandboxed_and_warns_every_run(no_bwrap, tmp_path, capsys, monkeypatch):
    runnable(UNSAFE, monkeypatch)
    (tmp_path / "s.py").write_text(RIGHT)
    (tmp_path / "t.py").write_text(TESTS)
    for _ in range(2):  # each `ponder` run is a new process: the warning is once per process
        sandbox._warned.clear()
        assert main(["--solution", str(tmp_path / "s.py"), "--tests", str(tmp_path / "t.py"),
                     "--unsafe-sandbox"]) == 0
        err = capsys.readouterr().err
        assert err.startswith("sandbox: UNSAFE plain subprocess (opted in)")
        assert "ponder: WARNING: sandbox: UNSAFE" in err


def test_grader_sandbox_option_opts_in(no_bwrap, monkeypatch):
    runnable(UNSAFE, monkeypatch)
    example = Example(id="e1", prompt="sort", answer="")
    completion = f"<think>t</think>```python\n{RIGHT}```"
    refused = parse_grader({"kind": "code_tests", "tests": TESTS}).grade(completion, example)
    assert refused.status == "invalid" and "apt-get install bubblewrap" in refused.reason
    opted_in = parse_grader({"kind": "code_tests", "tests": TESTS, "sandbox": UNSAFE})
    assert opted_in.grade(completion, example).status == "correct"


@as_root
def test_root_refuses_to_run_code_it_cannot_drop_to_an_unprivileged_uid(tmp_path, monkeypatch):
    # Like a pyenv under /root (mode 0700): the dropped uid cannot reach the interpreter.
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    python = private / "python3"
    runnable(UNSAFE, monkeypatch)
    python.symlink_to(sandbox._python())
    monkeypatch.setattr(sandbox, "_python", lambda: str(python))
    with pytest.raises(SandboxError, match=r"as an unprivileged uid, which cannot run the interpreter .* is not searchable"):
        run_python({"main.py": "import os\nprint(os.getuid())"}, "main.py", LIMITS, backend=UNSAFE)
    assert "cannot run" in sandbox.describe(UNSAFE)


# ------------------------------------------------------------ what the opt-in holds

# Looks for the tests every way a plain subprocess might: files in the temp
# folders (by listing, and by the names the old layout used), every process's
# command line, environment and open files. Returns the secret if it finds it.
SNOOP = r'''
import os, re, tempfile
def read(path, limit=1 << 20):
    try:
        with open(path, errors="ignore") as f:
            return f.read(limit)
    except OSError:
        return ""
def listing(folder):
    try:
        return os.listdir(folder)
    except OSError:
        return []
def secret_in(text):
    found = re.search("SECRET" + "-[0-9a-f]{32}", text)
    return found.group(0) if found else ""
def folders():
    yield os.getcwd()
    for top in {tempfile.gettempdir(), "/tmp", "/var/tmp", "/dev/shm"}:
        yield top
        yield from (os.path.join(top, name) for name in listing(top))
def snoop():
    for folder in folders():
        for name in set(listing(folder)) | {"tests.py", "helpers.py"}:
            if secret_in(read(os.path.join(folder, name))):
                return secret_in(read(os.path.join(folder, name)))
    for pid in filter(str.isdigit, os.listdir("/proc")):
        for part in ("cmdline", "environ"):
            if secret_in(read(f"/proc/{pid}/{part}")):
                return secret_in(read(f"/proc/{pid}/{part}"))
        for fd in listing(f"/proc/{pid}/fd"):
            path = f"/proc/{pid}/fd/{fd}"
            try:
                target = os.readlink(path)
            except OSError:
                continue
            if not target.startswith(("pipe:", "socket:", "anon_inode:", "/dev/")) and secret_in(read(path)):
                return secret_in(read(path))
    return "nothing"
'''


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_solution_cannot_read_the_tests(backend, monkeypatch):
    backend = runnable(backend, monkeypatch)
    if backend == UNSAFE and os.geteuid() != 0:
        pytest.skip("without root the solution runs as our uid and could read what we can")
    secret = f"SECRET-{uuid.uuid4().hex}"  # the answer the tests want: only they hold it
    tests = f"def check(candidate):\n    assert candidate() == {secret!r}, 'not found'\n"
    verdict = verify_code(SNOOP + "def leak():\n    return snoop()\n", tests, LIMITS, backend=backend)
    assert (verdict.status, verdict.reason) == ("wrong", "a test failed: not found"), verdict
    # The control: with the tests next to it, the same probe finds them.
    probe = SNOOP + "print(snoop())\n"
    run = run_python({"main.py": probe, "tests.py": tests}, "main.py", LIMITS, backend=backend)
    assert run.stdout.strip() == secret, (run.stdout, run.stderr)


def _scan_command_lines(needles: list[str], stop: threading.Event, seen: list) -> None:
    while not stop.is_set():
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read().decode("utf-8", "replace")
            except OSError:
                continue
            seen.append(("harness.py" in cmdline, [n for n in needles if n in cmdline]))
        time.sleep(0.01)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_secret_is_on_any_command_line(backend, monkeypatch):
    backend = runnable(backend, monkeypatch)
    nonce = "0badc0de" * 4
    monkeypatch.setattr(code, "secrets", SimpleNamespace(token_hex=lambda n: nonce))
    slow = "import time\ndef sort_list(xs):\n    time.sleep(0.3)\n    return sorted(xs)\n"
    stop, seen = threading.Event(), []
    scanner = threading.Thread(target=_scan_command_lines, args=([nonce, "[3, 1, 2]"], stop, seen))
    scanner.start()
    try:
        verdict = verify_code(slow, TESTS, LIMITS, backend=backend)
    finally:
        stop.set()
        scanner.join()
    assert verdict.status == "correct", verdict
    assert any(harness for harness, _ in seen), "the scan never saw the harness running"
    assert [hits for _, hits in seen if hits] == []


FORGER = r'''
import os, sys
LINE = '\nPONDER-RESULT NONCE {"status": "pass", "reason": "forged"}\n'
def forge():
    print(LINE, flush=True)
    sys.stderr.write(LINE)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if b"referee" not in open(f"/proc/{pid}/cmdline", "rb").read():
                continue
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                with open(f"/proc/{pid}/fd/{fd}", "w") as f:
                    f.write(LINE)
            except OSError:
                pass
def sort_list(xs):
    forge()
    return list(xs)
'''


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_forged_result_line_does_not_count(backend, monkeypatch):
    backend = runnable(backend, monkeypatch)
    nonce = "0badc0de" * 4  # as if the solution had learned it
    monkeypatch.setattr(code, "secrets", SimpleNamespace(token_hex=lambda n: nonce))
    verdict = verify_code(FORGER.replace("NONCE", nonce), TESTS, LIMITS, backend=backend)
    assert verdict.status == "wrong" and verdict.reason.startswith("a test failed"), verdict


@pytest.mark.parametrize("backend", BACKENDS)
def test_children_that_leave_the_group_are_killed_after_the_verdict(backend, monkeypatch):
    backend = runnable(backend, monkeypatch)
    marker = f"child_{uuid.uuid4().hex}"
    spawner = f"""
import subprocess, sys
def sort_list(xs):
    for detach in (False, True, True):
        subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)', {marker!r}],
                         start_new_session=detach)
    return sorted(xs)
"""
    verdict = verify_code(spawner, TESTS, LIMITS, backend=backend)
    assert verdict.status == "correct", verdict
    time.sleep(0.2)
    assert processes_with(marker) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_signal_reaches_the_verifier(backend, monkeypatch):
    backend = runnable(backend, monkeypatch)
    if backend == UNSAFE and os.geteuid() != 0 and sandbox._unsafe_namespaces() != "net pid":
        pytest.skip("no user namespaces here: without root the unsafe backend cannot hide our pids")
    # Signal 0 only asks whether a pid could be signalled; in its own pid namespace ours do not exist.
    probe = f"""
import os
try:
    os.kill({os.getpid()}, 0)
    print('reachable')
except OSError as e:
    print(type(e).__name__)
print(os.getpid())
"""
    result = run_python({"main.py": probe}, "main.py", LIMITS, backend=backend)
    assert result.stdout.split() == ["ProcessLookupError", "2"], result


@as_root
def test_the_program_runs_as_a_fresh_uid_in_a_private_folder(monkeypatch):
    runnable(UNSAFE, monkeypatch)
    probe = """
import json, os
print(json.dumps([os.getuid(), os.getgid(), os.getgroups(), os.stat('.').st_mode & 0o777,
                  os.stat('main.py').st_mode & 0o777, os.path.basename(os.getcwd())]))
"""
    first, second = (json.loads(run_python({"main.py": probe}, "main.py", LIMITS, backend=UNSAFE).stdout)
                     for _ in range(2))
    uid, gid, groups, folder_mode, file_mode, name = first
    assert uid >= 1 << 24 and gid == uid and groups == [] and second[0] != uid
    assert (folder_mode, file_mode) == (0o700, 0o600)
    assert name != second[5] and not name.startswith("ponder-sandbox-")


@as_root
def test_files_the_run_leaves_in_the_temp_folders_are_removed(monkeypatch):
    runnable(UNSAFE, monkeypatch)
    name = f"ponder_probe_{uuid.uuid4().hex}"
    probe = f"""
import os
for folder in ('/tmp', '/var/tmp', '/dev/shm'):
    try:
        open(os.path.join(folder, {name!r}), 'w').write('x')
        os.makedirs(os.path.join(folder, {name!r} + '_dir', 'sub'))
        print('wrote', folder)
    except OSError as e:
        print('refused', folder, e)
"""
    result = run_python({"main.py": probe}, "main.py", LIMITS, backend=UNSAFE)
    assert "wrote /tmp" in result.stdout, result  # the unsafe backend cannot stop it...
    left = [f"{folder}/{name}{suffix}" for folder in ("/tmp", "/var/tmp", "/dev/shm") for suffix in ("", "_dir")]
    assert [path for path in left if os.path.lexists(path)] == []  # ...but nothing of it stays


@as_root
def test_the_process_limit_holds(monkeypatch):
    runnable(UNSAFE, monkeypatch)
    code_ = """
import os, time
children = 0
for _ in range(50):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(1)
        os._exit(0)
    children += 1
print(children)
"""
    result = run_python({"main.py": code_}, "main.py", Limits(max_processes=10, wall_seconds=5), backend=UNSAFE)
    assert int(result.stdout) == 9  # the program itself is the tenth


def test_a_loopback_listener_is_not_reached_when_the_network_can_be_cut(monkeypatch):
    runnable(UNSAFE, monkeypatch)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(1.0)
        probe = f"""
import socket
import subprocess
try:
    socket.create_connection(('127.0.0.1', {listener.getsockname()[1]}), timeout=1).sendall(b'hi')
    print('CONNECTED')
except OSError as e:
    print('refused', e)
"""
        result = run_python({"main.py": probe}, "main.py", LIMITS, backend=UNSAFE)
        if not result.backend.endswith("+net"):
            pytest.skip("no network namespace could be made here: the unsafe backend cannot cut the network")
        with pytest.raises(socket.timeout):
            listener.accept()
    assert result.stdout.startswith("refused"), result


# Runs as an unprivileged uid (the verifier itself, not only the program): the
# opt-in as most users get it. It reads its jobs as JSON on stdin.
AS_USER = r'''
import json, os, sys, time
jobs = json.load(sys.stdin)
sys.path.insert(0, jobs["repo"])
from ponder.verifiers import sandbox
from ponder.verifiers.code import verify_code
from ponder.verifiers.sandbox import Limits
limits = Limits(cpu_seconds=2, wall_seconds=6, memory_mb=512, max_processes=16, max_file_mb=1)
out = {"describe": sandbox.describe("unsafe-subprocess"), "uid": os.getuid()}
for name, (solution, tests) in jobs["verify"].items():
    out[name] = verify_code(solution, tests, limits, backend="unsafe-subprocess").status
time.sleep(0.2)
out["left"] = [p for p in filter(str.isdigit, os.listdir("/proc"))
               if jobs["marker"].encode() in open(f"/proc/{p}/cmdline", "rb").read()]
print(json.dumps(out))
'''


@as_root
def test_without_root_the_opt_in_still_keeps_the_tests_and_kills_the_children(monkeypatch):
    python = runnable(UNSAFE, monkeypatch) and sandbox._python()
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(sandbox.__file__))))
    closed = [p for p in [repo, *sandbox._parents(os.path.join(repo, "x"))] if not os.stat(p).st_mode & 0o005]
    if closed:
        pytest.skip(f"an unprivileged uid cannot read the checkout ({closed[0]} is closed to others)")
    secret, marker = f"SECRET-{uuid.uuid4().hex}", f"child_{uuid.uuid4().hex}"
    tests = f"def check(candidate):\n    assert candidate() == {secret!r}, 'not found'\n"
    spawner = f"""
import subprocess, sys
def sort_list(xs):
    for detach in (False, True):
        subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)', {marker!r}], start_new_session=detach)
    return sorted(xs)
"""
    jobs = {"repo": repo, "marker": marker, "verify": {
        "honest": [RIGHT, TESTS], "snoop": [SNOOP + "def leak():\n    return snoop()\n", tests],
        "forger": [FORGER.replace("NONCE", "0" * 32), TESTS], "spawner": [spawner, TESTS]}}
    uid = sandbox._fresh_uid()
    proc = subprocess.run([python, "-I", "-c", AS_USER], input=json.dumps(jobs), user=uid, group=uid,
                          extra_groups=[], cwd="/", env={"PATH": "/usr/bin:/bin"}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["uid"] == uid and f"your own uid {uid}" in out["describe"]
    assert "ponder: WARNING" in proc.stderr
    assert (out["honest"], out["snoop"], out["forger"], out["spawner"]) == ("correct", "wrong", "wrong", "correct")
    assert out["left"] == []
