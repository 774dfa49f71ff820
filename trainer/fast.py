"""The GPU fast path: the whole training step recorded once as a CUDA graph and replayed every iteration.

An eager training step on a GPU is bound by kernel launches, not arithmetic (docs/benchmarks.md: a
PreAct ResNet-18 FGSM step at batch 128 runs 3.6x faster on an H200 once captured, bf16 and
channels_last). So on CUDA a run, unless its config turns `fast_path` off:

- trains and evaluates under bf16 autocast (`amp` "auto" or "on"), with the model and the inputs in
  channels_last and cudnn.benchmark on;
- records attack, loss, backward and optimizer step in one `torch.cuda.CUDAGraph` after a warm-up on a
  side stream (PyTorch's rule for capture), and each iteration copies the batch into static input buffers
  and the lr into a device tensor the optimizer reads (Adam with capturable=True, SGD fused), and in the
  SVHN warm-up (trainer/ramp.py) the attack's share of its size into another, then replays;
- registers the training generator with the graph, so every replay draws fresh noise from it and a
  resumed run, which restores that generator, draws the same numbers as an uninterrupted one.

The warm-up and the capture change the weights, optimizer state, batch-norm statistics and generator;
all of it is put back in place (the graph holds the tensors' addresses), so the first replay starts
exactly where the run stood. If the capture fails, or a first replay leaves the weights as they were
(an empty graph), the run goes on with the eager step, from a fresh generator in the state the failed
capture was handed, and its config event says why: the fast path never fails a run. On the CPU the step
is the eager one (reason "cpu").
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from trainer.config import RunConfig
from trainer.events import one_line
from trainer.methods import METHODS
from trainer.ramp import ramp_at, ramp_table, warmup_steps

WARMUP_STEPS = 3  # eager steps on a side stream before capture (PyTorch's whole-network example uses 3)

# loss, accuracy and the regularisers' unweighted terms summed (GradAlign's 1 - cos, ELLE's linearity error)
StepResult = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
# The loop's step function (trainer.loop._train_step):
# (model, optimizer, config, x, y, generator, free, elle_a, ramp) -> StepResult, where `free` is Free AT's
# state (trainer.free; None on a captured step), `elle_a` ELLE-A's λ (trainer.elle) and `ramp` the attack's
# share of its size in the SVHN warm-up (trainer.ramp; None outside it).
StepFunction = Callable[..., StepResult]
# Records `step` (a function of no arguments returning tensors) and returns a function that replays it.
Capture = Callable[[Callable[[], torch.Tensor], torch.Generator], Callable[[], torch.Tensor]]


def cuda_graph(step: Callable[[], torch.Tensor], generator: torch.Generator) -> Callable[[], torch.Tensor]:
    """Warm up `step` on a side stream, record it as one CUDA graph, and return its replay.

    Both streams are on the generator's device (the run's): a graph captured on another device's stream
    records nothing of this one's work. The side stream is also the capture stream, as torch.cuda.graph's
    own is made once per process, on whichever device was current then.
    """
    device = generator.device
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(WARMUP_STEPS):
            step()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    graph.register_generator_state(generator)  # else its noise would be frozen at its capture-time values
    with torch.cuda.graph(graph, stream=side):
        out = step()

    def replay() -> torch.Tensor:
        graph.replay()
        return out

    return replay


@dataclass(frozen=True)
class FastPath:
    """How a run uses its device: precision, memory layout and whether its step is captured."""

    device: torch.device
    bf16: bool
    channels_last: bool
    refusal: str | None  # why the step is not captured; None: capture is tried

    @property
    def captures(self) -> bool:
        return self.refusal is None

    @property
    def capturable_optimizer(self) -> bool:
        """Adam capturable / SGD fused, which read a device-tensor lr inside a graph (CUDA only)."""
        return self.captures and self.device.type == "cuda"

    def autocast(self, capturing: bool = False, reloading: bool = False):
        """bf16 autocast when the run uses it. Autocast keeps its bf16 copy of each weight, keyed by the
        tensor, until the outermost context exits: so it must not cache inside a capture, nor where weights
        are loaded in place between forwards (`reloading`), which would then run on the first weights."""
        if not self.bf16:
            return contextlib.nullcontext()
        cache = not (capturing or reloading)
        return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=cache)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """An input batch in the memory layout the model uses."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def prepare(self, model: nn.Module) -> nn.Module:
        """The model in this path's layout (before its optimizer is built: the parameters change layout)."""
        if self.channels_last:
            torch.backends.cudnn.benchmark = True
            model = model.to(memory_format=torch.channels_last)
        return model

    @property
    def eval_batch(self) -> int:
        """Points per evaluation batch: large on a GPU (one batch for 1,000 final points and more)."""
        return 4096 if self.device.type == "cuda" else 1024


def fast_path(cfg: RunConfig, device: torch.device, capture: Capture | None) -> FastPath:
    """Resolve `amp` and `fast_path` for this device; `capture` None means the device's own (none on CPU)."""
    cuda = device.type == "cuda"
    if not cfg.fast_path:
        refusal = "fast_path off"
    elif METHODS[cfg.method].refusal:  # a method whose step cannot be recorded (trainer.methods)
        refusal = METHODS[cfg.method].refusal
    elif not cuda and capture is None:
        refusal = "cpu"
    else:
        refusal = None
    return FastPath(device, cfg.bf16(device.type), cuda and cfg.fast_path, refusal)


class EagerStep:
    """The step run as eager PyTorch, called once per iteration with the host's lr (and the warm-up's share,
    a float): on the CPU, for a method or config that refuses capture, and after a failed capture."""

    kind = "eager"

    def __init__(self, path: FastPath, run: RunParts, reason: str):
        self.path, self.run, self.reason = path, run, reason
        self.warmup = warmup_steps(run.cfg)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, iteration: int, lr: float) -> StepResult:
        run = self.run
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        ramp = ramp_at(iteration, self.warmup) if self.warmup else None
        with self.path.autocast():
            return run.step(
                run.model,
                run.optimizer,
                run.cfg,
                self.path.layout(x),
                y,
                run.generator,
                run.free,
                run.elle_a,
                ramp,
            )


@dataclass
class RunParts:
    """What a training step reads and changes."""

    cfg: RunConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    free: object | None
    elle_a: object | None  # trainer.elle.AdaptiveLambda of an ELLE-A run
    step: StepFunction


class CapturedStep:
    """The step replayed from a graph: static x, y and lr buffers are filled, then the graph runs.

    In the SVHN warm-up (trainer/ramp.py) the attack's size changes at every step: a graph replays the
    numbers it was recorded with, so the step reads the share from a static float64 tensor, filled from the
    warm-up's table before each replay as the lr is (and 1 after it). Recording the step only once the
    warm-up is over would leave its first 5 epochs to the slower eager step.

    Its kind is the capture's name: "cuda_graph" for the CUDA graph.
    """

    reason = None

    def __init__(self, path: FastPath, run: RunParts, x: torch.Tensor, y: torch.Tensor, lr_table, capture):
        self.kind = capture.__name__
        self.x, self.y = path.layout(x).clone(), y.clone()
        self.lr_table = lr_table
        self.lr = lr_table[0].clone()
        for group in run.optimizer.param_groups:
            group["lr"] = self.lr  # the optimizer reads the lr from this tensor at every replay
        warmup = warmup_steps(run.cfg)
        self.ramp_table = ramp_table(warmup, self.x.device) if warmup else None
        self.ramp = self.ramp_table[0].clone() if warmup else None  # the step reads the share from it

        def step() -> torch.Tensor:
            with path.autocast(capturing=True):
                loss, acc, reg = run.step(
                    run.model,
                    run.optimizer,
                    run.cfg,
                    self.x,
                    self.y,
                    run.generator,
                    None,
                    run.elle_a,
                    self.ramp,
                )
            return torch.stack([loss.float(), acc.float(), reg.float()])

        extra = run.elle_a.state_dict().values() if run.elle_a is not None else ()
        restore = keep(run.model, run.optimizer, extra)
        generator_state = run.generator.get_state()
        try:
            self.replay = capture(step, run.generator)
            restore(keep_tensors=True)
            run.generator.set_state(generator_state)
            check_replay(self.replay, run.model)
        except BaseException:
            restore(keep_tensors=False)
            run.generator = fresh_generator(run.generator, generator_state)
            raise
        restore(keep_tensors=True)
        run.generator.set_state(generator_state)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, iteration: int, lr: float) -> StepResult:
        self.x.copy_(x)
        self.y.copy_(y)
        self.lr.copy_(self.lr_table[iteration])
        if self.ramp is not None:
            self.ramp.copy_(self.ramp_table[min(iteration, len(self.ramp_table) - 1)])
        loss, acc, reg = self.replay().clone()  # the graph's outputs are overwritten by the next replay
        return loss, acc, reg


def training_step(
    path: FastPath, run: RunParts, example: tuple[torch.Tensor, torch.Tensor], lr_table, capture
) -> EagerStep | CapturedStep:
    """The run's step: captured when the path allows it and the capture works, else eager with a reason."""
    if not path.captures:
        return EagerStep(path, run, path.refusal or "")
    try:
        return CapturedStep(path, run, *example, lr_table, capture or cuda_graph)
    except Exception as exc:  # any failure of the fast path leaves the run to the eager step (and generator)
        for param in run.model.parameters():
            param.grad = None  # the failed capture's gradients may live in the graph's memory pool
        return EagerStep(path, run, f"capture failed: {one_line(exc, 300)}")


def check_replay(replay: Callable[[], torch.Tensor], model: nn.Module) -> None:
    """Replay a recorded step once and raise unless it changed the weights: an empty graph (recorded on
    another device's stream) replays as nothing, and the run would stand still without an error."""
    before = [param.detach().clone() for param in model.parameters()]
    replay()
    if all(torch.equal(param, old) for param, old in zip(model.parameters(), before, strict=True)):
        raise RuntimeError("a replay of the captured step left the weights unchanged (an empty graph?)")


def keep(model: nn.Module, optimizer: torch.optim.Optimizer, extra=()):
    """Remember the run's tensors (and the `extra` tensors a step updates, e.g. ELLE-A's lambda); the returned
    function puts it back after warm-up and capture.

    Tensors are restored in place, since a captured graph reads and writes them at fixed addresses.
    Optimizer state that the warm-up created (a fresh run has none before its first step) is zeroed when
    the graph keeps it, which is that state's value at creation for Adam (step, moments) and gives the same
    update for SGD momentum (0.9 * 0 + g = g), and dropped otherwise, so that the eager step creates it.
    """
    tensors = [*model.parameters(), *model.buffers(), *extra]
    tensors += [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    saved = [(tensor, tensor.detach().clone()) for tensor in tensors]
    had_state = set(optimizer.state)

    def restore(keep_tensors: bool) -> None:
        with torch.no_grad():
            for tensor, value in saved:
                tensor.copy_(value)
            for param in [p for p in optimizer.state if p not in had_state]:
                if keep_tensors:
                    for value in optimizer.state[param].values():
                        if torch.is_tensor(value):
                            value.zero_()
                else:
                    del optimizer.state[param]

    return restore


def fresh_generator(generator: torch.Generator, state: torch.Tensor) -> torch.Generator:
    """A new generator on `generator`'s device, in `state`, to replace one a failed capture saw: once
    registered with a graph whose capture did not end, a generator may stay flagged as capturing (on torch
    releases that register it eagerly), and its next eager draw would raise."""
    fresh = torch.Generator(generator.device)
    fresh.set_state(state)
    return fresh


@contextlib.contextmanager
def cudnn_benchmark(on: bool) -> Iterator[None]:
    """cudnn.benchmark set to `on` within, as it was after: the final attack turns it off, since each
    restart attacks a smaller subset and cuDNN would tune its algorithms anew for every batch size."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def warm_up(device: torch.device) -> None:
    """Do what every run's first steps do once per process, so that a worker's first run starts as quickly
    as its second: make an optimizer (torch.optim imports torch._dynamo then, ~2 s on a CPU) and, on CUDA,
    initialise CUDA and cuDNN (a small bf16 channels_last convolution, forward and backward)."""
    torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = True
    conv = nn.Conv2d(3, 16, 3, padding=1).to(device, memory_format=torch.channels_last)
    x = torch.rand(8, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        conv(x.requires_grad_(True)).float().square().mean().backward()
    torch.cuda.synchronize(device)
