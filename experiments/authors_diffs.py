"""Measure on digits what each of codash's choices that differ from the authors' code changes
(docs/reproduction.md, "Differences from the authors' code"), one function per difference:

    python -m experiments.authors_diffs cadence --seeds 0 1 2      # early stopping's eval every 50 or 200
    python -m experiments.authors_diffs restarts --runs grad_align  # the final attack's choice of restart
    python -m experiments.authors_diffs box                        # FGSM-RS's start kept in [0, 1] or not
    python -m experiments.authors_diffs tie                        # GradAlign's first gradient through clamp
    python -m experiments.authors_diffs elle --seeds 0 1 2         # the ELLE repository's step
    python -m experiments.authors_diffs pgd_start --seeds 0 1 2    # PGD-2 from a random or zero start

Seeds 0-4 unless --seeds; `restarts` trains FGSM and GradAlign λ = 4 unless --runs. Each run is the digits
preset setting (1-layer CNN, 16 filters, 690 iterations, eps 0.175 unless --eps); the authors' variant
swaps one piece of codash's step for theirs, written here from their code. One thread; prints one line
per run and a summary.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics

import torch
import torch.nn.functional as F

from trainer import loop
from trainer.attacks import fgsm, input_grad, pgd, project, unit_noise
from trainer.config import make_config
from trainer.data import load_dataset
from trainer.presets import DIGITS_CNN

GRAD_ALIGN = {"method": "fgsm", "grad_align_lambda": 4.0}  # the digits GradAlign preset
ELLE = {"method": "fgsm", "elle_lambda": 1024.0}  # the digits ELLE preset
PGD2 = {"method": "pgd", "pgd_steps": 2, "pgd_alpha": 0.5}  # the paper's PGD-2: step eps / 2


def run(fields: dict, keep_model: bool = False):
    """Train one digits run; its final event, and its last model when asked."""
    kept = {}
    total = []

    def after_step(k, model):
        if keep_model and k == total[0]:
            kept["model"] = copy.deepcopy(model).eval()

    def sink(event):
        if event["type"] == "config":
            total.append(event["total_iterations"])

    final = loop.train(make_config({**DIGITS_CNN, **fields}), sink, after_step=after_step)
    return final, kept.get("model")


@contextlib.contextmanager
def swapped(table: dict, key: str, value):
    """`table[key]` is `value` within (an adversary in loop.ADVERSARY, a function of loop), then as before."""
    before = table[key]
    table[key] = value
    try:
        yield
    finally:
        table[key] = before


def compare(variants: dict, fields: dict, seeds) -> None:
    """Train `fields` under each variant (a context that swaps in the authors' piece; None: codash's) and
    print CO and the final PGD accuracy (PGD-50-10 unless `fields` say) of the last and the early-stopped
    model, per run and per variant."""
    for name, context in variants.items():
        finals = []
        for seed in seeds:
            with context() if context else contextlib.nullcontext():
                final, _ = run({**fields, "seed": seed})
            finals.append(final)
            co_at, last, best = final["co_iteration"], final["last"]["pgd_acc"], final["best"]["pgd_acc"]
            print(f"{name} seed {seed}: CO {co_at}, final PGD last {last:.3f} best {best:.3f}", flush=True)
        co = sum(final["co_detected"] for final in finals)
        last = statistics.mean(final["last"]["pgd_acc"] for final in finals)
        best = statistics.mean(final["best"]["pgd_acc"] for final in finals)
        print(f"{name}: CO in {co}/{len(seeds)}, mean final PGD last {last:.3f}, early-stopped {best:.3f}")


# --- row 7: early stopping's cadence ---


def cadence(args):
    """FGSM with the eval (and so the early-stopping checkpoint) every 50 or every 200 iterations."""
    for every in (50, 200):
        best = []
        for seed in args.seeds:
            final, _ = run({"method": "fgsm", "eps": args.eps, "seed": seed, "eval_every": every})
            best.append(final["best"]["pgd_acc"])
            line = f"eval every {every} seed {seed}: best at {final['best_iteration']}, PGD {best[-1]:.3f}"
            print(line, flush=True)
        print(f"eval every {every}: early-stopped PGD-50-10 mean {statistics.mean(best):.3f}")


# --- row 8: the final attack's restart ---


def pgd_highest_loss(model, x, y, eps, steps, restarts, generator):
    """The authors' attack_pgd: per point the restart with the highest loss, misclassifying or not."""
    best = torch.zeros_like(x)
    best_loss = torch.full((len(x),), -float("inf"))
    for _ in range(restarts):
        delta = project(unit_noise(x, generator) * eps, x, eps)
        for _ in range(steps):
            delta = project(delta + eps / 4 * input_grad(model, x, y, delta).sign(), x, eps)
        with torch.no_grad():
            loss = F.cross_entropy(model(x + delta), y, reduction="none")
        better = loss > best_loss
        best[better], best_loss[better] = delta[better], loss[better]
    with torch.no_grad():
        return (model(x + best).argmax(1) == y).float().mean().item()


def restarts(args):
    """codash's PGD-50-10 (a misclassifying restart is kept) and theirs (the highest-loss one), same model."""
    data = load_dataset("digits", torch.device("cpu"))
    runs = {"fgsm": {"method": "fgsm"}, "grad_align": GRAD_ALIGN}
    rows = []
    for name in args.runs:
        for seed in args.seeds:
            final, model = run({**runs[name], "eps": args.eps, "seed": seed}, keep_model=True)
            generator = torch.Generator().manual_seed(seed)
            theirs = pgd_highest_loss(model, data.test_x, data.test_y, args.eps, 50, 10, generator)
            ours = final["last"]["pgd_acc"]
            rows.append(ours - theirs)
            print(f"{name} seed {seed}: PGD-50-10 codash {ours:.4f}, highest-loss {theirs:.4f}", flush=True)
    spread = f"range {min(rows):+.4f}..{max(rows):+.4f}"
    print(f"codash minus highest-loss: mean {statistics.mean(rows):+.4f}, {spread}")


# --- row 9: the box at FGSM-RS's random start ---


def authors_fgsm_rs(model, x, y, cfg, gen, ramp=None):
    """train.py's FGSM-RS: the start x + eta is not kept in [0, 1] (the model sees clamp(x + eta, 0, 1)),
    then delta = clamp(eta + alpha sign(grad), -eps, eps), then clamp(x + delta, 0, 1) - x."""
    eta = (unit_noise(x, gen) * cfg.eps).requires_grad_(True)
    loss = F.cross_entropy(model(torch.clamp(x + eta, 0, 1)), y)
    (grad,) = torch.autograd.grad(loss, eta)
    delta = torch.clamp(eta.detach() + cfg.alpha * cfg.eps * grad.sign(), -cfg.eps, cfg.eps)
    return (torch.clamp(x + delta, 0, 1) - x).detach(), grad


def box(args):
    variants = {"codash": None, "authors": lambda: swapped(loop.ADVERSARY, "fgsm_rs", authors_fgsm_rs)}
    compare(variants, {"method": "fgsm_rs", "eps": args.eps, "final_pgd_restarts": 1}, args.seeds)


# --- row 10: PyTorch's tie rule in GradAlign's first gradient ---


def authors_fgsm(model, x, y, cfg, gen, ramp=None):
    """train.py's FGSM: the gradient through their utils.clamp(x + 0, 0, 1) = max(min(x + 0, 1), 0), which
    today's PyTorch halves on pixels exactly at 0 or 1 (a tie of max or min). Its sign, so the FGSM step, is
    the formula's; it is also GradAlign's first gradient, and there it differs."""
    delta = torch.zeros_like(x, requires_grad=True)
    one, zero = torch.ones(1, device=x.device), torch.zeros(1, device=x.device)
    loss = F.cross_entropy(model(torch.max(torch.min(x + delta, one), zero)), y)
    (grad,) = torch.autograd.grad(loss, delta)
    return fgsm(model, x, y, cfg.eps, cfg.alpha * cfg.eps, grad=grad), grad


def tie(args):
    data = load_dataset("digits", torch.device("cpu"))
    at_edge = ((data.train_x == 0) | (data.train_x == 1)).float().mean().item()
    print(f"digits' training pixels exactly at 0 or 1: {at_edge:.1%}")
    variants = {"codash": None, "authors": lambda: swapped(loop.ADVERSARY, "fgsm", authors_fgsm)}
    compare(variants, {**GRAD_ALIGN, "eps": args.eps}, args.seeds)


# --- row 11: the ELLE repository's step ---


def elle_fgsm(model, x, y, cfg, gen, ramp=None):
    """The ELLE repository's FGSM (core/utils/train.py, defaults: no noise, no --clamp): x + alpha sign(grad),
    not kept in [0, 1]."""
    grad = input_grad(model, x, y)
    return cfg.alpha * cfg.eps * grad.sign(), grad


def stepping_twice(make_optimizer):
    """loop.make_optimizer whose optimizer's step() steps twice on the same gradients, as the ELLE repository
    calls optimizer.step() twice per batch."""

    def make(cfg, model, capturable=False):
        optimizer = make_optimizer(cfg, model, capturable)
        once = optimizer.step

        def twice(*args, **kwargs):
            once(*args, **kwargs)
            return once(*args, **kwargs)

        optimizer.step = twice
        return optimizer

    return make


@contextlib.contextmanager
def elle_repository():
    twice = stepping_twice(loop.make_optimizer)
    with swapped(loop.ADVERSARY, "fgsm", elle_fgsm), swapped(vars(loop), "make_optimizer", twice):
        yield


def elle(args):
    compare({"codash": None, "ELLE repository": elle_repository}, {**ELLE, "eps": args.eps}, args.seeds)


# --- PGD training's start ---


def pgd_zero_start(model, x, y, cfg, gen, ramp=None):
    """The authors' scripts' --attack_init=zero: PGD training starts at x."""
    alpha = cfg.pgd_alpha * cfg.eps
    return pgd(model, x, y, cfg.eps, alpha, cfg.pgd_steps, random_start=False, generator=gen), None


def pgd_start(args):
    variants = {"random start": None, "zero start": lambda: swapped(loop.ADVERSARY, "pgd", pgd_zero_start)}
    compare(variants, {**PGD2, "eps": args.eps}, args.seeds)


MEASURES = {
    "cadence": cadence,
    "restarts": restarts,
    "box": box,
    "tie": tie,
    "elle": elle,
    "pgd_start": pgd_start,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=list(MEASURES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--eps", type=float, default=DIGITS_CNN["eps"])
    parser.add_argument("--runs", nargs="+", choices=["fgsm", "grad_align"], default=["fgsm", "grad_align"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    MEASURES[args.what](args)


if __name__ == "__main__":
    main()
