"""What the sandbox and code-verifier tests share: which backends run here, and how.

In CI (``CI=true``) the bubblewrap tests never skip: a machine without a
working bwrap fails them, because a security test that skips proves nothing.
Elsewhere they skip with the reason.
"""

import os

import pytest

from ponder.verifiers import sandbox

IN_CI = os.environ.get("CI", "").lower() == "true"
BWRAP = sandbox.backend() == "bwrap"
needs_bwrap = pytest.mark.skipif(not BWRAP and not IN_CI,
                                 reason=f"bwrap does not work here: {sandbox._bwrap_problem()}")


def unsafe_python() -> str | None:
    """An interpreter the unsafe backend may run here, or None.

    Ours; else, when we are root and ours sits where an unprivileged uid
    cannot reach it (a pyenv under /root), the system's python3: the programs
    the tests run are stdlib only, and the mechanisms under test (uid drop,
    private folders, report pipe, sweep) are the same.
    """
    for python in (sandbox._python(), "/usr/bin/python3"):
        real = os.path.realpath(python)
        if os.path.exists(real) and not sandbox._fallback_problem(real):
            return real
    return None


def runnable(backend: str, monkeypatch) -> str:
    """`backend`, made runnable for this test: the unsafe one gets `unsafe_python`."""
    if backend != sandbox.UNSAFE:
        return backend
    python = unsafe_python()
    if python is None:
        reason = f"the unsafe backend cannot run here: {sandbox._fallback_problem(sandbox._python())}"
        pytest.fail(reason) if IN_CI else pytest.skip(reason)
    monkeypatch.setattr(sandbox, "_python", lambda: python)
    return backend


# Parametrize over these, then call `runnable(backend, monkeypatch)` in the test.
BACKENDS = [pytest.param("bwrap", marks=needs_bwrap), sandbox.UNSAFE]
