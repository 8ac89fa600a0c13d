"""Run untrusted Python with limits: under bubblewrap, or not at all.

Backends (the ``sandbox`` / ``backend`` setting, `BACKENDS`):

* ``bwrap`` (Debian package ``bubblewrap``). The program sees a fresh root:
  ``/usr``, ``/etc`` and the interpreter's prefix read-only, its own files in a
  writable ``/sandbox`` (a private host temp dir), nothing else of the host --
  no home, no project checkout, no other temp files. It gets its own network
  namespace (loopback only, nothing listening), pid, ipc and uts namespaces.
  Killing bwrap kills the sandbox's pid 1 (``--die-with-parent``), and the
  kernel then kills every process left in that pid namespace, so nothing
  outlives a run. Site-packages are hidden unless asked for: a verifier's own
  data (HumanEval's problems ship inside a package) must not be readable by
  the candidate.
* ``auto`` (the default) is ``bwrap`` when it works here, and otherwise
  *refuses*: `SandboxError` naming bubblewrap and how to install it, which
  the verifiers turn into an ``invalid`` verdict. Untrusted code is never run
  unsandboxed behind the user's back.
* ``unsafe-subprocess``: an explicit opt-in to a plain subprocess, with a
  warning on stderr (once per process, so on every ``ponder`` run). As strong
  as a plain subprocess can be, and no more. What it holds: each program runs
  in its own session (process group) with the rlimits below, in a private
  ``mkdtemp`` folder (mode 0700, random name, files 0600); when we are root
  it runs as a fresh unprivileged uid per run (``setgroups([])``), so it can
  read neither another sandbox's files nor ours, cannot signal or trace our
  processes or the other sandbox, and RLIMIT_NPROC counts that run alone;
  after the run every process of that uid is killed (``kill(-1)`` as the
  uid, which also catches a ``setsid`` escape) and checked gone. Nothing
  secret is ever on a command line: the bootstrap's spec arrives on a pipe,
  and a program's private input comes on its stdin. A program may report on
  a private pipe of its own (`Program.report`), which the other sandbox does
  not hold, so printing a forged result line proves nothing. Network: cut
  when a network namespace can be made (``RunResult.backend`` says
  ``unsafe-subprocess+net``), and a pid namespace when one can be made (see
  the bootstrap below): nothing detached outlives the run, and no signal
  reaches a process outside. What it does not hold: the program sees the
  host file system (it can read world-readable files and write world-writable
  folders; as root, what its uid leaves in /tmp, /var/tmp and /dev/shm is
  removed after the run), and without root it runs as *your* uid -- it can
  read and write your files, and without user namespaces also signal your
  processes and read the verifier's memory, and so with effort forge its
  verdict. Without root the opt-in is no security boundary.
  Root whose interpreter an unprivileged uid cannot run (a pyenv under
  /root) is refused: running the candidate as root is never an option.

In both, a small trusted bootstrap runs first: it reads its spec from a pipe,
sets the rlimits (CPU seconds, address space, processes, file size, no core
files), drops to the fresh uid when we are root -- RLIMIT_NPROC is not
enforced for uid 0 -- reports on a private pipe that the sandbox came up,
and ``exec``s the program. Output is read incrementally and a stream that
passes ``max_output_bytes`` ends the run (``truncated``), so an endless print
costs at most that much memory.

`run_python` runs one program. `run_interactive` runs a program next to an
*interactor* in a second, separate sandbox, joined by two pipes -- the set-up
a judge uses for interactive problems, and how the code verifier keeps the
tests out of the candidate's process (see ``ponder/verifiers/code.py``).
`describe` is the one line a command prints at start-up about the sandbox.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import selectors
import shutil
import signal
import site
import subprocess
import sysconfig
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

BACKENDS = ("auto", "bwrap", "unsafe-subprocess")
UNSAFE = "unsafe-subprocess"
INSTALL_HINT = "install bubblewrap (apt-get install bubblewrap)"
OPT_IN_HINT = ('or opt in to an unsandboxed subprocess with sandbox = "unsafe-subprocess" '
               '(ponder verify code: --unsafe-sandbox)')
MIB = 1 << 20
_READ_CHUNK = 1 << 16
_REPORT_CAP = 1 << 16  # bytes kept of a program's report pipe
# Sandboxes run as a random uid from this range (when we are root), so that
# RLIMIT_NPROC counts the processes of one run only and "every process of
# this uid" means "every process of this run". Far above any distribution's uids.
_UID_RANGE = (1 << 24, 1 << 30)
_SANDBOX_DIR = "/sandbox"  # where the program's files appear under bwrap
_RUN_MARKER = "PONDER_SANDBOX_RUN"  # environment marker of a run's processes (unsafe backend, not root)


class SandboxError(RuntimeError):
    """The sandbox itself failed or is refused (not the program): no bwrap, bad limits."""


@dataclass(frozen=True)
class Limits:
    cpu_seconds: float = 10.0  # CPU time per process (RLIMIT_CPU, rounded up to whole seconds)
    wall_seconds: float = 20.0  # wall clock for the whole run, then every process is killed
    memory_mb: int = 1024  # address space per process (RLIMIT_AS)
    max_processes: int = 32  # processes of the run at once, the first included (RLIMIT_NPROC)
    max_file_mb: int = 16  # largest file the program may write (RLIMIT_FSIZE)
    max_output_bytes: int = MIB  # per stream (stdout, stderr); more ends the run

    def __post_init__(self):
        # Python needs ~30 MB of address space to start, and one process to run.
        floors = {"cpu_seconds": 0.1, "wall_seconds": 0.1, "memory_mb": 64,
                  "max_processes": 1, "max_file_mb": 0, "max_output_bytes": 1}
        for name, floor in floors.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= floor:
                raise ValueError(f"Limits.{name}={value!r}: must be a number >= {floor}")
        for name in ("memory_mb", "max_processes", "max_file_mb", "max_output_bytes"):
            if not isinstance(getattr(self, name), int):
                raise ValueError(f"Limits.{name}={getattr(self, name)!r}: must be an int")


@dataclass(frozen=True)
class RunResult:
    returncode: int  # exit status; 128+N when killed by signal N (what bwrap reports)
    stdout: str  # at most max_output_bytes of it (decoded, invalid bytes replaced)
    stderr: str
    timed_out: bool  # killed at the wall limit
    truncated: bool  # a stream passed max_output_bytes and the run was ended
    wall_seconds: float
    backend: str  # "bwrap", "unsafe-subprocess" or "unsafe-subprocess+net"
    report: str = ""  # what the program wrote to its report pipe (Program.report), at most 64 KiB

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and not self.truncated


@dataclass(frozen=True)
class Program:
    files: dict = field(default_factory=dict)  # relative path -> source text
    main: str = "main.py"  # the file to run, one of `files`
    stdin: str = ""  # also the place for private input: it is on no command line and in no file
    args: tuple = ()  # extra argv after the script (visible to every process: nothing secret)
    site_packages: bool = False  # let the program import installed third-party packages (bwrap)
    read_only: tuple = ()  # host paths the program may read, at the same path (bwrap: read-only)
    report: bool = False  # give it a private pipe to report on: its fd is the next argv after `args`


def run_python(code_files: dict[str, str], main: str, limits: Limits = Limits(),
               stdin: str = "", backend: str = "auto", site_packages: bool = False,
               read_only: tuple = ()) -> RunResult:
    """Run `main` (one of `code_files`) with `python -E -s` in a sandbox; see the module doc.

    `read_only` lists host paths to show the program at the same place; under
    bwrap they are read-only binds (the unsafe backend cannot enforce that).

    Raises SandboxError when the sandbox cannot run (or is refused: no
    bubblewrap and no opt-in); anything the program does (crash, timeout,
    flood) is reported in the RunResult.
    """
    program = Program(dict(code_files), main, stdin, (), site_packages, tuple(read_only))
    return _run([program], limits, _pick_backend(backend), links=False)[0]


def run_interactive(program: Program, interactor: Program, limits: Limits = Limits(),
                    backend: str = "auto") -> tuple[RunResult, RunResult]:
    """Run `program` and `interactor` in two separate sandboxes joined by pipes.

    Each side gets extra arguments after its own `args` (and its report fd,
    if it asked for one): the fd it reads the other side from and the fd it
    writes to. Neither can see the other's files or processes. The run ends
    when the interactor exits (the program is then killed) or at the wall
    limit. Returns (program result, interactor result).
    """
    return tuple(_run([program, interactor], limits, _pick_backend(backend), links=True))


# ---------------------------------------------------------------- backend choice

def check_backend(requested: str) -> str:
    """`requested` if it is a backend name, else ValueError naming the valid ones."""
    if requested not in BACKENDS:
        raise ValueError(f"sandbox {requested!r} is not one of {', '.join(BACKENDS)}")
    return requested


def _pick_backend(requested: str) -> str:
    """The backend to run with; SandboxError when none may run (see the module doc)."""
    if check_backend(requested) == UNSAFE:
        problem = _fallback_problem(_python())
        if problem:
            raise SandboxError(f"the unsafe-subprocess sandbox cannot run here: {problem}; {INSTALL_HINT}")
        _warn_unsafe()
        return UNSAFE
    if not _bwrap_works():
        raise SandboxError(f"no sandbox: bubblewrap does not work here ({_bwrap_problem()}), "
                           f"and untrusted code is not run without one; {INSTALL_HINT}, {OPT_IN_HINT}")
    return "bwrap"


def backend() -> str:
    """What "auto" resolves to: "bwrap" if it works here, else "none" (auto then refuses)."""
    return "bwrap" if _bwrap_works() else "none"


def describe(backend: str = "auto") -> str:
    """One line saying which sandbox runs code with `backend`, for a command to print at start-up.

    >>> describe("auto").startswith("sandbox: ")
    True
    """
    if check_backend(backend) == UNSAFE:
        problem = _fallback_problem(_python())
        if problem:
            return f"sandbox: unsafe-subprocess was asked for but cannot run: {problem}; {INSTALL_HINT}"
        namespaced = _unsafe_namespaces() == "net pid"
        where = " in its own pid and network namespaces" if namespaced else ""
        if os.geteuid() == 0:
            who = (f"a fresh unprivileged uid per run{where}, sees the host file system and may write to "
                   "world-writable folders (what it leaves in the temp folders is removed after the run)")
        elif namespaced:
            who = (f"your own uid {os.getuid()}{where}: it cannot signal your processes or read the "
                   "verifier's memory, but it can read and write your files")
        else:
            who = (f"your own uid {os.getuid()}, so it can signal your processes, read your files and "
                   "the verifier's memory and, with effort, forge its own verdict")
        return f"sandbox: UNSAFE plain subprocess (opted in): untrusted code runs as {who}; {INSTALL_HINT} to isolate it"
    if _bwrap_works():
        return (f"sandbox: bubblewrap ({_bwrap_version()}): read-only system, private files, "
                "no network, own pid namespace")
    return (f"sandbox: none -- code verification is refused (verdict invalid): {_bwrap_problem()}; "
            f"{INSTALL_HINT}, {OPT_IN_HINT}")


_warned = threading.Event()


def _warn_unsafe() -> None:
    """Once per process, so every `ponder` run that runs unsandboxed code says so."""
    if not _warned.is_set():
        _warned.set()
        print(f"ponder: WARNING: {describe(UNSAFE)}", file=sys.stderr, flush=True)


def _python() -> str:
    """The interpreter the sandboxes run (ours, without the venv's symlink)."""
    return os.path.realpath(sys.executable)


def _bwrap_works() -> bool:
    return _bwrap_problem() == ""


@functools.lru_cache(maxsize=None)
def _bwrap_problem() -> str:
    """Probe once: can bwrap start our interpreter with the full set of options? "" if so."""
    if shutil.which("bwrap") is None:
        return "bwrap is not on PATH"
    try:
        result = _run([Program({"main.py": "print('ok')"})], Limits(wall_seconds=20), "bwrap", False)[0]
    except (SandboxError, OSError) as exc:
        return f"bwrap probe failed: {exc}"
    if result.stdout.strip() != "ok":
        return f"bwrap probe printed {result.stdout[-200:]!r}, stderr {result.stderr[-300:]!r}"
    return ""


@functools.lru_cache(maxsize=None)
def _bwrap_version() -> str:
    try:
        return subprocess.run(["bwrap", "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "bwrap"


@functools.lru_cache(maxsize=None)
def _fallback_problem(python: str) -> str:
    """Why the unsafe backend cannot run `python` here ("" if it can).

    As root it must run the program as an unprivileged uid, so that uid has
    to be able to run the interpreter (every parent folder searchable).
    """
    if os.geteuid() != 0:
        return ""
    uid = _fresh_uid()
    try:
        proc = subprocess.run([python, "-I", "-S", "-c", "pass"], user=uid, group=uid, extra_groups=[],
                              cwd="/", capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as exc:
        proc = None
        reason = str(exc)
    if proc is not None and proc.returncode == 0:
        return ""
    closed = [p for p in _parents(python) if os.path.isdir(p) and not os.stat(p).st_mode & 0o001]
    reason = f"folder {closed[0]} is not searchable by others" if closed else (
        proc.stderr.decode("utf-8", "replace")[-200:].strip() if proc is not None else reason)
    return (f"we are root, and the program must then run as an unprivileged uid, which cannot run "
            f"the interpreter {python} ({reason})")


@functools.lru_cache(maxsize=None)
def _unsafe_namespaces() -> str:
    """Probe once: which namespaces the unsafe backend gets here ("net pid", "net" or "")."""
    try:
        result = _run([Program({"main.py": "import os\nprint(os.getpid())"})], Limits(wall_seconds=20), UNSAFE, False)[0]
    except (SandboxError, OSError):
        return ""
    net = result.backend.endswith("+net")
    return ("net " if net else "") + "pid" if result.stdout.strip() == "2" else ("net" if net else "")


def _parents(path: str) -> list[str]:
    """`path`'s parent folders, from the top down (not / itself)."""
    parents = []
    parent = os.path.dirname(path)
    while parent not in ("/", ""):
        parents.append(parent)
        parent = os.path.dirname(parent)
    return parents[::-1]


# ---------------------------------------------------------------- the run itself

# Runs first inside the sandbox, as trusted code: rlimits, namespaces, uid drop,
# report, exec. argv[1] is the fd of a pipe holding its JSON spec (nothing on the
# command line). It is ours; the program only starts at the execv.
#
# Unsafe backend: when a pid namespace can be made, the bootstrap stays
# outside it as a relay, a reaper is its pid 1 (as under bwrap), and the
# program its pid 2; each waits for the next and ends the way it did (a death
# by signal N as exit 128+N, as bwrap reports it). The kernel kills every
# process left in the namespace when its pid 1 ends, so no detached child
# survives the program, and from inside, neither `kill(-1)` nor any pid
# reaches a process outside it, such as the verifier.
_BOOTSTRAP = r"""
import json, os, resource, signal, sys
spec_fd = int(sys.argv[1])
chunks = []
while True:
    chunk = os.read(spec_fd, 65536)
    if not chunk:
        break
    chunks.append(chunk)
os.close(spec_fd)
spec = json.loads(b"".join(chunks))
status = spec["status_fd"]

def libc():
    import ctypes
    return ctypes.CDLL(None, use_errno=True)

def unshare():
    # Best effort: Linux only, and needs root or unprivileged user namespaces.
    try:
        unshare = libc().unshare
    except (OSError, AttributeError):
        return ""
    user = 0 if os.geteuid() == 0 else 0x10000000  # CLONE_NEWUSER
    for flags, made in ((0x40000000 | 0x20000000, "net pid"), (0x40000000, "net")):  # CLONE_NEWNET, CLONE_NEWPID
        if unshare(flags | user) == 0:
            return made
    return ""

def wait_for(child):
    # Reap every child (pid 1 inherits orphans) until `child` ends; its exit code, 128+N for signal N.
    os.close(status)
    while True:
        try:
            pid, code = os.waitpid(-1, 0)
        except InterruptedError:
            continue
        except ChildProcessError:
            os._exit(125)
        if pid == child:
            os._exit(os.WEXITSTATUS(code) if os.WIFEXITED(code) else 128 + os.WTERMSIG(code))

try:
    for name, soft, hard in spec["rlimits"]:
        resource.setrlimit(getattr(resource, name), (soft, hard))
    made = unshare() if spec["unshare"] else ""
    if "pid" in made:
        child = os.fork()
        if child:
            wait_for(child)  # the relay, outside the namespace
        if libc().prctl(1, signal.SIGKILL, 0, 0, 0) != 0:  # PR_SET_PDEATHSIG: die with the relay
            raise OSError("could not tie the namespace to its relay")
        child = os.fork()
        if child:
            wait_for(child)  # pid 1; when it ends, so does everything in the namespace
    if spec["uid"] is not None:
        os.setgroups([])
        os.setgid(spec["uid"])
        os.setuid(spec["uid"])
        if os.getuid() == 0 or os.geteuid() == 0 or os.getgroups():
            raise OSError("the uid drop did not take")
    os.set_inheritable(status, False)
    os.write(status, b"net " if "net" in made else b"ok ")
    os.execv(spec["argv"][0], spec["argv"])
except BaseException as exc:
    os.write(status, ("error %s: %s" % (type(exc).__name__, exc)).encode())
    os._exit(125)
"""


def _fresh_uid() -> int:
    return secrets.randbelow(_UID_RANGE[1] - _UID_RANGE[0]) + _UID_RANGE[0]


def _rlimits(limits: Limits) -> list:
    cpu = max(1, int(limits.cpu_seconds + 0.999))
    return [
        # Soft then hard: SIGXCPU first, SIGKILL a second later.
        ("RLIMIT_CPU", cpu, cpu + 1),
        ("RLIMIT_AS", limits.memory_mb * MIB, limits.memory_mb * MIB),
        ("RLIMIT_FSIZE", limits.max_file_mb * MIB, limits.max_file_mb * MIB),
        ("RLIMIT_CORE", 0, 0),
    ]


def _nproc_limit(limits: Limits, uid: int | None, backend: str) -> int:
    """RLIMIT_NPROC counts all processes of the real uid (per user namespace)."""
    if uid is not None or backend == "bwrap":
        return limits.max_processes  # a fresh uid, or a fresh user namespace: the count is ours
    # Same uid as us: leave room for the processes we already have, and the relay and reaper.
    return limits.max_processes + len(_pids_of_uid(os.getuid())) + 2


def _pids_of_uid(uid: int) -> list[int]:
    """Live (not zombie) processes whose real uid is `uid`."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", "rb") as f:
                fields = dict(line.split(b":", 1) for line in f.read().splitlines() if b":" in line)
        except OSError:
            continue  # exited meanwhile
        if int(fields[b"Uid"].split()[0]) == uid and not fields[b"State"].strip().startswith(b"Z"):
            pids.append(int(entry))
    return pids


def _python_roots() -> list[str]:
    """Directories the interpreter needs, outside /usr: its prefixes."""
    roots = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, sys.exec_prefix)}
    roots.add(os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))))
    return sorted(r for r in roots if r != "/" and not r.startswith("/usr/") and r != "/usr")


def _site_dirs() -> list[str]:
    """Every site-packages the sandboxed interpreter could import from.

    In a virtual environment that is the venv's own and, should the venv's
    configuration be out of reach, the base interpreter's: both are hidden.
    """
    dirs = list(site.getsitepackages())
    for prefix in {sys.prefix, sys.base_prefix}:
        paths = sysconfig.get_paths(vars={"base": prefix, "platbase": prefix})
        dirs += [paths["purelib"], paths["platlib"]]
    if site.ENABLE_USER_SITE and site.getusersitepackages():
        dirs.append(site.getusersitepackages())
    return sorted({os.path.realpath(d) for d in dirs if os.path.isdir(d)})


def _bwrap_argv(workdir: str, program: Program, as_root: bool) -> list[str]:
    argv = ["bwrap", "--tmpfs", "/"]
    for top in ("usr", "etc"):
        if os.path.isdir(f"/{top}") and not os.path.islink(f"/{top}"):
            argv += ["--ro-bind", f"/{top}", f"/{top}"]
    for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = f"/{top}"
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    for root in _python_roots() + [os.path.realpath(p) for p in program.read_only]:
        argv += _parent_dirs(root) + ["--ro-bind", root, root]
    if not program.site_packages:
        for path in _site_dirs():
            argv += ["--tmpfs", path]
    argv += [
        "--bind", workdir, _SANDBOX_DIR, "--chdir", _SANDBOX_DIR,
        "--dev", "/dev", "--proc", "/proc",
        "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
        "--die-with-parent", "--new-session", "--hostname", "sandbox",
    ]
    if as_root:
        # The bootstrap needs these two to drop to the run's uid; nothing else.
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    return argv + ["--"]


def _parent_dirs(path: str) -> list[str]:
    """bwrap options creating the parents of `path` with mode 0755.

    bwrap copies the modes of the parents it creates; /root is 0700, and a
    dropped uid must be able to walk down to, say, a pyenv interpreter.
    """
    return [arg for parent in _parents(path) for arg in ("--perms", "0755", "--dir", parent)]


def _environment(home: str, marker: str) -> dict:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": home,
            "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8",
            _RUN_MARKER: marker}


def _write_files(workdir: str, files: dict, uid: int | None) -> None:
    """The program's files, readable by its uid alone (0600 in 0700 folders)."""
    for rel, text in files.items():
        if not isinstance(rel, str) or not isinstance(text, str):
            raise SandboxError(f"code_files must map str paths to str sources, got {rel!r}: {type(text).__name__}")
        path = os.path.normpath(os.path.join(workdir, rel))
        if os.path.isabs(rel) or not path.startswith(workdir + os.sep):
            raise SandboxError(f"code file path {rel!r} must be relative and stay inside the sandbox dir")
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as f:
            f.write(text)
    if uid is not None:
        for dirpath, dirnames, filenames in os.walk(workdir):
            for name in [dirpath] + [os.path.join(dirpath, n) for n in dirnames + filenames]:
                os.chown(name, uid, uid)


@dataclass
class _Proc:
    """One launched sandbox, and what we have read from it so far (mutable, private)."""
    popen: subprocess.Popen
    status_r: int
    report_r: int | None
    workdir: str
    backend: str
    uid: int | None  # the fresh uid it runs as (we are root), else None: our own
    marker: str  # the value of _RUN_MARKER in its environment
    out: bytearray = field(default_factory=bytearray)
    err: bytearray = field(default_factory=bytearray)
    status: bytearray = field(default_factory=bytearray)
    report: bytearray = field(default_factory=bytearray)
    truncated: bool = False
    timed_out: bool = False
    ended: float | None = None


def _pipe_with(data: bytes) -> int:
    """The read end of a pipe that holds `data` and then EOF (data must fit the pipe buffer)."""
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, data)
    finally:
        os.close(write_fd)
    return read_fd


def _launch(program: Program, limits: Limits, backend: str, extra_fds: tuple) -> _Proc:
    if program.main not in program.files:
        raise SandboxError(f"main file {program.main!r} is not one of the code files {sorted(program.files)}")
    as_root = os.geteuid() == 0
    uid = _fresh_uid() if as_root else None  # root never runs a program as itself
    workdir = os.path.realpath(tempfile.mkdtemp(prefix="ponder-"))  # mode 0700, unpredictable name
    try:
        return _start(program, limits, backend, extra_fds, workdir, uid)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)  # a bad file, no pipe, no start: leave nothing behind
        raise


def _start(program: Program, limits: Limits, backend: str, extra_fds: tuple, workdir: str,
           uid: int | None) -> _Proc:
    """Write the program's files into `workdir` and start its bootstrap there."""
    as_root = os.geteuid() == 0
    _write_files(workdir, program.files, uid)
    if uid is not None:
        os.chown(workdir, uid, uid)
        if backend == "bwrap":  # bwrap enters it as root without CAP_DAC_OVERRIDE: it needs the x bit
            os.chmod(workdir, 0o711)
    home = _SANDBOX_DIR if backend == "bwrap" else workdir
    python = _python()
    rlimits = _rlimits(limits) + [("RLIMIT_NPROC",) + (_nproc_limit(limits, uid, backend),) * 2]
    status_r, status_w = os.pipe()
    report_r, report_w = os.pipe() if program.report else (None, None)
    own_fds = (report_w,) if program.report else ()
    spec = {
        "status_fd": status_w, "rlimits": rlimits, "uid": uid, "unshare": backend != "bwrap",
        "argv": [python, "-E", "-s", os.path.join(home, program.main), *map(str, program.args),
                 *map(str, own_fds + tuple(extra_fds))],
    }
    spec_r = _pipe_with(json.dumps(spec).encode())
    command = [python, "-I", "-S", "-c", _BOOTSTRAP, str(spec_r)]
    if backend == "bwrap":
        command = _bwrap_argv(workdir, program, as_root) + command
    stdin_file = tempfile.TemporaryFile()  # no name: private input stays off the file system
    stdin_file.write(program.stdin.encode("utf-8"))
    stdin_file.seek(0)
    marker = secrets.token_hex(8)
    try:
        popen = subprocess.Popen(
            command, stdin=stdin_file, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=workdir, env=_environment(home, marker), pass_fds=(spec_r, status_w, *own_fds, *extra_fds),
            start_new_session=True)  # its own session and process group, killed as one
    except OSError as exc:
        for fd in (status_r, report_r):
            if fd is not None:
                os.close(fd)
        raise SandboxError(f"could not start the {backend} sandbox: {exc}") from exc
    finally:
        for fd in (spec_r, status_w, report_w):
            if fd is not None:
                os.close(fd)
        stdin_file.close()
    return _Proc(popen, status_r, report_r, workdir, backend, uid, marker)


def _kill(proc: _Proc) -> None:
    """Kill the run's process group (bwrap's death takes its pid namespace with it).

    In the unsafe backend, also every process of the run that left the group.
    """
    if proc.backend == "bwrap" and proc.popen.returncode is not None:
        return  # nothing of it is left, and its pid may since belong to someone else
    # Unsafe backend: the leader may be reaped while its group lives on; a
    # pid is not reused while a process group of that id exists.
    try:
        os.killpg(proc.popen.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # already gone
    if proc.backend != "bwrap":
        _kill_strays(proc)


def _strays(proc: _Proc) -> list[int]:
    return _pids_of_uid(proc.uid) if proc.uid is not None else _pids_with_marker(proc.marker)


def _kill_strays(proc: _Proc) -> list[int]:
    """Unsafe backend: one pass at killing every process of the run; returns those it found.

    As root the run had a uid of its own: `kill(-1)` sent *as that uid*
    reaches every process of it, the ones that called `setsid` included, and
    the kernel does it in one pass (no fork slips between). Without root we
    can only find the run's processes by the marker in their environment.
    """
    left = _strays(proc)
    if left and proc.uid is not None:
        subprocess.run([_python(), "-I", "-S", "-c", "import os; os.kill(-1, 9)"], user=proc.uid,
                       group=proc.uid, extra_groups=[], cwd="/", env={}, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def _sweep(proc: _Proc) -> None:
    """Unsafe backend, after the run: kill what is left of it until nothing is, or fail."""
    if proc.backend == "bwrap":
        return  # the pid namespace died with bwrap
    for _ in range(20):
        if not _kill_strays(proc):
            return
        time.sleep(0.01)
    left = _strays(proc)
    if left:
        raise SandboxError(f"processes of the run survived the kill: {left[:10]}")


def _pids_with_marker(marker: str) -> list[int]:
    """Our processes whose environment carries this run's marker."""
    needle = f"{_RUN_MARKER}={marker}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if needle in f.read().split(b"\0"):
                        pids.append(int(entry))
            except OSError:
                continue  # exited, or not ours
    return pids


def _run(programs: list[Program], limits: Limits, backend: str, links: bool) -> list[RunResult]:
    start = time.monotonic()
    deadline = start + limits.wall_seconds
    fds_per_program = [()] * len(programs)
    link_fds = []
    if links:
        a_r, b_w = os.pipe()  # interactor -> program
        b_r, a_w = os.pipe()  # program -> interactor
        fds_per_program = [(a_r, a_w), (b_r, b_w)]
        link_fds = [a_r, a_w, b_r, b_w]
    procs = []
    try:
        for program, fds in zip(programs, fds_per_program):
            procs.append(_launch(program, limits, backend, fds))
    except BaseException:
        _end(procs)
        raise
    finally:
        for fd in link_fds:
            os.close(fd)  # only the sandboxes hold the link now, so EOF means the other side is gone
    try:
        _supervise(procs, limits, deadline, main_index=len(procs) - 1)
    finally:
        _end(procs)
    return [_result(proc, backend, start) for proc in procs]


def _end(procs: list[_Proc]) -> None:
    """Kill, reap and sweep every sandbox; remove their folders. Raises only after all are done."""
    errors = []
    for proc in procs:
        _kill(proc)
        _reap(proc)
    for proc in procs:
        try:
            _sweep(proc)
        except SandboxError as exc:
            errors.append(exc)
        shutil.rmtree(proc.workdir, ignore_errors=True)
        if proc.backend != "bwrap" and proc.uid is not None:
            _remove_files_of(proc.uid)
    if errors:
        raise errors[0]


_SHARED_TEMP = ("/tmp", "/var/tmp", "/dev/shm")


def _remove_files_of(uid: int) -> None:
    """Unsafe backend as root: remove what the run's uid left in the shared temp folders.

    The uid was fresh, so whatever it owns there, the run made. (Elsewhere it
    can only write to world-writable folders we do not sweep.)
    """
    for folder in {tempfile.gettempdir(), *_SHARED_TEMP}:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_uid != uid:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
            except OSError:
                continue  # gone meanwhile


def _result(proc: _Proc, backend: str, start: float) -> RunResult:
    status = bytes(proc.status).decode("utf-8", "replace")
    if not status.startswith(("ok", "net")) or "error" in status:
        raise SandboxError(f"the {backend} sandbox did not start: "
                           f"{status or 'no word from the bootstrap'}; stderr: "
                           f"{bytes(proc.err[-500:]).decode('utf-8', 'replace').strip()!r}")
    code = proc.popen.returncode
    label = backend + ("+net" if backend == UNSAFE and status.startswith("net") else "")
    return RunResult(
        returncode=128 - code if code < 0 else code,
        stdout=bytes(proc.out).decode("utf-8", "replace"),
        stderr=bytes(proc.err).decode("utf-8", "replace"),
        timed_out=proc.timed_out, truncated=proc.truncated,
        wall_seconds=round((proc.ended or time.monotonic()) - start, 4), backend=label,
        report=bytes(proc.report).decode("utf-8", "replace"))


def _supervise(procs: list[_Proc], limits: Limits, deadline: float, main_index: int) -> None:
    """Read every stream until all are closed; enforce the output cap and the wall limit.

    The program at `main_index` is the one whose exit ends the run (the
    interactor, or the only program); the others are killed when it is done.
    """
    selector = selectors.DefaultSelector()
    for proc in procs:
        selector.register(proc.popen.stdout, selectors.EVENT_READ, (proc, "out"))
        selector.register(proc.popen.stderr, selectors.EVENT_READ, (proc, "err"))
        selector.register(proc.status_r, selectors.EVENT_READ, (proc, "status"))
        if proc.report_r is not None:
            selector.register(proc.report_r, selectors.EVENT_READ, (proc, "report"))
    leader = procs[main_index]
    try:
        while selector.get_map():
            now = time.monotonic()
            if now >= deadline:
                for proc in procs:
                    proc.timed_out |= proc.popen.poll() is None
                break
            for proc in _pump(selector, limits.max_output_bytes, min(0.05, deadline - now)):
                _kill(proc)  # it passed the output cap
            for proc in procs:
                if proc.ended is None and proc.popen.poll() is not None:
                    proc.ended = time.monotonic()
            if leader.ended is not None:
                break
        # Done, timed out, or the leader exited (in the unsafe backend its
        # children may still hold the pipes open): kill all, then read what is left.
        for proc in procs:
            _kill(proc)
        until = time.monotonic() + 2.0
        while selector.get_map() and time.monotonic() < until:
            _pump(selector, limits.max_output_bytes, 0.05)
    finally:
        selector.close()


_CAPS = {"status": 4096, "report": _REPORT_CAP}


def _pump(selector, cap: int, timeout: float) -> list[_Proc]:
    """Read once from every ready stream, keeping at most `cap` bytes of each.

    Returns the processes that just passed the cap (stdout/stderr only: the
    status and report pipes are merely cut short).
    """
    over = []
    for key, _ in selector.select(timeout=timeout):
        proc, stream = key.data
        fd = key.fd if stream in _CAPS else key.fileobj.fileno()
        chunk = os.read(fd, _READ_CHUNK)
        if not chunk:
            selector.unregister(key.fileobj)
            continue
        buffer = getattr(proc, stream)
        room = _CAPS.get(stream, cap) - len(buffer)
        buffer += chunk[:max(room, 0)]
        if len(chunk) > room and stream not in _CAPS and not proc.truncated:
            proc.truncated = True
            over.append(proc)
    return over


def _reap(proc: _Proc) -> None:
    try:
        proc.popen.wait(timeout=5)
    except subprocess.TimeoutExpired:
        _kill(proc)
        proc.popen.wait()
    if proc.ended is None:
        proc.ended = time.monotonic()
    for stream in (proc.popen.stdout, proc.popen.stderr):
        stream.close()
    for fd in (proc.status_r, proc.report_r):
        if fd is None:
            continue
        try:
            os.close(fd)
        except OSError:
            pass  # already closed
