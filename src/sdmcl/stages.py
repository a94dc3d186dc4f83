"""Experiment files with stages: pretraining → continual learning in one file, one command.

    name: table1
    reproduces: Table 1, Figure 2          # shown by `sdmcl list`
    data: {source: embeddings, path: data/ConvMixerEmbeddings/CIFAR10}   # shared by the inline stages
    stages:
      pretrain:                            # an experiment of its own (variants, seeds) ...
        file: imagenet32_embeddings_pretrain.yaml   # ... or another experiment file, used as it is
      natural:
        init_from: {stage: pretrain, variant: sdmlp-1k}
        variants:
          sdmlp-1k: {}
          relu-1k-ewc: {model: {name: relu_mlp}, init_from: {stage: pretrain, variant: relu-sgd-1k}}

Rules:
- Stages run in file order; each run is a normal run (its own run directory, resumable,
  reused when finished). Running the file again reuses finished runs and resumes an
  interrupted one, so a chain interrupted anywhere continues where it stopped.
- An inline stage is the file's top-level keys (everything but `stages` and `reproduces`)
  with the stage's keys merged over them; its runs are named `<name>-<stage>-<variant>`.
- `file: PATH` (relative to this file) makes a stage of another experiment file, exactly as
  running that file would: same run names, same run directories, so its finished runs are
  shared with that file and every other file that includes it. Keys beside `file` are merged
  over it. Of such a stage only the runs that later stages start from are run.
- `init_from: {stage: S, variant: V, seed: N}` (at a stage's top level or in a variant) is
  the finished run of stage S, variant V (V may be left out when S has one variant; N when
  V has one seed). It resolves to that run's directory before anything runs: the continual
  run then starts from its weights with a new output head and the GABA counters kept. A
  run that sets no `model` section takes the model settings of the run it starts from
  (`model.KEY: value` beside it still applies); the model settings of the two runs must
  agree except for settings without weights (dropout), checked before anything runs.
- Command-line overrides `key=value` apply to every stage; `STAGE.key=value` to one stage.
  `--stage S` runs stage S and, before it, only the runs of earlier stages it starts from.

A file without `stages` is a plain experiment: one unnamed stage.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdmcl.config import RunConfig, expand_experiment, parse_override, read_yaml
from sdmcl.errors import ConfigError

META_KEYS = ("reproduces",)  # notes about a file, no run settings
STAGE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


@dataclass
class PlannedRun:
    stage: str | None
    label: str
    cfg: RunConfig
    starts_from: tuple | None = None  # (stage, label, seed) of the run whose weights it starts from

    @property
    def key(self) -> tuple:
        return (self.stage, self.label, self.cfg.seed)


@dataclass
class Plan:
    """The runs of an experiment file, stage by stage, in the order they must run."""

    path: Path | None
    reproduces: str | None
    stages: list[str | None] = field(default_factory=list)
    runs: dict[str | None, list[PlannedRun]] = field(default_factory=dict)
    included: set[str] = field(default_factory=set)  # stages made from another file (only needed runs)

    def all_runs(self) -> list[PlannedRun]:
        return [r for s in self.stages for r in self.runs[s]]

    def select(self, stage: str | None = None) -> list[PlannedRun]:
        """The runs to execute, in order: every run of `stage` (default: of every stage, but of
        an included stage only those that later stages start from) and the runs they need."""
        if stage is not None and self.stages == [None]:
            raise ConfigError(f"--stage: {self.path or 'this file'} has no stages; run it without --stage")
        if stage is not None and stage not in self.stages:
            raise ConfigError(f"--stage: {stage!r} is not a stage of this file; its stages are {', '.join(map(str, self.stages))}")
        wanted = [r for s in self.stages if (stage is None and s not in self.included) or s == stage for r in self.runs[s]]
        by_key = {r.key: r for r in self.all_runs()}
        needed: set[tuple] = set()
        todo = [r for r in wanted]
        while todo:
            r = todo.pop()
            if r.key in needed:
                continue
            needed.add(r.key)
            if r.starts_from is not None:
                todo.append(by_key[r.starts_from])
        return [r for r in self.all_runs() if r.key in needed]


def _merge(base: dict, over: dict) -> dict:
    """`over` merged into a copy of `base`: mappings merge key by key, other values replace."""
    out = json.loads(json.dumps(base))
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in ("variants",):
            out[key] = _merge(out[key], value)
        elif key == "variants" and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}  # extra variants join the file's ones
        else:
            out[key] = json.loads(json.dumps(value))
    return out


def _split_overrides(overrides: list[str], stage_names: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    shared, per_stage = [], {name: [] for name in stage_names}
    for text in overrides:
        key, _ = parse_override(text)  # validates the form
        head, _, rest = key.partition(".")
        if head in per_stage and rest:
            per_stage[head].append(text.split(".", 1)[1])
        else:
            shared.append(text)
    return shared, per_stage


def _stage_dicts(raw: dict, path: Path | None) -> list[tuple[str, dict, bool]]:
    """(stage name, experiment dict, included from another file) per stage, in order."""
    stages = raw.pop("stages")
    if not isinstance(stages, dict) or not stages:
        raise ConfigError("stages: expected a mapping of stage name to its settings, e.g. {pretrain: {...}, continual: {...}}")
    reserved = {f for f in RunConfig.__dataclass_fields__} | {"seeds", "variants", "stages", *META_KEYS}
    shared = raw
    out = []
    for name, body in stages.items():
        if not isinstance(name, str) or not STAGE_NAME.match(name) or name in reserved:
            raise ConfigError(f"stages.{name}: a stage name is a word of letters, digits, - or _ and not a config key "
                              f"({', '.join(sorted(reserved))})")
        if not isinstance(body, dict):
            raise ConfigError(f"stages.{name}: expected a mapping of settings (or file: PATH)")
        body = dict(body)
        if "file" in body:
            ref = body.pop("file")
            if not isinstance(ref, str):
                raise ConfigError(f"stages.{name}.file: expected a path to an experiment file, got {ref!r}")
            file = (path.parent / ref) if path is not None and not Path(ref).is_absolute() else Path(ref)
            included = read_yaml(file)
            if "stages" in included:
                raise ConfigError(f"stages.{name}.file: {ref} has stages itself; include a plain experiment file")
            for meta in META_KEYS:
                included.pop(meta, None)
            out.append((name, _merge(included, body), True))
        else:
            merged = _merge(shared, body)
            if "name" not in body:
                merged["name"] = f"{shared.get('name', 'exp')}-{name}"
            out.append((name, merged, False))
    return out


def _resolve_ref(ref: Any, where: str, plan: Plan, stage_index: dict[str, int], current: int) -> tuple[str, PlannedRun]:
    if not isinstance(ref, dict) or "stage" not in ref or set(ref) - {"stage", "variant", "seed"}:
        raise ConfigError(f"{where}: expected {{stage: NAME, variant: LABEL, seed: N}} (variant and seed optional), got {ref!r}")
    stage = ref["stage"]
    if stage not in stage_index or stage_index[stage] >= current:
        earlier = [s for s, i in stage_index.items() if i < current]
        raise ConfigError(f"{where}: {stage!r} is not an earlier stage; choose one of {', '.join(earlier) or '(none)'}")
    runs = plan.runs[stage]
    labels = list(dict.fromkeys(r.label for r in runs))
    label = ref.get("variant")
    if label is None:
        if len(labels) != 1:
            raise ConfigError(f"{where}: stage {stage!r} has variants {', '.join(labels)}; name one with variant: LABEL")
        label = labels[0]
    matching = [r for r in runs if r.label == str(label)]
    if not matching:
        raise ConfigError(f"{where}: stage {stage!r} has no variant {label!r}; it has {', '.join(labels)}")
    if "seed" in ref:
        matching = [r for r in matching if r.cfg.seed == ref["seed"]]
        if not matching:
            raise ConfigError(f"{where}: stage {stage!r} variant {label!r} has no run with seed {ref['seed']!r}")
    if len(matching) > 1:
        seeds = ", ".join(str(r.cfg.seed) for r in matching)
        raise ConfigError(f"{where}: stage {stage!r} variant {label!r} runs seeds {seeds}; pick one with seed: N")
    return str(label), matching[0]


def _check_start(run: PlannedRun, source: PlannedRun, where: str) -> None:
    """The model settings of a continual run and the run it starts from must agree."""
    from sdmcl.train.engine import init_from_differences

    diffs = init_from_differences(source.cfg.to_dict()["model"], run.cfg.to_dict()["model"])
    if diffs:
        raise ConfigError(f"{where}: starts from {source.stage}/{source.label}, whose model differs: {'; '.join(diffs)}; "
                          "make the model settings equal")


def build_plan(raw: dict, overrides: list[str] = (), path: Path | None = None) -> Plan:
    """Validate an experiment dict (with or without stages) into the runs it stands for."""
    raw = json.loads(json.dumps(raw))
    reproduces = raw.pop("reproduces", None)
    if reproduces is not None and not isinstance(reproduces, str):
        raise ConfigError(f"reproduces: expected a line of text naming the table or figure, got {reproduces!r}")
    plan = Plan(path, reproduces)
    if "stages" not in raw:
        plan.stages = [None]
        plan.runs[None] = [PlannedRun(None, label, cfg) for label, cfg in expand_experiment(raw, list(overrides))]
        return plan
    stages = _stage_dicts(raw, path)
    names = [name for name, _, _ in stages]
    shared, per_stage = _split_overrides(list(overrides), names)
    index = {name: i for i, name in enumerate(names)}
    for i, (name, body, included) in enumerate(stages):
        refs: dict[str | None, tuple] = {}  # variant label (None: the stage's own key) → (ref label, source run)
        if isinstance(body.get("init_from"), dict):
            refs[None] = _resolve_ref(body["init_from"], f"stages.{name}.init_from", plan, index, i)
            body["init_from"] = str(_run_dir(refs[None][1]))
        variants = body.get("variants") or {}
        for label, changes in variants.items():
            if isinstance(changes, dict) and isinstance(changes.get("init_from"), dict):
                refs[label] = _resolve_ref(changes["init_from"], f"stages.{name}.variants.{label}.init_from", plan, index, i)
                changes["init_from"] = str(_run_dir(refs[label][1]))
        # a run that starts from another and sets no model section takes that run's model
        # settings (as the reference read them from its checkpoint); model.KEY settings still apply
        if "model" not in body:
            if refs.get(None) is not None and not variants:
                body["model"] = refs[None][1].cfg.to_dict()["model"]
            for label in list(variants):
                changes = variants[label] if isinstance(variants[label], dict) else None
                source = refs.get(label, refs.get(None))
                if changes is not None and source is not None and "model" not in changes and changes.get("init_from", body.get("init_from")):
                    variants[label] = {"model": source[1].cfg.to_dict()["model"], **changes}
        try:
            expanded = expand_experiment(body, shared + per_stage[name])
        except ConfigError as e:
            raise ConfigError(f"stage {name!r}: {e}") from None
        runs = []
        for label, cfg in expanded:
            ref = refs.get(label, refs.get(None))
            run = PlannedRun(name, label, cfg)
            if ref is not None and cfg.init_from == str(_run_dir(ref[1])):
                run.starts_from = ref[1].key
                _check_start(run, ref[1], f"stage {name!r} variant {label!r}")
            runs.append(run)
        plan.stages.append(name)
        plan.runs[name] = runs
        if included:
            plan.included.add(name)
    return plan


# The run directory's stamp hashes the content of the run's data files. When they are not
# there yet (a file checked before its data is downloaded), a run that starts from it names
# this placeholder; the plan still validates, and running it stops at the missing data first.
UNRESOLVED = "<stamp of its data, once it is there>"


def _run_dir(run: PlannedRun) -> Path:
    from sdmcl.errors import DataError
    from sdmcl.train.rundir import run_dir_for

    try:
        return run_dir_for(run.cfg)
    except DataError:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run.cfg.name) or "run"
        return Path(run.cfg.output.dir) / f"{safe}-{UNRESOLVED}"


def load_plan(path: str | Path, overrides: list[str] = ()) -> Plan:
    return build_plan(read_yaml(path), overrides, Path(path))


def reproduces_line(path: Path) -> str:
    """What an experiment file reproduces (its `reproduces` key, else its first comment line)."""
    try:
        raw = read_yaml(path)
    except ConfigError:
        raw = {}
    note = raw.get("reproduces") if isinstance(raw, dict) else None
    if isinstance(note, str) and note.strip():
        return note.strip()
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    first = lines[0] if lines else ""
    return first.lstrip("# ").strip()


def run_plan(plan: Plan, stage: str | None = None, progress: bool = True, runner=None) -> list[tuple[str | None, Any]]:
    """Run the selected runs stage by stage; returns (stage, what `runner` returned) per stage run.

    `runner(runs)` trains a list of (label, RunConfig) (default: `launch.run_many`); a stage
    starts only when the runs it starts from have finished."""
    from sdmcl.errors import CheckpointError
    from sdmcl.launch import run_many
    from sdmcl.train.rundir import RunDir

    runner = runner or (lambda runs: run_many(runs, progress=progress))
    selected = plan.select(stage)
    by_key = {r.key: r for r in plan.all_runs()}
    out = []
    for name in plan.stages:
        runs = [r for r in selected if r.stage == name]
        if not runs:
            continue
        for r in runs:
            if r.starts_from is not None and not RunDir(_run_dir(by_key[r.starts_from])).is_finished():
                src = by_key[r.starts_from]
                raise CheckpointError(f"stage {name!r} variant {r.label!r}: the run it starts from ({src.stage}/{src.label}, "
                                      f"{_run_dir(src)}) has not finished; run its stage first")
        if name is not None:
            print(f"=== stage {name}: {len(runs)} run(s)")
        out.append((name, runner([(r.label if name is None else f"{name}/{r.label}", r.cfg) for r in runs])))
    return out
