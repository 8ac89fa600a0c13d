"""The sandbox holds: limits end runs on time, and escapes have no effect.

Escape attempts (writing host files, connecting out, fork bombs) run only
under bwrap, where the host file system is out of reach; the limit tests run
under both backends. What the unsafe backend holds and refuses on its own is
in test_sandbox_fallback.py.
"""

import ast
import os
import socket
import tempfile
import time
import uuid

import pytest

from ponder.verifiers.sandbox import Limits, Program, SandboxError, run_interactive, run_python
from sandbox_support import BACKENDS, needs_bwrap, runnable

FAST = Limits(cpu_seconds=2, wall_seconds=3, memory_mb=512, max_processes=16, max_file_mb=1)


def run(code: str, backend: str = "bwrap", limits: Limits = FAST, **kw):
    return run_python({"main.py": code}, "main.py", limits, backend=backend, **kw)


def processes_with(marker: str) -> list[int]:
    """Pids whose command line contains `marker` (no psutil: read /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(entry))
        except OSError:
            continue  # exited while we looked
    return found


# ------------------------------------------------------------ plain runs and limits

@pytest.mark.parametrize("backend", BACKENDS)
def test_runs_a_program_with_stdin_and_exit_code(backend, monkeypatch):
    backend = runnable(backend, monkeypatch)
    result = run("import sys\nprint(input()[::-1])\nsys.exit(3)", backend, stdin="abc\n")
    assert (result.returncode, result.stdout, result.timed_out, result.truncated) == (3, "cba\n", False, False)
    assert result.backend.startswith(backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_other_code_files_are_importable(backend, monkeypatch):
    backend = runnable(backend, monkeypatch)
    files = {"main.py": "from helper import twice\nprint(twice(21))", "helper.py": "def twice(x):\n    return 2 * x\n"}
    assert run_python(files, "main.py", FAST, backend=backend).stdout == "42\n"


@pytest.mark.parametrize("backend", BACKENDS)
def test_sleep_forever_is_killed_at_the_wall_limit(backend, monkeypatch):
    backend = runnable(backend, monkeypatch)
    limits = Limits(wall_seconds=1.0)
    start = time.monotonic()
    result = run("import time\ntime.sleep(10**9)", backend, limits)
    assert result.timed_out and not result.ok
    assert time.monotonic() - start < limits.wall_seconds + 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_busy_loop_is_killed_at_the_cpu_limit(backend, monkeypatch):
    backend = runnable(backend, monkeypatch)
    result = run("while True:\n    pass", backend, Limits(cpu_seconds=1, wall_seconds=10))
    assert not result.timed_out and result.returncode in (128 + 9, 128 + 24)  # SIGKILL or SIGXCPU
    assert result.wall_seconds < 5


@pytest.mark.parametrize("backend", BACKENDS)
def test_allocating_64_gib_fails_inside_the_limit(backend, monkeypatch):
    backend = runnable(backend, monkeypatch)
    result = run("buffer = bytearray(64 << 30)\nprint('allocated')", backend)
    assert result.returncode != 0 and "allocated" not in result.stdout
    assert "MemoryError" in result.stderr
    assert result.wall_seconds < FAST.wall_seconds


@pytest.mark.parametrize("backend", BACKENDS)
def test_endless_print_is_truncated_at_one_mib(backend, monkeypatch):
    backend = runnable(backend, monkeypatch)
    result = run("while True:\n    print('x' * 1000)", backend, Limits(wall_seconds=10))
    assert result.truncated and not result.timed_out
    assert 0 < len(result.stdout.encode()) <= 1 << 20
    assert result.wall_seconds < 5  # the flood ends the run, it does not wait for the wall limit


@pytest.mark.parametrize("backend", BACKENDS)
def test_writing_a_big_file_fails_at_the_file_size_limit(backend, monkeypatch):
    backend = runnable(backend, monkeypatch)
    code = "f = open('big', 'wb')\ntry:\n    f.write(b'x' * (4 << 20)); f.flush()\nexcept OSError as e:\n    print(e.errno)"
    assert run(code, backend).stdout.strip() == "27"  # EFBIG


def test_limits_are_validated_with_the_bad_value_named():
    with pytest.raises(ValueError, match="memory_mb=8"):
        Limits(memory_mb=8)
    with pytest.raises(ValueError, match="max_processes"):
        Limits(max_processes=2.5)
    with pytest.raises(ValueError, match="sandbox 'docker' is not one of auto, bwrap, unsafe-subprocess"):
        run_python({"main.py": ""}, "main.py", backend="docker")


@needs_bwrap
def test_main_must_be_one_of_the_files():
    with pytest.raises(SandboxError, match="main.py"):
        run_python({"other.py": ""}, "main.py", FAST)


@needs_bwrap
def test_paths_may_not_leave_the_sandbox_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the sandbox makes its folders
    with pytest.raises(SandboxError, match="inside the sandbox"):
        run_python({"main.py": "", "../evil.py": ""}, "main.py", FAST)
    assert list(tmp_path.iterdir()) == []  # the refused run leaves no folder behind


# ------------------------------------------------------------ escapes (bwrap only)

@needs_bwrap
def test_a_write_outside_the_temp_dir_leaves_the_host_file_unchanged(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("original")
    os.chmod(tmp_path, 0o777)
    os.chmod(target, 0o666)  # Unix permissions would allow it: only the read-only bind stops it
    code = f"""
import os
target = {str(target)!r}
print(open(target).read())
for attempt in (lambda: open(target, 'w').write('pwned'),
                lambda: os.remove(target),
                lambda: os.rename(target, target + '.moved'),
                lambda: open(os.path.join(os.path.dirname(target), 'new.txt'), 'w').write('x'),
                lambda: open('/etc/ponder-escape', 'w').write('x'),
                lambda: open('/usr/ponder-escape', 'w').write('x')):
    try:
        attempt()
        print('WROTE')
    except OSError as e:
        print('refused', e.errno)
"""
    result = run(code, read_only=(str(target),))
    assert result.stdout.startswith("original\n"), result.stderr
    assert "WROTE" not in result.stdout and result.stdout.count("refused") == 6
    assert target.read_text() == "original"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.txt"]
    assert not os.path.exists("/etc/ponder-escape") and not os.path.exists("/usr/ponder-escape")


@needs_bwrap
def test_the_host_file_system_is_not_visible():
    result = run("import os\nprint(' '.join(sorted(os.listdir('/'))))")
    visible = set(result.stdout.split())
    # The interpreter's own folders are bound read-only at their paths; their top-level
    # parents (e.g. /tmp when a venv lives there) appear, holding only that path.
    from ponder.verifiers.sandbox import _python_roots
    interpreter_tops = {root.strip("/").split("/")[0] for root in _python_roots()}
    assert "sandbox" in visible
    assert not (visible - interpreter_tops) & {"home", "work", "tmp", "var", "mnt", "srv", "run"}
    for top in interpreter_tops & {"home", "work", "tmp", "var", "mnt", "srv", "run"}:
        listing = run(f"import os\nprint(os.listdir('/{top}'))").stdout
        assert len(ast.literal_eval(listing)) == 1, listing  # only the path down to the interpreter


@needs_bwrap
def test_a_connection_to_a_host_loopback_listener_is_never_accepted():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(2.0)
        port = listener.getsockname()[1]
        code = f"""
import socket
try:
    socket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'hello')
    print('CONNECTED')
except OSError as e:
    print('refused', e)
"""
        result = run(code)
        with pytest.raises(socket.timeout):
            listener.accept()
    assert "CONNECTED" not in result.stdout and "refused" in result.stdout


@needs_bwrap
def test_a_fork_bomb_is_contained_and_leaves_no_process():
    marker = f"bomb_{uuid.uuid4().hex}"
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    limits = Limits(cpu_seconds=2, wall_seconds=2, max_processes=16)
    start = time.monotonic()
    result = run_python({f"{marker}.py": code}, f"{marker}.py", limits, backend="bwrap")
    assert time.monotonic() - start < limits.wall_seconds + 2
    assert result.timed_out
    time.sleep(0.2)  # let the kernel finish tearing down the pid namespace
    assert processes_with(marker) == []


@needs_bwrap
def test_the_process_limit_is_enforced():
    code = """
import os, time
children = 0
for _ in range(50):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(2)
        os._exit(0)
    children += 1
print(children)
"""
    result = run(code, limits=Limits(max_processes=10, wall_seconds=5))
    assert int(result.stdout) == 9  # the program itself is the tenth


@needs_bwrap
def test_background_children_die_with_the_run():
    marker = f"orphan_{uuid.uuid4().hex}"
    code = f"""
import subprocess, sys
subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(1000)', {marker!r}], start_new_session=True)
print('started')
"""
    result = run(code)
    assert result.stdout == "started\n" and result.wall_seconds < 2
    time.sleep(0.2)
    assert processes_with(marker) == []


@needs_bwrap
def test_third_party_packages_are_hidden_unless_asked_for():
    code = "import importlib.util\nprint(importlib.util.find_spec('pytest') is not None)"
    assert run(code).stdout == "False\n"
    assert run(code, site_packages=True).stdout == "True\n"


# ------------------------------------------------------------ interactive runs

INTERACTOR = """
import sys
read_fd, write_fd = int(sys.argv[1]), int(sys.argv[2])
reader, writer = open(read_fd, 'r'), open(write_fd, 'w')
total = 0
for n in range(5):
    writer.write(f'{n}\\n'); writer.flush()
    total += int(reader.readline())
print('verdict', total == sum(2 * n for n in range(5)))
"""

PROGRAM = """
import sys
reader, writer = open(int(sys.argv[1])), open(int(sys.argv[2]), 'w')
for line in reader:
    writer.write(f'{2 * int(line)}\\n'); writer.flush()
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_interactor_and_program_talk_over_pipes(backend, monkeypatch):
    backend = runnable(backend, monkeypatch)
    program, interactor = run_interactive(Program({"p.py": PROGRAM}, "p.py"), Program({"i.py": INTERACTOR}, "i.py"),
                                          FAST, backend=backend)
    assert interactor.stdout == "verdict True\n", interactor.stderr
    assert program.wall_seconds <= interactor.wall_seconds + 2.5


@needs_bwrap
def test_the_program_cannot_see_the_interactors_files():
    interactor = INTERACTOR.replace("print('verdict'", "print(open('secret.txt').read(), 'verdict'")
    spy = "import os\nprint(os.path.exists('secret.txt'), os.listdir('.'))\n" + PROGRAM
    program, judge = run_interactive(Program({"p.py": spy}, "p.py"),
                                     Program({"i.py": interactor, "secret.txt": "s3cret"}, "i.py"), FAST)
    assert judge.stdout.startswith("s3cret")
    assert program.stdout.startswith("False ['p.py']"), program.stdout
