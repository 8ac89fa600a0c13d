"""Run untrusted Python with limits: bubblewrap when it works, else a plain subprocess.

Two backends, picked once per process by probing (`backend()`):

* ``bwrap`` (Debian package ``bubblewrap``). The program sees a fresh root:
  ``/usr``, ``/etc`` and the interpreter's prefix read-only, its own files in a
  writable ``/sandbox`` (a host temp dir), nothing else of the host -- no home,
  no project checkout, no other temp files. It gets its own network namespace
  (loopback only, nothing listening), pid, ipc and uts namespaces. Killing
  bwrap kills the sandbox's pid 1 (``--die-with-parent``), and the kernel then
  kills every process left in that pid namespace, so nothing outlives a run.
  Site-packages are hidden unless asked for: a verifier's own data (HumanEval's
  problems ship inside a package) must not be readable by the candidate.
* ``subprocess``: the program runs in its own session with the same rlimits
  and the whole process group is killed at the end. Best effort only: the
  host file system is protected by Unix permissions alone (the program runs
  as a fresh unprivileged uid when we are root and the interpreter is
  readable by it, else as us), a process that calls ``setsid`` escapes the
  group kill, and the network is cut only if an unprivileged network
  namespace can be made (``RunResult.backend`` says ``subprocess+net`` then).

In both, a small trusted bootstrap runs first: it sets the rlimits (CPU
seconds, address space, processes, file size, no core files), drops to a
fresh uid when we are root -- RLIMIT_NPROC is not enforced for uid 0, and a
per-run uid also makes the count per run -- reports on a private pipe that
the sandbox came up, and ``exec``s the program. Output is read incrementally
and a stream that passes ``max_output_bytes`` ends the run (``truncated``),
so an endless print costs at most that much memory.

`run_python` runs one program. `run_interactive` runs a program next to an
*interactor* in a second, separate sandbox, joined by two pipes -- the set-up
a judge uses for interactive problems, and how the code verifier keeps the
tests out of the candidate's process (see ``ponder/verifiers/code.py``).
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
import time
from dataclasses import dataclass, field

BACKENDS = ("auto", "bwrap", "subprocess")
MIB = 1 << 20
_READ_CHUNK = 1 << 16
# Sandboxes run as a random uid from this range (when we are root), so that
# RLIMIT_NPROC counts the processes of one run only. It is far above the uids
# any distribution hands out.
_UID_RANGE = (1 << 24, 1 << 30)
_SANDBOX_DIR = "/sandbox"  # where the program's files appear under bwrap


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the program): bwrap missing or broken, bad limits."""


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
    backend: str  # "bwrap", "subprocess" or "subprocess+net"

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and not self.truncated


@dataclass(frozen=True)
class Program:
    files: dict = field(default_factory=dict)  # relative path -> source text
    main: str = "main.py"  # the file to run, one of `files`
    stdin: str = ""
    args: tuple = ()  # extra argv after the script
    site_packages: bool = False  # let the program import installed third-party packages
    read_only: tuple = ()  # host paths the program may read, at the same path (bwrap: read-only)


def run_python(code_files: dict[str, str], main: str, limits: Limits = Limits(),
               stdin: str = "", backend: str = "auto", site_packages: bool = False,
               read_only: tuple = ()) -> RunResult:
    """Run `main` (one of `code_files`) with `python -E -s` in a sandbox; see the module doc.

    `read_only` lists host paths to show the program at the same place; under
    bwrap they are read-only binds (the subprocess backend cannot enforce that).

    Raises SandboxError when the sandbox cannot run at all; anything the
    program does (crash, timeout, flood) is reported in the RunResult.
    """
    program = Program(dict(code_files), main, stdin, (), site_packages, tuple(read_only))
    return _run([program], limits, _pick_backend(backend), links=False)[0]


def run_interactive(program: Program, interactor: Program, limits: Limits = Limits(),
                    backend: str = "auto") -> tuple[RunResult, RunResult]:
    """Run `program` and `interactor` in two separate sandboxes joined by pipes.

    Each side gets two extra arguments after its own `args`: the fd it reads
    the other side from and the fd it writes to. Neither can see the other's
    files or processes. The run ends when the interactor exits (the program is
    then killed) or at the wall limit. Returns (program result, interactor result).
    """
    return tuple(_run([program, interactor], limits, _pick_backend(backend), links=True))


# ---------------------------------------------------------------- backend choice

def _pick_backend(requested: str) -> str:
    if requested not in BACKENDS:
        raise ValueError(f"backend {requested!r} is not one of {BACKENDS}")
    if requested == "auto":
        return backend()
    if requested == "bwrap" and not _bwrap_works():
        raise SandboxError("bwrap was asked for but does not work here "
                           f"({_bwrap_problem()}); install the 'bubblewrap' package")
    return requested


def backend() -> str:
    """The backend "auto" resolves to: "bwrap" if it works here, else "subprocess"."""
    return "bwrap" if _bwrap_works() else "subprocess"


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
        return f"probe failed: {exc}"
    if result.stdout.strip() != "ok":
        return f"probe printed {result.stdout[-200:]!r}, stderr {result.stderr[-300:]!r}"
    return ""


@functools.lru_cache(maxsize=None)
def _fallback_can_drop_uid() -> bool:
    """Root without bwrap: can the interpreter run as an unprivileged uid (is it readable)?"""
    if os.geteuid() != 0:
        return False
    uid = _fresh_uid()
    try:
        proc = subprocess.run([sys.executable, "-I", "-c", "pass"], user=uid, group=uid, extra_groups=[],
                              cwd="/", capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0


# ---------------------------------------------------------------- the run itself

# Runs first inside the sandbox, as trusted code: rlimits, uid drop, report, exec.
# argv[1] is a JSON spec. It is ours; the program only starts at the execv.
_BOOTSTRAP = r"""
import json, os, resource, sys
spec = json.loads(sys.argv[1])
status = spec["status_fd"]
try:
    for name, soft, hard in spec["rlimits"]:
        resource.setrlimit(getattr(resource, name), (soft, hard))
    if spec["unshare_net"]:
        try:  # best effort: Linux only, and needs root or unprivileged user namespaces
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            flags = 0x40000000 | (0 if os.geteuid() == 0 else 0x10000000)  # CLONE_NEWNET (| CLONE_NEWUSER)
            spec["net"] = libc.unshare(flags) == 0
        except (OSError, AttributeError):
            spec["net"] = False
    if spec["uid"] is not None:
        os.setgroups([])
        os.setgid(spec["uid"])
        os.setuid(spec["uid"])
    os.set_inheritable(status, False)
    os.write(status, b"net " if spec.get("net") else b"ok ")
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


def _nproc_limit(limits: Limits, uid: int | None, backend: str) -> int | None:
    """RLIMIT_NPROC counts all processes of the real uid (per user namespace)."""
    if uid is not None or (backend == "bwrap" and os.geteuid() != 0):
        return limits.max_processes  # a fresh uid, or a fresh user namespace: the count is ours
    if os.geteuid() == 0:
        return None  # not enforced for root; the wall limit and the group kill contain a fork bomb
    # Same uid as us: leave room for the processes we already have.
    return limits.max_processes + _count_processes_of(os.getuid())


def _count_processes_of(uid: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                count += os.stat(f"/proc/{entry}").st_uid == uid
            except OSError:
                continue  # exited meanwhile
    return count


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
    parents = []
    parent = os.path.dirname(path)
    while parent not in ("/", ""):
        parents.append(parent)
        parent = os.path.dirname(parent)
    return [arg for parent in reversed(parents) for arg in ("--perms", "0755", "--dir", parent)]


def _environment(home: str) -> dict:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": home,
            "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8"}


def _write_files(workdir: str, files: dict, uid: int | None) -> None:
    for rel, text in files.items():
        if not isinstance(rel, str) or not isinstance(text, str):
            raise SandboxError(f"code_files must map str paths to str sources, got {rel!r}: {type(text).__name__}")
        path = os.path.normpath(os.path.join(workdir, rel))
        if os.path.isabs(rel) or not path.startswith(workdir + os.sep):
            raise SandboxError(f"code file path {rel!r} must be relative and stay inside the sandbox dir")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
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
    workdir: str
    backend: str
    out: bytearray = field(default_factory=bytearray)
    err: bytearray = field(default_factory=bytearray)
    status: bytearray = field(default_factory=bytearray)
    truncated: bool = False
    timed_out: bool = False
    ended: float | None = None


def _launch(program: Program, limits: Limits, backend: str, extra_fds: tuple) -> _Proc:
    if program.main not in program.files:
        raise SandboxError(f"main file {program.main!r} is not one of the code files {sorted(program.files)}")
    as_root = os.geteuid() == 0
    drop_uid = as_root and (backend == "bwrap" or _fallback_can_drop_uid())
    uid = _fresh_uid() if drop_uid else None
    workdir = os.path.realpath(tempfile.mkdtemp(prefix="ponder-sandbox-"))
    _write_files(workdir, program.files, uid)
    if uid is not None:
        os.chown(workdir, uid, uid)
        # bwrap enters it as root without CAP_DAC_OVERRIDE: it needs the x bit.
        os.chmod(workdir, 0o711)
    home = _SANDBOX_DIR if backend == "bwrap" else workdir
    python = os.path.realpath(sys.executable)
    rlimits = _rlimits(limits)
    nproc = _nproc_limit(limits, uid, backend)
    if nproc is not None:
        rlimits.append(("RLIMIT_NPROC", nproc, nproc))
    status_r, status_w = os.pipe()
    spec = {
        "status_fd": status_w, "rlimits": rlimits, "uid": uid,
        "unshare_net": backend != "bwrap",
        "argv": [python, "-E", "-s", os.path.join(home, program.main), *map(str, program.args), *map(str, extra_fds)],
    }
    command = [python, "-I", "-S", "-c", _BOOTSTRAP, json.dumps(spec)]
    if backend == "bwrap":
        command = _bwrap_argv(workdir, program, as_root) + command
    stdin_file = tempfile.TemporaryFile()
    stdin_file.write(program.stdin.encode("utf-8"))
    stdin_file.seek(0)
    try:
        popen = subprocess.Popen(
            command, stdin=stdin_file, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=workdir, env=_environment(home), pass_fds=(status_w, *extra_fds),
            start_new_session=True)  # its own process group, killed as one
    except OSError as exc:
        os.close(status_r)
        shutil.rmtree(workdir, ignore_errors=True)
        raise SandboxError(f"could not start the {backend} sandbox: {exc}") from exc
    finally:
        os.close(status_w)
        stdin_file.close()
    return _Proc(popen, status_r, workdir, backend)


def _kill(proc: _Proc) -> None:
    """Kill the run's process group (bwrap's death takes its pid namespace with it)."""
    if proc.backend == "bwrap" and proc.popen.returncode is not None:
        return  # nothing of it is left, and its pid may since belong to someone else
    try:
        os.killpg(proc.popen.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # already gone


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
        for proc in procs:
            _kill(proc)
            _reap(proc)
        raise
    finally:
        for fd in link_fds:
            os.close(fd)  # only the sandboxes hold the link now, so EOF means the other side is gone
    try:
        _supervise(procs, limits, deadline, main_index=len(procs) - 1)
    finally:
        for proc in procs:
            _kill(proc)
            _reap(proc)
    results = []
    for proc in procs:
        status = bytes(proc.status).decode("utf-8", "replace")
        if not status.startswith(("ok", "net")) or "error" in status:
            raise SandboxError(f"the {backend} sandbox did not start: "
                               f"{status or 'no word from the bootstrap'}; stderr: "
                               f"{bytes(proc.err[-500:]).decode('utf-8', 'replace').strip()!r}")
        code = proc.popen.returncode
        label = backend + ("+net" if backend == "subprocess" and status.startswith("net") else "")
        results.append(RunResult(
            returncode=128 - code if code < 0 else code,
            stdout=bytes(proc.out).decode("utf-8", "replace"),
            stderr=bytes(proc.err).decode("utf-8", "replace"),
            timed_out=proc.timed_out, truncated=proc.truncated,
            wall_seconds=round((proc.ended or time.monotonic()) - start, 4), backend=label))
    return results


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
        # Done, timed out, or the leader exited (in the subprocess backend its
        # children may still hold the pipes open): kill all, then read what is left.
        for proc in procs:
            _kill(proc)
        until = time.monotonic() + 2.0
        while selector.get_map() and time.monotonic() < until:
            _pump(selector, limits.max_output_bytes, 0.05)
    finally:
        selector.close()


def _pump(selector, cap: int, timeout: float) -> list[_Proc]:
    """Read once from every ready stream, keeping at most `cap` bytes of each.

    Returns the processes that just passed the cap.
    """
    over = []
    for key, _ in selector.select(timeout=timeout):
        proc, stream = key.data
        fd = key.fd if stream == "status" else key.fileobj.fileno()
        chunk = os.read(fd, _READ_CHUNK)
        if not chunk:
            selector.unregister(key.fileobj)
            continue
        buffer = {"out": proc.out, "err": proc.err, "status": proc.status}[stream]
        room = (cap if stream != "status" else 4096) - len(buffer)
        buffer += chunk[:max(room, 0)]
        if len(chunk) > room and stream != "status" and not proc.truncated:
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
    try:
        os.close(proc.status_r)
    except OSError:
        pass  # already closed
    shutil.rmtree(proc.workdir, ignore_errors=True)
