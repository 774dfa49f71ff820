"""The training loop: one readable function that every front end (CLI, worker) runs.

Randomness: the model is initialised from `seed`; batch order is a function of (seed, epoch); attack noise
and augmentation come from one training generator saved in every checkpoint; evaluation has its own
generator. So a run resumed from any checkpoint continues exactly as if it had never stopped.
"""

from __future__ import annotations

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
from trainer.data import augment, load_dataset
from trainer.elle import AdaptiveLambda, elle_reg
from trainer.evaluate import eval_metrics
from trainer.events import Event, Sink, make_event
from trainer.fast import Capture, FastPath, RunParts, fast_path, training_step
from trainer.final import Stopped, final_evaluation
from trainer.free import FreeAT
from trainer.gradalign import grad_align_reg
from trainer.methods import METHODS
from trainer.metrics import MetricsBuffer
from trainer.optim import load_optimizer, lr_at, lr_schedule, make_optimizer
from trainer.probe import DenseProbe
from trainer.rescue import step_config, switch, switches
from trainer.warning import COWarning
from trainer.window import WindowWeights


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


# Each method's adversary, named by its entry in trainer.methods. Free AT is stateful (a replayed batch, a
# persistent delta): trainer.free.FreeAT, one per run.
ADVERSARY = {name: globals()[method.adversary] for name, method in METHODS.items() if method.adversary}


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

    def state_dict(self) -> dict:
        """Plain values for a checkpoint (loaded with weights_only)."""
        return {**self.__dict__, "detector": self.detector.state_dict(), "warning": self.warning.state_dict()}

    @classmethod
    def from_state(cls, state: dict) -> RunState:
        return cls(
            **{
                **state,
                "detector": CODetector(**state["detector"]),
                "warning": COWarning.from_state(state.get("warning")),
            }
        )


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
    steps_per_epoch = config.steps_per_epoch(len(data.train_x))
    total = config.total_iterations(len(data.train_x))
    write_config(run_dir, config)

    if config.fork_iteration is not None and config.fork_iteration >= total:
        last = f"{config.fork_iteration} is not before this run's last iteration {total}"
        raise ConfigError({"fork_iteration": last})
    saved = load_checkpoint(run_dir, "last", device) if resume else None
    if saved is None and config.fork_iteration is not None:  # a fork's first start (or start over)
        saved = fork_state(run_dir, config, device)
    if saved is not None:
        state = _restore(saved, model, optimizer, gen, free, elle_a)

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
    emit(_config_event(config, device, path, state.iteration, total, stepper, dense_probe))

    def probed(event: Event, robust: list[float]) -> None:
        """A probe on its way out: the CO detector reads it, and its images' results, to place the onset."""
        state.detector.probe(event["iteration"], event["pgd_acc"], event["fgsm_acc"], robust)

    metrics = MetricsBuffer(emit, probed)
    replay = config.replays_onset(device.type)
    window = WindowWeights(model, config, lambda: path.prepare(model_for(config).to(device)))
    eval_x, eval_y = path.layout(data.test_x[: config.eval_points]), data.test_y[: config.eval_points]
    # The early-stopping subset: the first eval_points training images, whose PGD accuracy (train_pgd_acc)
    # picks the best model, as in the authors' code.
    stop_x, stop_y = path.layout(data.train_x[: config.eval_points]), data.train_y[: config.eval_points]

    def resumable() -> dict:
        """Everything a run continues from exactly: in last.pt, and at each evaluation for forks."""
        return {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": gen.get_state(),
            "torch_rng": torch.get_rng_state(),  # unused by the built-in models; kept for user models
            "state": state.state_dict(),
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
                        (stop_x, stop_y),
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

    try:
        return final_evaluation(model, config, data, state, run_dir, emit, path, started, should_stop)
    except Stopped:
        return None


def _restore(
    saved: dict, model, optimizer, gen, free: FreeAT | None, elle_a: AdaptiveLambda | None
) -> RunState:
    """Load a checkpoint (a resumed run's last, or a fork's starting point) into the run's parts."""
    check_device(saved, gen)
    model.load_state_dict(saved["model"])
    load_optimizer(optimizer, saved["optimizer"])
    gen.set_state(saved["generator"].cpu())
    torch.set_rng_state(saved["torch_rng"].cpu())
    if free is not None and saved.get("free") is not None:
        free.load_state_dict(saved["free"])
    if elle_a is not None and saved.get("elle_a") is not None:
        elle_a.load_state_dict(saved["elle_a"])
    return RunState.from_state(saved["state"])


def _config_event(
    config, device, path: FastPath, start: int, total: int, stepper, probe: DenseProbe
) -> Event:
    """The event each attempt opens with: what runs, where, from which iteration, and how."""
    return make_event(
        "config",
        config=config.model_dump(mode="json"),
        device=str(device),
        torch_version=torch.__version__,
        codash_version=trainer.__version__,
        codash_commit=trainer.git_commit(),
        host=socket.gethostname(),
        device_name=device_name(device),
        start_iteration=start,
        total_iterations=total,
        step=stepper.kind,
        step_reason=stepper.reason,
        probe_step=probe.kind,
        probe_step_reason=probe.reason,
        precision="bf16" if path.bf16 else "fp32",
    )


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
    model, cfg, state: RunState, run_dir: Path, emit: Sink, test, stop, path: FastPath, window: WindowWeights
) -> bool:
    """One live evaluation and what follows from it, in order: its events, the early warning, CO (the
    detector says it fired and over which window, the window's weights are replayed, the onset placed),
    the early-stopped best model. Returns whether the early warning fired at it. The dense probes up to
    this iteration reached the detector before (the loop flushes them first)."""
    model.eval()
    seed = cfg.seed + state.iteration
    values, inside = eval_metrics(
        model, *test, *stop, cfg.eps, cfg.eval_pgd_steps, seed=seed, batch=path.eval_batch
    )
    model.train()
    emit(make_event("eval", iteration=state.iteration, **values))
    emit(make_event("snapshot", iteration=state.iteration, **inside))
    warned = state.warning.update(state.iteration, values, co_fired=state.detector.fired_at is not None)
    if warned is not None:
        emit(make_event("co_warning", **warned))
    collapse = state.detector.update(state.iteration, values["pgd_acc"], values["fgsm_acc"])
    if collapse is not None:
        replayed = window.rows(collapse.start, collapse.confirmed_at, *test, path)
        window.release()
        emit(make_event("co", **state.detector.place(collapse, replayed)))
    if values["train_pgd_acc"] > state.best_train_pgd_acc:  # the paper's early stopping
        state.best_train_pgd_acc, state.best_iteration = values["train_pgd_acc"], state.iteration
        atomic_save({"model": model.state_dict(), "iteration": state.iteration}, run_dir / BEST_FILE)
    return warned is not None


def _epoch_order(n: int, seed: int, epoch: int, device: torch.device) -> torch.Tensor:
    """Batch order of an epoch as a pure function of (seed, epoch), so resuming mid-epoch needs no state."""
    generator = torch.Generator(device).manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=generator, device=device)


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
