"""The autopilot (`rescue: auto`): plain FGSM until the CO early warning, then GradAlign at λ(ε).

A run with `rescue` "auto" trains as its config says (FGSM or FGSM-RS, no regulariser) until its first
`co_warning` event (trainer.warning). Right after that evaluation it switches GradAlign on, at the weight a
Rescue fork would use (trainer.fork.rescue_lambda: λ(ε) for the run's data set and ε), for the rest of the
run, and emits one `rescue` event: the iteration after which it switched, the weight, and the step it now
trains with. GradAlign rather than ELLE: it is what Rescue forks with, and it has a λ(ε) rule on every data
set (ELLE's is fitted on digits only).

The switch is run state (RunState.rescued_at, in every checkpoint), so a run resumed, or forked with
`rescue` "auto", from any point after it trains with GradAlign from its first step. On the GPU the
captured training step was recorded without GradAlign: the switch records it again, once (trainer.fast),
and the `rescue` event's `step` says which step the run now uses.

The config the run was given is never changed (its config event still says `rescue: auto` and
`grad_align_lambda: 0`); the step reads `step_config`, which is that config with GradAlign's weight set.
"""

from __future__ import annotations

from trainer.config import RunConfig
from trainer.events import Event, make_event
from trainer.fast import CapturedStep, EagerStep, RunParts, training_step
from trainer.fork import rescue_lambda


def step_config(config: RunConfig, rescued_at: int | None) -> RunConfig:
    """What the training step runs: `config`, with GradAlign at λ(ε) once an autopilot run has switched."""
    if config.rescue != "auto" or rescued_at is None:
        return config
    return config.model_copy(update={"grad_align_lambda": rescue_lambda(config)})


def switches(config: RunConfig, rescued_at: int | None, iteration: int, total: int) -> bool:
    """Whether a run whose early warning has just fired after step `iteration` switches now: an autopilot
    run that has not switched yet and has steps left to train."""
    return config.rescue == "auto" and rescued_at is None and iteration < total


def switch(
    config: RunConfig, iteration: int, run: RunParts, path, example, lr_table, capture
) -> tuple[EagerStep | CapturedStep, Event]:
    """Turn GradAlign on in `run` after step `iteration`: the new step (recorded again on the fast path,
    from the run's state as it stands, which the recording leaves as it found it) and its `rescue` event.
    The caller takes `run.generator` afterwards (a failed recording hands the run a fresh one)."""
    run.cfg = step_config(config, iteration)
    stepper = training_step(path, run, example, lr_table, capture)
    event = make_event(
        "rescue",
        iteration=iteration,
        grad_align_lambda=run.cfg.grad_align_lambda,
        step=stepper.kind,
        step_reason=stepper.reason,
    )
    return stepper, event
