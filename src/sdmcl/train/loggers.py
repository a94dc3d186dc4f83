"""Loggers: TensorBoard and Weights & Biases, chosen with `output.loggers: [tensorboard, wandb]`.

Each is a `Callback` (callbacks.py): it sees every evaluation, task end and the run's end,
and never changes what is trained. metrics.jsonl, accuracy_matrix.csv and summary.json are
always written; these only add views of the same numbers. Both need optional packages
(`pip install 'sdmcl[tensorboard]'`, `'sdmcl[wandb]'`, or `'sdmcl[all]'`); a config that
asks for a logger whose package is missing stops before any work with exit code 2.

What each logs, with the epoch as the step:
- every evaluation: `accuracy/seen_average` (average over the tasks trained so far),
  `accuracy/task_J` (each task trained so far, J from 1), `accuracy_task_aware/seen_average`,
  `train/loss`, and for models that have them `neurons/fraction_dead`,
  `neurons/active_per_input`, `neurons/gaba_switched`;
- every task end: the accuracy matrix so far as an image (`accuracy_matrix`);
- the run's end: TensorBoard hparams (the resolved config, without output settings) with
  the final metrics (`final/...`); in W&B the config and the final metrics in the run summary.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil

from sdmcl.errors import UserError
from sdmcl.registry import register_logger
from sdmcl.train.callbacks import Callback

FINAL_KEYS = ("final_average_accuracy", "average_incremental_accuracy", "forgetting", "backward_transfer",
              "learning_accuracy", "final_task_aware_accuracy", "fraction_dead", "active_per_input", "gaba_switched",
              "seconds_per_epoch")


class LoggerError(UserError):
    pass


def evaluation_scalars(entry: dict) -> dict[str, float]:
    """The numbers of one metrics.jsonl entry under the loggers' names (seen tasks only)."""
    seen = entry["task"] + 1
    out = {"accuracy/seen_average": entry["seen_average_accuracy"]}
    for j, acc in enumerate(entry["task_accuracy"][:seen]):
        out[f"accuracy/task_{j + 1}"] = acc
    aware = entry.get("task_aware_accuracy") or []
    if aware[:seen]:
        out["accuracy_task_aware/seen_average"] = sum(aware[:seen]) / len(aware[:seen])
    if entry.get("train_loss") is not None:
        out["train/loss"] = entry["train_loss"]
    for key in ("fraction_dead", "active_per_input", "gaba_switched"):
        if entry.get(key) is not None:
            out[f"neurons/{key}"] = entry[key]
    return {k: float(v) for k, v in out.items()}


def final_scalars(summary: dict) -> dict[str, float]:
    return {f"final/{k}": float(summary[k]) for k in FINAL_KEYS
            if isinstance(summary.get(k), (int, float)) and not isinstance(summary.get(k), bool)}


def hparams(cfg) -> dict:
    """The resolved config (without output settings) as flat scalar values."""
    from sdmcl.config import flatten, result_identity

    out = {}
    for key, value in flatten(result_identity(cfg.to_dict())).items():
        out[key] = value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
    return out


def matrix_image(engine):
    """The accuracy matrix so far (rows: tasks trained) as an RGB array."""
    from sdmcl import plots

    fig = plots.accuracy_matrix_figure(engine.state.R, engine.task_labels, title=f"{engine.run_dir.path.name}: accuracy (%)")
    return plots.figure_to_rgb(fig)


class TensorBoardLogger(Callback):
    """Event files in RUN_DIR/tensorboard (`tensorboard --logdir runs/`)."""

    name = "tensorboard"

    def __init__(self):
        self.writer = None

    def on_run_start(self, engine, resumed: bool) -> None:
        from torch.utils.tensorboard import SummaryWriter

        log_dir = engine.run_dir.path / "tensorboard"
        if not resumed:
            shutil.rmtree(log_dir, ignore_errors=True)  # events of an attempt that starts over are void
        # on resume, TensorBoard drops the events a killed process wrote after the checkpoint
        purge = engine.state.epochs_done + 1 if resumed else None
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge)

    def on_evaluation(self, engine, entry: dict) -> None:
        for key, value in evaluation_scalars(entry).items():
            self.writer.add_scalar(key, value, entry["epoch"])

    def on_task_end(self, engine, task, entry: dict) -> None:
        self.writer.add_image("accuracy_matrix", matrix_image(engine), entry["epoch"], dataformats="HWC")
        self.writer.flush()

    def on_run_end(self, engine, summary: dict) -> None:
        # run_name "." keeps the hparams session in the run's own directory
        self.writer.add_hparams(hparams(engine.cfg), final_scalars(summary), run_name=".", global_step=summary["epochs"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _wandb_id(run_dir_name: str) -> str:
    """A W&B run id: the run directory's name (letters, digits, - and _) and a random suffix,
    so a run that starts over is a new W&B run and a resumed one continues its own."""
    base = re.sub(r"[^A-Za-z0-9_-]", "_", run_dir_name)[:48]
    return f"{base}-{secrets.token_hex(4)}"


class WandbLogger(Callback):
    """A W&B run per sdmcl run, its files in RUN_DIR/wandb. Offline with WANDB_MODE=offline
    (upload later with `wandb sync RUN_DIR/wandb/offline-run-*`). W&B's service process
    writes the files in the background; they are complete when the process exits (or after
    `wandb.teardown()` in a Python session)."""

    name = "wandb"

    def __init__(self, project: str):
        self.project = project
        self.run = None
        self.run_id: str | None = None
        self.finished = False

    def state_dict(self) -> dict:
        return {"run_id": self.run_id}

    def load_state_dict(self, state: dict) -> None:
        self.run_id = state.get("run_id") or self.run_id

    def on_run_start(self, engine, resumed: bool) -> None:
        import wandb

        rd = engine.run_dir
        if not resumed or not self.run_id:
            self.run_id = _wandb_id(rd.path.name)
        try:
            self.run = wandb.init(
                project=self.project, name=rd.path.name, group=engine.cfg.name, id=self.run_id, resume="allow",
                dir=str(rd.path), config=engine.cfg.to_dict(),
                settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
            )
        except Exception as err:  # W&B's own errors (login, network, settings) all stop the same way
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise LoggerError(f"output.loggers: W&B did not start ({first}); run `wandb login`, or set "
                              "WANDB_MODE=offline to keep the W&B run in RUN_DIR/wandb without a network") from None

    def on_evaluation(self, engine, entry: dict) -> None:
        self.run.log(evaluation_scalars(entry), step=entry["epoch"])

    def on_task_end(self, engine, task, entry: dict) -> None:
        import wandb

        self.run.log({"accuracy_matrix": wandb.Image(matrix_image(engine))}, step=entry["epoch"])

    def on_run_end(self, engine, summary: dict) -> None:
        self.run.summary.update(final_scalars(summary))
        self.finished = True

    def close(self) -> None:
        if self.run is not None:
            self.run.finish(exit_code=0 if self.finished else 1)
            self.run = None


@register_logger("tensorboard", "TensorBoard event files in RUN_DIR/tensorboard", extra="tensorboard",
                 requires=("tensorboard",))
def build_tensorboard(cfg) -> TensorBoardLogger:
    return TensorBoardLogger()


@register_logger("wandb", "Weights & Biases run (WANDB_MODE=offline works without a network)", extra="wandb",
                 requires=("wandb",))
def build_wandb(cfg) -> WandbLogger:
    return WandbLogger(cfg.output.wandb_project)
