"""One writer per run folder: a live holder refuses a second one by pid; a killed one does not block."""

import os
import signal
import subprocess
import sys
import time

import pytest

from ponder.core.config import ConfigError
from ponder.core.lock import LOCK_FILE, holder, run_lock

HOLD = "import sys, time; from ponder.core.lock import run_lock\n" \
       "with run_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(600)\n"


@pytest.fixture
def child_holding(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield out, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def test_second_writer_is_refused_naming_the_pid_and_a_killed_one_frees_the_folder(child_holding):
    out, proc = child_holding
    with pytest.raises(ConfigError) as e:
        with run_lock(out):
            pass
    msg = str(e.value)
    assert f"in use by pid {proc.pid} (started 20" in msg and str(out) in msg and "another --out" in msg, msg
    assert "\n" not in msg
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert holder(out)["pid"] == proc.pid  # the note survives the kill; the lock does not
    with run_lock(out):
        assert holder(out)["pid"] == os.getpid()


def test_released_on_exit_and_on_error(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with run_lock(out):
            raise RuntimeError("the run failed")
    assert (out / LOCK_FILE).read_text() == ""  # nobody claims the folder any more
    proc = subprocess.run([sys.executable, "-c", HOLD.replace("time.sleep(600)", "pass"), str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "held", proc.stderr


def test_nested_same_folder_and_sub_folders_do_not_deadlock(tmp_path):
    """The pipeline locks DIR while its stages lock DIR/NAME; a function may lock a folder its caller holds."""
    with run_lock(tmp_path / "p"):
        with run_lock(tmp_path / "p" / "stage"), run_lock(tmp_path / "p"):
            pass
        assert holder(tmp_path / "p")["pid"] == os.getpid()  # the inner exit did not release the outer hold
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-c", HOLD.replace("time.sleep(600)", "pass"), str(tmp_path / "p")],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0 and f"pid {os.getpid()}" in proc.stderr and time.time() - t0 < 30


# -- the verbs hold their --out: a second writer is refused before it writes anything -------------------
def test_train_sft_and_pipeline_refuse_a_folder_a_live_run_holds(child_holding, tmp_path, monkeypatch):
    from ponder.rl.train import RLConfig, train
    from ponder.stages.pipeline import run_pipeline
    from ponder.stages.sft import SFTConfig, sft
    from ponder.tasks import TASKS
    from r1_fixtures import AnyTask, small_model, write_traces
    out, proc = child_holding
    monkeypatch.setitem(TASKS, "any", AnyTask)
    model = small_model(tmp_path / "base")
    with pytest.raises(ConfigError, match=f"in use by pid {proc.pid} "):
        train(RLConfig(model=model, task="any", out=str(out), steps=1, prompts_per_step=2, group_size=2,
                       max_new_tokens=4, track_kl=False, tensorboard=False, progress=False))
    with pytest.raises(ConfigError, match=f"in use by pid {proc.pid} "):
        sft(SFTConfig(model=model, data=str(write_traces(tmp_path / "t.jsonl", 4)), out=str(out), epochs=1,
                      progress=False))
    recipe = tmp_path / "r.toml"  # one rl stage named like the held folder: DIR/run is its stage folder
    recipe.write_text(f'[pipeline]\ntask = "any"\nprogress = false\neval_problems = 2\nmax_new_tokens = 4\n\n'
                      f'[[stage]]\nname = "{out.name}"\nkind = "rl"\nmodel = "{model}"\nsteps = 1\n'
                      f'prompts_per_step = 2\ngroup_size = 2\ntrack_kl = false\ntensorboard = false\n')
    with pytest.raises(ConfigError, match=f"in use by pid {proc.pid} "):
        run_pipeline(recipe, out)  # the pipeline's own folder
    with pytest.raises(ConfigError, match=f"in use by pid {proc.pid} "):
        run_pipeline(recipe, out.parent)  # a stray `ponder train --out DIR/run` holds the stage's folder
    # nothing of the live run was written over or deleted (a stale stage is emptied before it reruns)
    assert holder(out)["pid"] == proc.pid and sorted(p.name for p in out.iterdir()) == [LOCK_FILE]


def test_clearing_a_held_folder_keeps_it_held(tmp_path):
    import shutil

    from ponder.core.lock import clear_run_folder
    out = tmp_path / "stage"
    busy = HOLD.replace("time.sleep(600)", "pass")
    with run_lock(out):
        (out / "metrics.jsonl").write_text("{}\n")
        (out / "checkpoints" / "step-000001").mkdir(parents=True)
        clear_run_folder(out)
        assert [p.name for p in out.iterdir()] == [LOCK_FILE]
        proc = subprocess.run([sys.executable, "-c", busy, str(out)], capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0 and f"pid {os.getpid()}" in proc.stderr
        # a plain rmtree deletes the lock file: a nested lock notices and locks the new one
        shutil.rmtree(out)
        with run_lock(out):
            proc = subprocess.run([sys.executable, "-c", busy, str(out)], capture_output=True, text=True,
                                  timeout=60)
            assert proc.returncode != 0 and f"pid {os.getpid()}" in proc.stderr
