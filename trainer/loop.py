"""The training loop: one readable function that every front end (CLI, worker) runs.

Randomness: the model is initialised from `seed`; batch order is a function of (seed, epoch); attack noise
and augmentation come from one training generator saved in every checkpoint; evaluation has its own
generator. So a run resumed from any checkpoint continues exactly as if it had never stopped.
"""

from __future__ import annotations

import math
import platform
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import trainer
from trainer.attacks import (
    fgsm,
    fgsm_rs,
    input_grad,
    nfgsm,
    pgd,
    random_corner,
    to_corner,
    uniform_noise,
)
from trainer.autoattack import autoattack_accuracy
from trainer.checkpoint import (
    BEST_FILE,
    atomic_save,
    check_device,
    fork_state,
    load_checkpoint,
    model_for,
    save_eval,
    save_last,
    write_config,
)
from trainer.co import CODetector
from trainer.config import ConfigError, RunConfig
from trainer.data import DATA_SHAPES, Dataset, augment, load_dataset
from trainer.elle import AdaptiveLambda, elle_reg
from trainer.evaluate import accuracy, eval_metrics, pgd_accuracy
from trainer.events import Event, Sink, make_event
from trainer.fast import Capture, FastPath, RunParts, cudnn_benchmark, fast_path, training_step
from trainer.free import FreeAT
from trainer.gradalign import grad_align_reg
from trainer.probe import PROBE_FIELDS, DenseProbe
from trainer.rescue import step_config, switch, switches
from trainer.warning import COWarning
from trainer.window import WindowWeights

FINAL_PROGRESS_STEPS = 20  # final_progress events per model, at most, after the one as it begins
METRICS_FLUSH_S = 0.5  # metrics are read off the device in batches, at most this long after the step


def device_name(device: torch.device) -> str:
    """What ran the run, for its provenance: the GPU's model, or the CPU's."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"device: {name!r} requested but CUDA is not available on this machine; use cpu or auto"
        )
    return torch.device(name)


# --- each method's adversary: (model, x, y, config, generator, ramp) -> (delta, GradAlign's first gradient)
# The first gradient is the one the attack already took (FGSM's at x, FGSM-RS's at its random start), as in
# the authors' code; None: GradAlign takes it at x itself, double-backpropagated (trainer/gradalign.py).
# `ramp`: None, or the share of its size the attack has in the SVHN warm-up (trainer/ramp.py): a float on the
# eager step, a float64 device tensor on the captured one (read at every replay, as the lr).


def _step_size(cfg, ramp):
    """FGSM's step alpha * eps, ramped as train.py's fgsm_alpha: (r * alpha) * eps."""
    return cfg.alpha * cfg.eps if ramp is None else ramp * cfg.alpha * cfg.eps


def _radius(cfg, ramp):
    """PGD training's eps, ramped as train.py's eps_pgd_train (its step size stays pgd_alpha * eps)."""
    return cfg.eps if ramp is None else ramp * cfg.eps


def _standard(model, x, y, cfg, gen, ramp=None):
    return torch.zeros_like(x), None


def _fgsm(model, x, y, cfg, gen, ramp=None):
    grad = input_grad(model, x, y)  # reused by GradAlign: the paper's code computes it only once
    return fgsm(model, x, y, cfg.eps, _step_size(cfg, ramp), grad=grad), grad


def _fgsm_rs(model, x, y, cfg, gen, ramp=None):
    start = uniform_noise(x, cfg.eps, gen)
    grad = input_grad(model, x, y, start)  # GradAlign's first gradient, as in the authors' code: at the start
    return fgsm_rs(model, x, y, cfg.eps, _step_size(cfg, ramp), start=start, grad=grad), grad


def _pgd(model, x, y, cfg, gen, ramp=None):
    alpha = cfg.pgd_alpha * cfg.eps
    return pgd(model, x, y, _radius(cfg, ramp), alpha, cfg.pgd_steps, generator=gen), None


def _nfgsm(model, x, y, cfg, gen, ramp=None):
    return nfgsm(model, x, y, cfg.eps, cfg.nfgsm_k, cfg.alpha * cfg.eps, gen), None


def _pgd_corner(model, x, y, cfg, gen, ramp=None):
    delta = pgd(model, x, y, _radius(cfg, ramp), cfg.pgd_alpha * cfg.eps, cfg.pgd_steps, generator=gen)
    return to_corner(delta, x, cfg.eps), None  # the corner at the full eps, as train.py's


def _random_corner(model, x, y, cfg, gen, ramp=None):
    return random_corner(x, cfg.eps, gen), None


# Free AT is stateful (a replayed batch, a persistent delta): trainer.free.FreeAT, one per run.
ADVERSARY = {
    "standard": _standard,
    "fgsm": _fgsm,
    "fgsm_rs": _fgsm_rs,
    "pgd": _pgd,
    "nfgsm": _nfgsm,
    "pgd_corner": _pgd_corner,
    "random_corner": _random_corner,
}


def lr_at(cfg: RunConfig, iteration: int, total: int) -> float:
    """Learning rate for the step that follows `iteration` steps (a pure function: nothing to checkpoint)."""
    progress = (iteration + 1) / total
    if cfg.lr_schedule == "cyclic":
        # The authors' triangle 0 -> lr -> 0 in fractional epochs t, peaking at epoch `epochs * 2 // 5`
        # (integer division: np.interp(t, [0, epochs * 2 // 5, epochs], [0, lr, 0]) in their utils.py).
        t, peak = (iteration + 1) * cfg.epochs / total, cfg.epochs * 2 // 5
        return cfg.lr * (t / peak if t <= peak else (cfg.epochs - t) / (cfg.epochs - peak))
    if cfg.lr_schedule == "piecewise":
        return cfg.lr * (1.0 if progress < 0.5 else 0.1 if progress < 0.75 else 0.01)
    return cfg.lr


def lr_schedule(cfg: RunConfig, total: int, device: torch.device | str) -> torch.Tensor:
    """lr_at for every step as one float32 tensor on the device: what a captured step's optimizer reads."""
    return torch.tensor([lr_at(cfg, i, total) for i in range(total)], dtype=torch.float32, device=device)


def make_optimizer(cfg: RunConfig, model: nn.Module, capturable: bool = False) -> torch.optim.Optimizer:
    """The paper's optimizers. `capturable`: the variant whose step runs inside a CUDA graph and reads a
    device-tensor lr (Adam capturable=True; SGD fused, as its foreach variant reads the lr on the host)."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            **({"fused": True} if capturable else {}),
        )
    extra = {"capturable": True} if capturable else {}
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, **extra)


def load_optimizer(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Take a checkpoint's optimizer state (moments, step counts) and keep this run's own settings.

    `load_state_dict` replaces each param group with the saved one, so a fork that changes weight_decay or
    momentum, or whose optimizer differs in kind (fused, capturable), would train with its parent's. Each
    group's hyperparameters and flags are written back from the run's optimizer, and Adam's step counts laid
    out as its own would be: on the parameter's device when capturable or fused, else on the CPU.
    """
    own = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, settings in zip(optimizer.param_groups, own, strict=True):
        group.update(settings)
        on_device = group.get("capturable") or group.get("fused")
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].to(param.device if on_device else "cpu", torch.float32)


@dataclass
class RunState:
    """Everything that evolves during a run besides the model and optimizer."""

    iteration: int = 0
    detector: CODetector = field(default_factory=CODetector)
    warning: COWarning = field(default_factory=COWarning)  # the CO early warning (trainer.warning)
    rescued_at: int | None = None  # the step after which the autopilot turned GradAlign on (trainer.rescue)
    best_train_pgd_acc: float = -1.0
    best_iteration: int = 0
    train_s: float = 0.0
    train_images: int = 0


def train(
    config: RunConfig,
    sink: Sink | None = None,
    run_dir: str | Path | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: bool = False,
    capture: Capture | None = None,
    after_step: Callable[[int, nn.Module], None] | None = None,
) -> Event | None:
    """Run `config`, emitting events to `sink`; returns the final event, or None if stopped early.

    `capture` records the training step for replay (default: a CUDA graph on CUDA, nothing on the CPU).
    `after_step(iteration, model)` sees the model after every step (in train mode; it must leave it so and
    unchanged), for analyses finer than any event: experiments/onset_check evaluates every iteration with it.
    """
    if run_dir is None:
        with tempfile.TemporaryDirectory(prefix="codash-run-") as tmp:
            return train(config, sink, tmp, should_stop, resume, capture, after_step)
    emit = sink or (lambda event: None)
    run_dir = Path(run_dir)
    started = time.perf_counter()
    device = resolve_device(config.device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # streams and graph captures are made on the current device
    data = load_dataset(config.dataset, device)
    path = fast_path(config, device, capture)
    torch.manual_seed(config.seed)
    model = path.prepare(model_for(config).to(device))
    optimizer = make_optimizer(config, model, capturable=path.capturable_optimizer)
    gen = torch.Generator(device).manual_seed(config.seed)
    state = RunState()
    free = FreeAT(config) if config.method == "free" else None
    elle_a = AdaptiveLambda(config.elle_lambda, device) if config.elle_adaptive else None
    steps_per_epoch = max(1, len(data.train_x) // config.batch_size)
    total = min(config.epochs * steps_per_epoch, config.max_iters or math.inf)
    write_config(run_dir, config)

    if config.fork_iteration is not None and config.fork_iteration >= total:
        last = f"{config.fork_iteration} is not before this run's last iteration {total}"
        raise ConfigError({"fork_iteration": last})
    saved = load_checkpoint(run_dir, "last", device) if resume else None
    if saved is None and config.fork_iteration is not None:  # a fork's first start (or start over)
        saved = fork_state(run_dir, config, device)
    if saved is not None:
        check_device(saved, gen)
        model.load_state_dict(saved["model"])
        load_optimizer(optimizer, saved["optimizer"])
        gen.set_state(saved["generator"].cpu())
        torch.set_rng_state(saved["torch_rng"].cpu())
        saved_state = saved["state"]
        state = RunState(
            **{
                **saved_state,
                "detector": CODetector(**saved_state["detector"]),
                "warning": COWarning.from_state(saved_state.get("warning")),
            }
        )
        if free is not None and saved.get("free") is not None:
            free.load_state_dict(saved["free"])
        if elle_a is not None and saved.get("elle_a") is not None:
            elle_a.load_state_dict(saved["elle_a"])

    example = data.train_x[: config.batch_size], data.train_y[: config.batch_size]
    run = RunParts(step_config(config, state.rescued_at), model, optimizer, gen, free, elle_a, _train_step)
    lr_table = lr_schedule(config, total, device) if path.captures else None
    stepper = training_step(path, run, example, lr_table, capture)
    gen = run.generator  # a failed capture hands the run a fresh one (trainer.fast.fresh_generator)
    # The dense probe's points: the END of the training set, apart from the eval's training subset below.
    dense = slice(len(data.train_x) - config.probe_points, None)
    dense_probe = DenseProbe(
        model, config, path.layout(data.train_x[dense]), data.train_y[dense], path, capture
    )
    emit(
        make_event(
            "config",
            config=config.model_dump(mode="json"),
            device=str(device),
            torch_version=torch.__version__,
            codash_version=trainer.__version__,
            codash_commit=trainer.git_commit(),
            host=socket.gethostname(),
            device_name=device_name(device),
            start_iteration=state.iteration,
            total_iterations=total,
            step=stepper.kind,
            step_reason=stepper.reason,
            probe_step=dense_probe.kind,
            probe_step_reason=dense_probe.reason,
            precision="bf16" if path.bf16 else "fp32",
        )
    )

    def probed(event: Event, robust: list[float]) -> None:
        """A probe on its way out: the CO detector reads it, and its images' results, to place the onset."""
        state.detector.probe(event["iteration"], event["pgd_acc"], event["fgsm_acc"], robust)

    metrics = MetricsBuffer(emit, probed)
    replay = config.replays_onset(device.type)
    window = WindowWeights(model, config, lambda: path.prepare(model_for(config).to(device)))
    eval_x, eval_y = path.layout(data.test_x[: config.eval_points]), data.test_y[: config.eval_points]
    probe_x, probe_y = path.layout(data.train_x[: config.eval_points]), data.train_y[: config.eval_points]

    def resumable() -> dict:
        """Everything a run continues from exactly: in last.pt, and at each evaluation for forks."""
        return {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": gen.get_state(),
            "torch_rng": torch.get_rng_state(),  # unused by the built-in models; kept for user models
            "state": {
                **state.__dict__,
                "detector": state.detector.state_dict(),
                "warning": state.warning.state_dict(),
            },
            "free": free.state_dict() if free is not None else None,
            "elle_a": elle_a.state_dict() if elle_a is not None else None,
        }

    def save_checkpoint() -> None:
        save_last(resumable(), run_dir)
        emit(make_event("checkpoint", iteration=state.iteration, epoch=state.iteration / steps_per_epoch))

    def save_fork_point() -> None:
        """The state at this evaluation, with the best weights so far, for a fork to start from."""
        best = None if state.best_iteration == state.iteration else load_checkpoint(run_dir, "best")
        point = {**resumable(), "best_model": best and best["model"]}
        save_eval(point, run_dir, state.iteration, state.detector.fired_at)

    model.train()
    order = None
    segment_start = _clock(device)
    while state.iteration < total:
        epoch, step = divmod(state.iteration, steps_per_epoch)
        if order is None or step == 0:
            order = _epoch_order(len(data.train_x), config.seed, epoch, device)
        idx = order[step * config.batch_size : (step + 1) * config.batch_size]
        x, y = augment(config.dataset, data.train_x[idx], gen), data.train_y[idx]
        if free is not None:  # Free AT replays each minibatch for free_replays iterations
            x, y = free.batch(state.iteration, x, y)
        lr = lr_at(config, state.iteration, total)
        loss, acc, reg = stepper(x, y, state.iteration, lr)
        state.iteration += 1
        state.train_images += len(x)
        if config.probe_points and state.iteration % config.probe_every == 0:
            metrics.add_probe(state.iteration, dense_probe(state.iteration))
        metrics.add(state.iteration, state.iteration / steps_per_epoch, lr, loss, acc, reg)
        if replay and state.detector.fired_at is None:
            window.keep(state.iteration)
        if after_step is not None:
            after_step(state.iteration, model)

        at_eval = state.iteration % config.eval_every == 0 or state.iteration == total
        at_epoch_end = state.iteration % steps_per_epoch == 0 or state.iteration == total
        stopping = should_stop is not None and should_stop()
        if at_eval or at_epoch_end or stopping:
            state.train_s += _clock(device) - segment_start
            metrics.flush()
            if at_eval:
                with path.autocast():
                    warned = _evaluate(
                        model,
                        config,
                        state,
                        run_dir,
                        emit,
                        (eval_x, eval_y),
                        (probe_x, probe_y),
                        path,
                        window,
                    )
                if warned and switches(config, state.rescued_at, state.iteration, total):  # the autopilot
                    state.rescued_at = state.iteration
                    stepper, event = switch(config, state.iteration, run, path, example, lr_table, capture)
                    gen = run.generator
                    emit(event)
                save_fork_point()
            if at_epoch_end or stopping:
                save_checkpoint()
            if stopping and state.iteration < total:
                return None
            segment_start = _clock(device)

    return _final(model, config, data, state, run_dir, emit, path, started)


def _train_step(
    model,
    optimizer,
    cfg,
    x,
    y,
    gen,
    free: FreeAT | None = None,
    elle_a: AdaptiveLambda | None = None,
    ramp: float | torch.Tensor | None = None,
):
    delta, first_grad = (free or ADVERSARY[cfg.method])(model, x, y, cfg, gen, ramp)
    logits = model(x + delta)
    loss = F.cross_entropy(logits, y)
    inputs = None  # everything that requires a gradient
    reg = torch.zeros((), device=x.device)
    objective = loss
    if cfg.uses_grad_align:
        align = grad_align_reg(model, x, y, cfg.eps, first_grad, gen, cfg.grad_align_fraction)
        reg, objective = reg + align, objective + cfg.grad_align_lambda * align
        # Name what needs a gradient, or autograd also differentiates the double-backprop graph with
        # respect to its random input point: ~10% of a GradAlign step on CPU (docs/benchmarks.md).
        inputs = [*model.parameters(), *([delta] if free is not None else [])]
    if cfg.uses_elle:
        linearity = elle_reg(model, x, y, cfg.eps, gen)
        weight = cfg.elle_lambda if elle_a is None else elle_a.value
        reg, objective = reg + linearity, objective + weight * linearity
    optimizer.zero_grad(set_to_none=True)
    objective.backward(inputs=inputs)
    optimizer.step()
    if free is not None:  # the same backward pass left the input gradient in delta.grad
        free.update(delta, x, ramp)
    if elle_a is not None:
        elle_a.update(linearity.detach())
    return loss.detach(), (logits.argmax(1) == y).float().mean(), reg.detach()


def _evaluate(
    model, cfg, state: RunState, run_dir: Path, emit: Sink, test, probe, path: FastPath, window: WindowWeights
) -> bool:
    """One live evaluation and what follows from it (early warning, CO, the best checkpoint); whether the
    early warning fired at it."""
    model.eval()
    seed = cfg.seed + state.iteration
    values, inside = eval_metrics(
        model, *test, *probe, cfg.eps, cfg.eval_pgd_steps, seed=seed, batch=path.eval_batch
    )
    model.train()
    emit(make_event("eval", iteration=state.iteration, **values))
    emit(make_event("snapshot", iteration=state.iteration, **inside))
    warned = state.warning.update(state.iteration, values, co_fired=state.detector.fired_at is not None)
    if warned is not None:
        emit(make_event("co_warning", **warned))
    co = state.detector.update(
        state.iteration,
        values["pgd_acc"],
        values["fgsm_acc"],
        lambda first, last: window.rows(first, last, *test, path),
    )
    if co is not None:
        window.release()
        emit(make_event("co", **co))
    if values["train_pgd_acc"] > state.best_train_pgd_acc:  # the paper's early stopping
        state.best_train_pgd_acc, state.best_iteration = values["train_pgd_acc"], state.iteration
        atomic_save({"model": model.state_dict(), "iteration": state.iteration}, run_dir / BEST_FILE)
    return warned is not None


def _final(
    model, cfg, data: Dataset, state: RunState, run_dir: Path, emit: Sink, path: FastPath, started
) -> Event:
    """Clean accuracy and PGD-50-10 on the first final_eval_points test images (the authors' n_final_eval),
    last and best; clean accuracy on the whole test set too (`clean_acc_all`).

    attack_points says how many test images the attacks saw (final_eval_points caps it at the test set).

    With `autoattack` on, AutoAttack (standard, L-inf) also runs on the same points (None when off).
    """
    points = min(cfg.final_eval_points, len(data.test_x))
    best_state = load_checkpoint(run_dir, "best", path.device)
    same = best_state is None or best_state["iteration"] == state.iteration  # no need to attack it twice
    begun = time.perf_counter()

    def reporter(which: str) -> Callable[[int], None]:
        """The live view's bar for one model (last, then best): as it begins, then each time another
        1/FINAL_PROGRESS_STEPS of its points is attacked, and at the end."""
        shown = -1  # the last step emitted

        def progress(done: int) -> None:
            nonlocal shown
            step = done * FINAL_PROGRESS_STEPS // points if points else FINAL_PROGRESS_STEPS
            if step > shown:
                shown = step
                elapsed = time.perf_counter() - begun
                fields = {"model": which, "models": 1 if same else 2, "done": done, "points": points}
                emit(make_event("final_progress", **fields, elapsed_s=elapsed))

        progress(0)
        return progress

    results = {"last": _final_metrics(model, cfg, data, path, points, reporter("last"))}
    if same:
        results["best"] = dict(results["last"])
    else:
        model.load_state_dict(best_state["model"])
        results["best"] = _final_metrics(model, cfg, data, path, points, reporter("best"))
    final = make_event(
        "final",
        co_detected=state.detector.fired_at is not None,
        co_iteration=state.detector.fired_at,
        last=results["last"],
        best=results["best"],
        best_iteration=state.best_iteration,
        attack_points=points,
        train_images_per_s=state.train_images / state.train_s if state.train_s > 0 else None,
        wall_s=time.perf_counter() - started,
        iterations=state.iteration,
    )
    emit(final)
    return final


def _final_metrics(
    model, cfg, data: Dataset, path: FastPath, n: int, progress: Callable[[int], None]
) -> dict[str, float | None]:
    """On a GPU in bf16 and large batches, each PGD restart attacking only the points no earlier restart
    fooled (the same measure, a fraction of the work once a model is broken); on the CPU as always.
    `progress(done)`: points attacked so far (evaluate.pgd_accuracy), `n` once the attack is over."""
    model.eval()
    robust = auto = None
    test_x = path.layout(data.test_x)
    if n:
        generator = torch.Generator(path.device).manual_seed(cfg.seed)
        xs, ys = test_x[:n], data.test_y[:n]
        with path.autocast(), cudnn_benchmark(False):
            robust = pgd_accuracy(
                model,
                xs,
                ys,
                cfg.eps,
                cfg.final_pgd_steps,
                cfg.final_pgd_restarts,
                generator,
                batch=path.eval_batch,
                skip_fooled=path.device.type == "cuda",
                progress=progress,
            )
        if cfg.autoattack:
            auto = autoattack_accuracy(model, xs, ys, cfg.eps, DATA_SHAPES[cfg.dataset][2], cfg.seed)
    with path.autocast():
        clean_all = accuracy(model, test_x, data.test_y, path.eval_batch)
        clean = accuracy(model, test_x[:n], data.test_y[:n], path.eval_batch) if n else clean_all
    return {"clean_acc": clean, "clean_acc_all": clean_all, "pgd_acc": robust, "autoattack_acc": auto}


def _epoch_order(n: int, seed: int, epoch: int, device: torch.device) -> torch.Tensor:
    """Batch order of an epoch as a pure function of (seed, epoch), so resuming mid-epoch needs no state."""
    generator = torch.Generator(device).manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=generator, device=device)


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class MetricsBuffer:
    """Per-iteration metrics and dense probes kept on the device and read back in batches: no host sync
    every step. `flush` emits them in iteration order, each probe handed to `probed` (with its images' PGD
    results, which no event carries) just before it is emitted."""

    def __init__(self, emit: Sink, probed: Callable[[Event, list[float]], None]):
        self.emit, self.probed = emit, probed
        self.rows: list[tuple] = []
        self.probes: list[tuple[int, torch.Tensor]] = []
        self.last_flush = time.monotonic()

    def add_probe(self, iteration: int, values: torch.Tensor) -> None:
        self.probes.append((iteration, values))

    def add(self, iteration, epoch, lr, loss, acc, reg) -> None:
        self.rows.append((iteration, epoch, lr, torch.stack([loss.float(), acc.float(), reg.float()])))
        if time.monotonic() - self.last_flush > METRICS_FLUSH_S:
            self.flush()

    def flush(self) -> None:
        probes = self._probe_events()
        if self.rows:
            values = torch.stack([row[3] for row in self.rows]).tolist()
            for (iteration, epoch, lr, _), (loss, acc, reg) in zip(self.rows, values, strict=True):
                self.emit(
                    make_event(
                        "metrics",
                        iteration=iteration,
                        epoch=epoch,
                        lr=lr,
                        train_loss=loss,
                        train_acc=acc,
                        reg=reg,
                    )
                )
                while probes and probes[0][0]["iteration"] <= iteration:
                    self._emit_probe(*probes.pop(0))
            self.rows.clear()
        for probe in probes:
            self._emit_probe(*probe)
        self.last_flush = time.monotonic()

    def _emit_probe(self, event: Event, robust: list[float]) -> None:
        self.probed(event, robust)
        self.emit(event)

    def _probe_events(self) -> list[tuple[Event, list[float]]]:
        """(probe event, its images' PGD results) for each probe kept, in order."""
        if not self.probes:
            return []
        values = torch.stack([row[1] for row in self.probes]).tolist()
        fields = len(PROBE_FIELDS)
        events = [
            (
                make_event(
                    "probe", iteration=iteration, **dict(zip(PROBE_FIELDS, row[:fields], strict=True))
                ),
                row[fields:],
            )
            for (iteration, _), row in zip(self.probes, values, strict=True)
        ]
        self.probes.clear()
        return events
