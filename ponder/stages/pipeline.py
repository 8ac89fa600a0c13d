"""`ponder pipeline RECIPE.toml --out DIR`: the R1 recipe as declared stages, resumable.

A recipe has a `[pipeline]` table (settings shared by every stage) and an
ordered list of `[[stage]]` tables, each with a `name`, a `kind` and that
kind's config keys:

    kind      config          output in DIR/NAME/
    rl        RLConfig        model/ (+ checkpoints, metrics.jsonl)
    collect   CollectConfig   traces.jsonl
    sft       SFTConfig       model/
    distill   SFTConfig       model/ (a smaller student: a fresh one from `student`,
                              or `model = "@NAME"` of a pretrain stage)
    pretrain  PretrainConfig  model/ (e.g. a small base for a student)
    eval      EvalConfig      eval.json
    data      MakeDataConfig  train.jsonl, test.jsonl, all.jsonl (a generated task file,
                              e.g. `ponder make-data invoices`)

`model = "@NAME"` starts from an earlier stage's model (an eval stage stands
for the model it evaluated, so an existing model can head the chain);
`data = "@NAME"` (comma-separated) trains on a collect stage's traces;
`task = "@NAME"` (or `data = "@NAME"` in the recipe's [task] table) is the task
file a data stage generated, so one command makes the data and trains on it.
A grader file in the recipe is found relative to the recipe. Every stage that
makes a model is then evaluated on the held-out split.

Each stage ends by writing DIR/NAME/manifest.json (parent model, data files
and outputs with sha256, resolved config, metrics, held-out evaluation, git
commit); it is written last and atomically, so it marks the stage finished.
On a re-run a finished stage is skipped when its config and the hashes of
its inputs are unchanged; an unfinished one resumes from its newest complete
checkpoint; `--from NAME` reruns NAME and everything after it. The run ends
by writing DIR/summary.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from ponder.core import checkpoint as ckpt
from ponder.core.lock import clear_run_folder, run_lock
from ponder.core import config as C
from ponder.stages.collect import CollectConfig, collect
from ponder.tasks.invoices import MakeDataConfig, make_data
from ponder.tasks.spec import TASK_FIELDS, TaskFields, is_file_task, make_task, task_fields
from ponder.core.config import RunFields, ConfigError, check_choices, option
from ponder.inference.evaluate import EvalConfig, evaluate
from ponder.models.model import count_params, load_model, resolve_model_path
from ponder.stages.pretrain import PretrainConfig, pretrain
from ponder.core.io import sha256_file, write_json
from ponder.stages.sft import SFTConfig, sft
from ponder.verifiers.tools import ToolFields
from ponder.rl.train import RLConfig, train

KINDS = {"rl": RLConfig, "collect": CollectConfig, "sft": SFTConfig, "distill": SFTConfig,
         "pretrain": PretrainConfig, "eval": EvalConfig, "data": MakeDataConfig}
DATA_FILE = "all.jsonl"  # what `@NAME` of a data stage stands for: both splits, each line with its `split`
MAKES_MODEL = ("rl", "sft", "distill", "pretrain")
MANIFEST = "manifest.json"
SHARED = TASK_FIELDS + C.PIPELINE_SHARED  # [pipeline] keys stages inherit


@dataclass(frozen=True)
class PipelineConfig(RunFields, TaskFields):
    max_new_tokens: int = option(128, "completion token limit of every stage")
    eval_problems: int = option(200, "held-out problems in each stage's evaluation")
    eval_samples: int = option(C.PIPELINE_EVAL_SAMPLES, "samples per problem in those evaluations (1 = greedy only)")
    teacher: str = option("", "stage whose model is the teacher in summary.json (default: the last rl stage)")
    student: str = option("", "stage whose model is the student in summary.json (default: the last distill stage)")
    progress: bool = option(True, "show progress bars")

    def __post_init__(self):
        check_choices(self)
        if self.eval_problems < 1 or self.eval_samples < 1:
            raise ConfigError(f"eval_problems and eval_samples must be >= 1, got "
                              f"{self.eval_problems}, {self.eval_samples}")


@dataclass(frozen=True)
class Stage:
    name: str
    kind: str
    config: object  # the kind's frozen config, every path resolved
    parent: str  # model path it starts from ("" for none: a fresh student)
    data: tuple[str, ...]  # trace files it reads

    @property
    def model_out(self) -> str:
        """The model this stage stands for in `@NAME` references."""
        if self.kind == "eval":
            return self.config.model
        if self.kind == "pretrain":
            return self.config.out
        return str(Path(self.config.out) / "model")


# -- reading the recipe ---------------------------------------------------------------------
def load_recipe(path: str | Path) -> tuple[PipelineConfig, list[dict]]:
    data = C.load_toml(path)  # a top-level [task] table arrives as the TaskFields keys
    unknown = sorted(set(data) - {"pipeline", "stage", *TASK_FIELDS})
    if unknown:
        raise ConfigError(f"recipe {str(path)!r}: unknown top-level key(s) {', '.join(unknown)}; "
                          f"valid: task (a table), pipeline (a table), stage (an array of tables: [[stage]])")
    stages = data.get("stage", [])
    if not isinstance(stages, list) or not stages:
        raise ConfigError(f"recipe {str(path)!r} declares no stages; add [[stage]] tables with name and kind")
    task = {k: v for k, v in data.items() if k in TASK_FIELDS}
    here = Path(path).parent
    shared = C.grader_near_recipe({**task, **data.get("pipeline", {})}, here)
    return C.build(PipelineConfig, shared), [C.grader_near_recipe(t, here) if isinstance(t, dict) else t for t in stages]


def resolve(pc: PipelineConfig, raw: list[dict], out: Path) -> list[Stage]:
    """Turn the recipe's stage tables into configs, replacing `@NAME` by earlier stages' outputs."""
    done: dict[str, Stage] = {}
    for i, table in enumerate(raw):
        table = dict(table)
        name, kind = table.pop("name", None), table.pop("kind", None)
        if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"stage {i + 1} needs a name of letters, digits, '-' and '_', got {name!r}")
        if name in done:
            raise ConfigError(f"stage name {name!r} is used twice")
        if kind not in KINDS:
            raise ConfigError(f"stage {name!r}: kind {kind!r} is not valid; choose one of: {', '.join(KINDS)}")
        cls = KINDS[kind]
        where = f"stage {name!r} ({kind})"
        if "out" in table:
            raise ConfigError(f"{where}: 'out' is set by the pipeline (DIR/{name}); remove it")
        own = {f.name for f in fields(cls)}
        values = {k: getattr(pc, k) for k in SHARED if k in own}
        values.update(table)
        values["out"] = str(out / name / {"collect": "traces.jsonl", "eval": "eval.json", "pretrain": "model"}.get(kind, ""))
        parent = ""
        if isinstance(values.get("task"), str) and values["task"].startswith("@"):
            values["task"] = _task_ref(values["task"], done, where)
        if "model" in own:
            values["model"] = _model_ref(values.get("model", "tiny"), done, where)
            parent = values["model"]
        if kind == "eval":
            values.update(problems=table.get("problems", pc.eval_problems),
                          samples=table.get("samples", pc.eval_samples), label=name)
        data: tuple[str, ...] = ()
        if "data" in own:
            data = tuple(_data_ref(d.strip(), done, where) for d in str(values.get("data", "")).split(",") if d.strip())
            if not data and kind in ("sft", "distill") and not values.get("gold"):
                raise ConfigError(f"{where}: needs data = \"@COLLECT_STAGE\" (or a JSONL trace file), "
                                  f"or gold = N (the task's gold answers)")
            if data:
                values["data"] = ",".join(data)
        if kind == "distill":
            if not table.get("student") and "model" not in table:
                raise ConfigError(f"{where}: a distill stage needs its student: student = 'hidden_size=.. layers=..' "
                                  f"(fresh) or model = \"@PRETRAIN_STAGE\"")
            if table.get("student"):
                parent = ""
        try:
            cfg = C.build(cls, values)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        done[name] = Stage(name, kind, cfg, parent, data)
    return list(done.values())


def _model_ref(value: str, done: dict[str, Stage], where: str) -> str:
    if not value.startswith("@"):
        return value
    ref = done.get(value[1:])
    if ref is None or ref.kind in ("collect", "data"):
        valid = [n for n, s in done.items() if s.kind not in ("collect", "data")]
        raise ConfigError(f"{where}: model {value!r} must name an earlier stage with a model; "
                          f"valid: {', '.join('@' + n for n in valid) or '(none yet)'}")
    return ref.model_out


def _task_ref(value: str, done: dict[str, Stage], where: str) -> str:
    """`@NAME` of a data stage -> the task file it writes."""
    ref = done.get(value[1:])
    if ref is None or ref.kind != "data":
        valid = [n for n, s in done.items() if s.kind == "data"]
        raise ConfigError(f"{where}: task {value!r} must name an earlier data stage; "
                          f"valid: {', '.join('@' + n for n in valid) or '(none yet)'}")
    return str(Path(ref.config.out) / DATA_FILE)


def resolved_task(pc: PipelineConfig, stages: list[Stage]) -> PipelineConfig:
    """The pipeline's own task (for the held-out evaluations) with `@NAME` replaced."""
    if not pc.task.startswith("@"):
        return pc
    return replace(pc, task=_task_ref(pc.task, {s.name: s for s in stages}, "[task]"))


def _data_ref(value: str, done: dict[str, Stage], where: str) -> str:
    if not value.startswith("@"):
        return value
    ref = done.get(value[1:])
    if ref is None or ref.kind != "collect":
        valid = [n for n, s in done.items() if s.kind == "collect"]
        raise ConfigError(f"{where}: data {value!r} must name an earlier collect stage; "
                          f"valid: {', '.join('@' + n for n in valid) or '(none yet)'}")
    return ref.config.out


# -- provenance -----------------------------------------------------------------------------------
def model_sha(path: str) -> str:
    """sha256 of a model folder's weights ('' when there is no such folder yet)."""
    try:
        weights = resolve_model_path(path) / "model.safetensors"
    except ConfigError:
        return ""
    return sha256_file(weights) if weights.is_file() else ""


def inputs_of(stage: Stage) -> dict:
    """What the stage reads, with hashes: a change here makes a finished stage stale.
    A task file (a .jsonl task, e.g. a data stage's) is one of them; a built-in task is not."""
    inputs = {"parent": {"model": stage.parent, "sha256": model_sha(stage.parent)} if stage.parent else None,
              "data": [{"path": d, "sha256": sha256_file(d) if Path(d).is_file() else ""} for d in stage.data]}
    task = getattr(stage.config, "task", "")
    if isinstance(task, str) and is_file_task(task):
        path = task.removeprefix("jsonl:")
        inputs["task"] = {"path": path, "sha256": sha256_file(path) if Path(path).is_file() else ""}
    return inputs


def git_commit() -> str | None:
    """The ponder source's commit (suffixed '+dirty' with uncommitted changes), or None outside git."""
    here = Path(__file__).parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if head.returncode:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def _jsonable(cfg) -> dict:
    return json.loads(json.dumps(asdict(cfg)))


def read_manifest(stage_dir: Path) -> dict | None:
    p = stage_dir / MANIFEST
    return json.loads(p.read_text()) if p.is_file() else None


def same_config(recorded: dict, cfg) -> bool:
    """Whether a manifest's config is `cfg`. An option added to ponder after the stage ran
    (absent from the manifest) counts as unchanged while it keeps its default value, so
    upgrading ponder does not rerun finished stages that the new option cannot affect."""
    now = _jsonable(cfg)
    defaults = _jsonable(type(cfg)())
    added = set(now) - set(recorded)
    return ({k: v for k, v in now.items() if k not in added} == recorded
            and all(now[k] == defaults[k] for k in added))


def staleness(stage: Stage, stage_dir: Path) -> str | None:
    """None when the finished stage can be skipped, else why it must run."""
    m = read_manifest(stage_dir)
    if m is None:
        return "not finished"
    if not same_config(m["config"], stage.config):
        return "its config changed"
    if m["inputs"] != inputs_of(stage):
        return "its inputs changed"
    if any(not Path(o["path"]).is_file() or sha256_file(o["path"]) != o["sha256"] for o in m["outputs"]):
        return "its outputs changed"
    return None


# -- running one stage ----------------------------------------------------------------------------
def _last_metrics(run_dir: Path) -> dict:
    p = run_dir / "metrics.jsonl"
    lines = [l for l in p.read_text().splitlines() if l.strip()] if p.is_file() else []
    return json.loads(lines[-1]) if lines else {}


def stage_tools(stage: Stage) -> dict:
    """The tool settings a stage trained with (none for a stage without them): its held-out
    evaluation lets the model call the same tools, as `ponder eval --tools` would."""
    cfg = stage.config
    return {f.name: getattr(cfg, f.name) for f in fields(ToolFields)} if isinstance(cfg, ToolFields) else {}


def _held_out(stage: Stage, pc: PipelineConfig, model_path: str, stage_dir: Path) -> dict:
    """Evaluate a model on the test split; the eval's summary (without the per-problem rows)."""
    if stage.kind == "eval":
        cfg = stage.config
    else:
        cfg = EvalConfig(model=model_path, **task_fields(pc), **stage_tools(stage), problems=pc.eval_problems,
                         samples=pc.eval_samples, max_new_tokens=pc.max_new_tokens, seed=pc.seed, label=stage.name,
                         device=pc.device,
                         out=str(stage_dir / "eval.json"))
    model, tok = load_model(model_path, device=cfg.device)
    result = evaluate(model, tok, make_task(cfg), cfg)
    Path(cfg.out).write_text(json.dumps(result, indent=1))
    return {"summary": result["summary"], "params": count_params(model)}


def run_stage(stage: Stage, pc: PipelineConfig, stage_dir: Path) -> dict:
    """Run (or resume) one stage and return its manifest, written last."""
    t0, cpu0 = time.time(), time.process_time()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    stage_dir.mkdir(parents=True, exist_ok=True)
    write_json(stage_dir / "inputs.json", inputs_of(stage))  # what a resume must start from too
    resume = ckpt.latest(stage_dir / "checkpoints") is not None
    metrics: dict = {}
    outputs: list[str] = []
    prefix = f"[{stage.name}] "
    if stage.kind == "rl":
        outputs.append(str(train(stage.config, resume=resume, log_prefix=prefix)))
        metrics = _last_metrics(stage_dir)
    elif stage.kind in ("sft", "distill"):
        outputs.append(str(sft(stage.config, resume=resume, log_prefix=prefix)))
        metrics = _last_metrics(stage_dir)
    elif stage.kind == "collect":
        metrics = collect(stage.config)
        outputs.append(stage.config.out)
    elif stage.kind == "pretrain":
        outputs.append(str(pretrain(stage.config)))
    elif stage.kind == "data":
        metrics = make_data(stage.config)
        outputs += [str(Path(stage.config.out) / f) for f in ("train.jsonl", "test.jsonl", DATA_FILE)]
    held_out = None
    if stage.kind in MAKES_MODEL or stage.kind == "eval":
        held_out = _held_out(stage, pc, stage.model_out, stage_dir)
        outputs.append(str(stage_dir / "eval.json"))
    files = [p for o in outputs for p in ([Path(o) / "model.safetensors"] if Path(o).is_dir() else [Path(o)])]
    manifest = {
        "stage": stage.name, "kind": stage.kind, "config": _jsonable(stage.config), "inputs": inputs_of(stage),
        "outputs": [{"path": str(p), "sha256": sha256_file(p)} for p in files if p.is_file()],
        "model": stage.model_out if stage.kind not in ("collect", "data") else None,
        "metrics": metrics, "held_out": held_out, "git_commit": git_commit(),
        "started": started, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.time() - t0, 1), "resumed": resume,
        # CPU time of this process over all its threads (this run's part, if it was resumed)
        "cpu_seconds": round(time.process_time() - cpu0, 1),
    }
    write_json(stage_dir / MANIFEST, manifest)
    return manifest


# -- the pipeline -----------------------------------------------------------------------------------
def run_pipeline(recipe: str | Path, out: str | Path, from_stage: str | None = None) -> dict[str, str]:
    """Run every stage that is not finished and fresh; returns {stage: 'ran' | 'skipped'}."""
    # One writer per run folder: the pipeline holds DIR and, from the moment it reaches a stage,
    # DIR/NAME (before it may empty it), so a stray `ponder train --out DIR/NAME` is refused too.
    with run_lock(out), contextlib.ExitStack() as held:
        return _run_pipeline(recipe, Path(out), from_stage, held)


def _run_pipeline(recipe: str | Path, out: Path, from_stage: str | None, held: contextlib.ExitStack) -> dict[str, str]:
    pc, raw = load_recipe(recipe)
    stages = resolve(pc, raw, out)
    pc = resolved_task(pc, stages)
    names = [s.name for s in stages]
    if from_stage is not None and from_stage not in names:
        raise ConfigError(f"--from {from_stage!r} is not a stage of {str(recipe)!r}; valid: {', '.join(names)}")
    C.set_threads(pc.threads)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "pipeline.json", {"recipe": str(recipe), "stages": names,
                                               "recipe_text": Path(recipe).read_text()})
    status: dict[str, str] = {}
    rerun = False  # from the --from stage on, everything reruns
    for stage in stages:
        stage_dir = out / stage.name
        held.enter_context(run_lock(stage_dir))
        rerun = rerun or stage.name == from_stage
        why = "--from" if rerun else staleness(stage, stage_dir)
        if why is None:
            print(f"[{stage.name}] finished and unchanged; skipped")
            status[stage.name] = "skipped"
            continue
        if why == "--from" or why.endswith("changed") or not _resumable(stage, stage_dir):
            clear_run_folder(stage_dir)  # start over: its old outputs are not this stage's (the lock stays)
        print(f"[{stage.name}] running {stage.kind} ({why})")
        run_stage(stage, pc, stage_dir)
        status[stage.name] = "ran"
    write_json(out / "summary.json", summarize(pc, stages, out))
    print(f"wrote {out / 'summary.json'}")
    return status


def _resumable(stage: Stage, stage_dir: Path) -> bool:
    """Can an unfinished stage continue from what it left? Only if it started from the same
    inputs and its checkpoints (if any) were made under the same config."""
    started = stage_dir / "inputs.json"
    if started.is_file() and json.loads(started.read_text()) != inputs_of(stage):
        return False
    if ckpt.latest(stage_dir / "checkpoints") is None:
        return True
    try:  # the newest checkpoint that loads (a damaged one is skipped, as the stage's resume will)
        _, state = ckpt.load_latest(stage_dir / "checkpoints", ckpt.load_state, say=lambda s: None)
    except ConfigError:
        return False  # none loads: start the stage again
    return state.get("config") == asdict(stage.config)


def summarize(pc: PipelineConfig, stages: list[Stage], out: Path) -> dict:
    rows = []
    for s in stages:
        m = read_manifest(out / s.name) or {}
        h = m.get("held_out") or {}
        hs = h.get("summary", {})
        rows.append({"stage": s.name, "kind": s.kind, "accuracy": hs.get("accuracy"),
                     "accuracy_ci": hs.get("accuracy_ci"), "mean_score": hs.get("mean_score"),
                     "mean_thinking_tokens": hs.get("mean_thinking_tokens"),
                     "params": h.get("params"), "model": m.get("model"),
                     "minutes": round(m["seconds"] / 60, 2) if "seconds" in m else None,
                     "cpu_minutes": round(m["cpu_seconds"] / 60, 2) if "cpu_seconds" in m else None,
                     "by_info": hs.get("by_info")})
    by_name = {r["stage"]: r for r in rows}
    teacher = pc.teacher or next((s.name for s in reversed(stages) if s.kind == "rl"), "")
    student = pc.student or next((s.name for s in reversed(stages) if s.kind == "distill"), "")
    summary = {"stages": rows, "git_commit": git_commit()}
    for role, name in (("teacher", teacher), ("student", student)):
        if name and name not in by_name:
            raise ConfigError(f"pipeline.{role} = {name!r} is not a stage; valid: {', '.join(by_name)}")
        if name:
            summary[role] = {"stage": name, "params": by_name[name]["params"], "accuracy": by_name[name]["accuracy"]}
    t, st = summary.get("teacher"), summary.get("student")
    if t and st and t["params"] and st["params"]:
        summary["student_param_ratio"] = st["params"] / t["params"]
        if t["accuracy"]:
            summary["student_accuracy_retention"] = (st["accuracy"] or 0.0) / t["accuracy"]
    return summary


# -- lineage ------------------------------------------------------------------------------------------
def lineage(run_dir: str | Path) -> str:
    """The chain of a pipeline run: each stage, what it started from and read, and how it did."""
    run_dir = Path(run_dir)
    meta = run_dir / "pipeline.json"
    if not meta.is_file():
        raise ConfigError(f"{str(run_dir)!r} is not a pipeline run (no pipeline.json); "
                          f"give the --out folder of `ponder pipeline`")
    names = json.loads(meta.read_text())["stages"]
    models = {}  # model path -> stage that made it, to print names instead of paths
    lines = []
    for name in names:
        m = read_manifest(run_dir / name)
        if m is None:
            last = ckpt.latest(run_dir / name / "checkpoints")
            lines.append(f"{name}: not finished" + (f" (resumable from {last.name})" if last else ""))
            continue
        parent = m["inputs"]["parent"]
        src = []
        if parent:
            src.append(f"model {models.get(parent['model'], parent['model'])} [{parent['sha256'][:10] or '-'}]")
        elif m["kind"] == "distill":
            src.append(f"fresh student ({m['config']['student']})")
        src += [f"data {d['path']} [{d['sha256'][:10]}]" for d in m["inputs"]["data"]]
        if m["inputs"].get("task"):  # a task file, e.g. a data stage's
            src.append(f"task {m['inputs']['task']['path']} [{m['inputs']['task']['sha256'][:10]}]")
        if m.get("model"):
            models.setdefault(m["model"], name)  # after naming the parent: an eval stage's parent is its own model
        line = f"{name} ({m['kind']}) <- " + (", ".join(src) or "-")
        h = m.get("held_out")
        if h:
            s = h["summary"]
            line += f"\n    held-out accuracy {s['accuracy']:.3f}, thinking tokens {s['mean_thinking_tokens']:.1f}, " \
                    f"params {h['params']:,}"
        if m["kind"] == "collect":
            line += f"\n    kept {m['metrics']['kept']} traces of {m['metrics']['samples']} samples"
        line += f"\n    finished {m['finished']} in {m['seconds']} s, git {m['git_commit'] or 'unknown'}"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="ponder pipeline", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", help="TOML recipe: a [pipeline] table and [[stage]] tables")
    ap.add_argument("--out", required=True, help="run directory (one folder per stage)")
    ap.add_argument("--from", dest="from_stage", metavar="STAGE", help="rerun this stage and all after it")
    args = ap.parse_args(argv)
    try:
        run_pipeline(args.recipe, args.out, args.from_stage)
    except KeyboardInterrupt:
        print(f"\ninterrupted; rerun the same command to resume ({args.out})")
        return 130
    return 0


def lineage_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="ponder lineage", description=lineage.__doc__)
    ap.add_argument("run", help="the --out folder of `ponder pipeline`")
    print(lineage(ap.parse_args(argv).run))
    return 0
