"""Speed benchmark (not a test): codash against a plain PyTorch loop, and time to CO through the job system.

    python -m bench [--device cpu|cuda] [--quick] [--out bench-results.json]     (or: codash bench ...)

For each model × method (cnn on digits, PreAct ResNet-18 on CIFAR-shaped synthetic data; standard, fgsm,
fgsm_rs, pgd-10, fgsm+GradAlign): training images/s and ms/iteration of trainer.train() and of the plain
loop in bench/plain_loop.py (alternating in this process, median of repeats), their ratio, the
GradAlign/FGSM time ratio, evaluation's share of wall time at the default eval_every, and time to CO for
the digits FGSM preset through the embedded Redis and a worker process; on CUDA also the captured plain
loop, the final evaluation's time and 1, 2 and 4 concurrent runs on the GPU. Prints a table, writes JSON,
and says which targets (docs/benchmarks.md) were met. Performance targets live here, never in the tests.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.timer import now, timed  # noqa: E402
from bench.workloads import METHODS, workloads  # noqa: E402  (torch is imported only to run)

CIFAR_TRAIN = 50_000  # images in a CIFAR-10 epoch, for the GPU epoch-time targets
TARGETS = {
    "codash_over_plain_min": 0.95,
    "gradalign_over_fgsm_max": 2.0,
    "cpu_digits_time_to_co_s": 20.0,
    # Targets on an H100/H200 (batch 128): FGSM >= 25,000 img/s, GradAlign >= 4,000 img/s, PGD-10 >= 3x 1,530.
    "cuda_resnet_fgsm_epoch_s": 2.0,
    "cuda_resnet_gradalign_epoch_s": 12.5,
    "cuda_resnet_pgd10_images_per_s": 4590.0,
    "cuda_final_eval_last_and_best_s": 4.0,
    "cuda_eval_overhead_percent": 5.0,
    "cuda_cifar_time_to_co_s": 60.0,
}


def build_parser() -> argparse.ArgumentParser:
    suites = "; ".join(f"{name}: {what}" for name, (_, what) in SUITES.items())
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__.splitlines()[0],
        epilog=f"Other benchmarks: python -m bench NAME [--help], NAME one of: {suites}.",
    )
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if available, else cpu")
    parser.add_argument("--quick", action="store_true", help="few steps, one repeat: a smoke run")
    parser.add_argument("--out", type=Path, default=Path("bench-results.json"), help="JSON file to write")
    parser.add_argument("--models", nargs="+", choices=("cnn", "preact_resnet18"), help="default: both")
    parser.add_argument("--methods", nargs="+", choices=tuple(METHODS), help="default: all five")
    parser.add_argument("--no-co", action="store_true", help="skip time to CO (it starts Redis and a worker)")
    parser.add_argument("--no-extras", action="store_true", help="skip the GradAlign trade-off and variants")
    parser.add_argument("--threads", type=int, help="torch threads in this process (default: torch's choice)")
    parser.add_argument(
        "--no-concurrent", action="store_true", help="CUDA: skip the 1, 2 and 4 concurrent runs on the GPU"
    )


def device_info(device: str) -> dict[str, Any]:
    import torch

    info = {
        "device": device,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    else:
        info["cpu"] = cpu_model()
    return info


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def data_for(workload, device: str):
    from bench.workloads import synthetic_cifar
    from trainer.data import load_dataset

    if workload.config["dataset"] == "digits":
        return load_dataset("digits", device)
    return synthetic_cifar(device, workload.train_points)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from bench import throughput

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench: --device cuda but CUDA is not available on this machine")
    started = now()
    results: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "command": "python -m bench " + " ".join(sys.argv[1:]),
        "quick": args.quick,
        "machine": device_info(device),
        "load_average_start": _load(),
        "throughput": [],
        "gradalign_over_fgsm": {},
        "eval_overhead": {},
    }

    def save() -> None:  # after each part, so that a run cut short (a GPU session's limit) keeps its figures
        args.out.write_text(json.dumps(results, indent=2) + "\n")

    if device == "cuda":  # first: a time-limited GPU lease gets the new figures even if cut short
        results["final_eval"] = throughput.final_eval_time(device)
        print(_final_eval_line(results["final_eval"]), flush=True)
        if not args.no_concurrent:
            from bench.concurrent import concurrent

            results["concurrent"] = concurrent(device, iters=100 if args.quick else 300)
        save()
    methods = args.methods or list(METHODS)
    chosen = [
        w for w in workloads(device, args.quick) if args.models is None or w.config["model"] in args.models
    ]
    for workload in chosen:
        data = data_for(workload, device)
        for method in methods:
            row = throughput.compare(workload, method, data, device)
            row.update(workload=workload.name, method=method)
            if device == "cuda" and workload.config["model"] == "preact_resnet18":
                row["cifar_epoch_s"] = CIFAR_TRAIN / row["codash"]["images_per_s"]
            results["throughput"].append(row)
            print(_row_line(row), flush=True)
            save()
        rows = {row["method"]: row for row in results["throughput"] if row["workload"] == workload.name}
        half = ", GradAlign on half the batch"
        for variant, suffix in (("fgsm+gradalign", ""), ("fgsm+gradalign/2", half)):
            if "fgsm" in rows and variant in rows:
                results["gradalign_over_fgsm"][workload.name + suffix] = {
                    who: rows[variant][who]["ms_per_iter"] / rows["fgsm"][who]["ms_per_iter"]
                    for who in ("codash", "plain")
                }
        if "fgsm" in rows:
            points = 32 if device == "cpu" and workload.config["model"] == "preact_resnet18" else None
            results["eval_overhead"][workload.name] = throughput.eval_overhead(
                workload, data, device, rows["fgsm"]["codash"]["ms_per_iter"], points=points
            )
        del data
    if not args.no_co:
        from bench.time_to_co import time_to_co

        results["time_to_co"] = time_to_co(device, runs=1 if args.quick else 2)
    if not args.no_extras and not args.quick:
        results["gradalign_tradeoff"] = gradalign_tradeoff(device)
        results["variants"] = variants(device)

    results["load_average_end"] = _load()
    results["targets"] = judge(results, device)
    results["bench_s"] = now() - started
    return results


def gradalign_tradeoff(device: str) -> dict[str, Any]:
    from bench.gradalign_cost import tradeoff

    return tradeoff(device)


def variants(device: str) -> dict[str, Any]:
    """Fast paths measured on the plain loop: torch.compile (cnn, fgsm) and channels_last (ResNet, fgsm)."""
    from bench import plain_loop
    from bench.workloads import synthetic_cifar
    from trainer.data import load_dataset

    out: dict[str, Any] = {}
    digits = load_dataset("digits", device)
    common = {"batch_size": 64, "eps": 0.175, "amp": device == "cuda"}
    compile_s: list[float] = []
    with timed(compile_s, device):
        plain_loop.time_training(
            "cnn", "fgsm", digits.train_x, digits.train_y, iters=3, compile_model=True, **common
        )
    medians = _alternating(
        {"eager": {}, "compiled": {"compile_model": True}},
        "cnn",
        digits.train_x,
        digits.train_y,
        iters=100,
        **common,
    )
    out["compile_cnn_fgsm"] = {"first_call_s": compile_s[0], **medians}
    cifar = synthetic_cifar(device, 512 if device == "cpu" else 10_000)
    batch, iters = (16, 3) if device == "cpu" else (128, 40)
    resnet = {
        "batch_size": batch,
        "eps": 8 / 255,
        "optimizer": "sgd",
        "lr": 0.3,
        "cyclic": True,
        "augment": True,
        "amp": device == "cuda",
    }
    out["channels_last_resnet_fgsm"] = _alternating(
        {"contiguous": {}, "channels_last": {"channels_last": True}},
        "preact_resnet18",
        cifar.train_x,
        cifar.train_y,
        iters=iters,
        **resnet,
    )
    return out


def _alternating(options: dict[str, dict[str, Any]], model: str, *data, **common) -> dict[str, float]:
    """Median images/s of the plain loop's FGSM under each named set of options, 3 alternating rounds."""
    from bench import plain_loop

    rates: dict[str, list[float]] = {name: [] for name in options}
    for _ in range(3):
        for name, extra in options.items():
            rates[name].append(
                plain_loop.time_training(model, "fgsm", *data, **common, **extra)["images_per_s"]
            )
    return {f"{name}_images_per_s": statistics.median(values) for name, values in rates.items()}


def judge(results: dict[str, Any], device: str) -> dict[str, Any]:
    """Each target: its value, the limit, and met / missed / open (not measurable on this device)."""
    verdicts: dict[str, Any] = {}
    if results["throughput"]:
        worst = min(results["throughput"], key=lambda row: row["ratio"])
        verdicts["codash_over_plain"] = _verdict(
            worst["ratio"],
            TARGETS["codash_over_plain_min"],
            at_least=True,
            where=f"{worst['workload']} {worst['method']}",
        )
    for name, ratios in results["gradalign_over_fgsm"].items():
        verdicts[f"gradalign_over_fgsm {name}"] = _verdict(
            ratios["codash"], TARGETS["gradalign_over_fgsm_max"]
        )
    co = results.get("time_to_co")
    if co:
        seconds = co["runs"][0]["co_s"]
        limit = TARGETS["cpu_digits_time_to_co_s"]
        verdicts["digits_time_to_co_s"] = _verdict(seconds, limit) if device == "cpu" else {"value": seconds}
    if device == "cuda":
        for row in results["throughput"]:
            if "cifar_epoch_s" in row and row["method"] in ("fgsm", "fgsm+gradalign"):
                key = (
                    "cuda_resnet_fgsm_epoch_s" if row["method"] == "fgsm" else "cuda_resnet_gradalign_epoch_s"
                )
                verdicts[key] = _verdict(row["cifar_epoch_s"], TARGETS[key])
            if "cifar_epoch_s" in row and row["method"] == "pgd-10":
                verdicts["cuda_resnet_pgd10_images_per_s"] = _verdict(
                    row["codash"]["images_per_s"], TARGETS["cuda_resnet_pgd10_images_per_s"], at_least=True
                )
        if "final_eval" in results:  # the last and the best model, each at the most work a model can cost
            verdicts["cuda_final_eval_last_and_best_s"] = _verdict(
                2 * results["final_eval"]["every_restart_s"], TARGETS["cuda_final_eval_last_and_best_s"]
            )
        for name, value in results["eval_overhead"].items():
            verdicts[f"cuda_eval_overhead_percent {name}"] = _verdict(
                value["percent_of_wall"], TARGETS["cuda_eval_overhead_percent"]
            )
    else:
        for key in [key for key in TARGETS if key.startswith("cuda_") and key != "cuda_cifar_time_to_co_s"]:
            verdicts[key] = {
                "status": "open",
                "why": "needs a CUDA device: run python -m bench --device cuda",
            }
    verdicts["cuda_cifar_time_to_co_s"] = {"status": "open", "why": "needs a GPU and the real CIFAR-10 files"}
    return verdicts


def _verdict(value: float | None, limit: float, at_least: bool = False, where: str | None = None) -> dict:
    if value is None:
        return {"value": None, "limit": limit, "status": "missed"}
    met = value >= limit if at_least else value <= limit
    return {
        "value": value,
        "limit": limit,
        "status": "met" if met else "missed",
        **({"where": where} if where else {}),
    }


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


HEADER = (
    f"{'model/data':30s} {'method':15s} {'batch':>5s} {'codash img/s':>12s} {'ms/it':>9s} "
    f"{'plain img/s':>12s} {'ms/it':>9s} {'codash/plain':>12s} {'plain graph img/s':>17s}"
)


def _row_line(row: dict[str, Any]) -> str:
    """One table row; on CUDA codash/plain is against the captured plain loop (the last column)."""
    c, p = row["codash"], row["plain"]
    graph = f"{row['plain_graph']['images_per_s']:17.1f}" if "plain_graph" in row else f"{'-':>17s}"
    return (
        f"{row['workload']:30s} {row['method']:15s} {row['batch_size']:5d} {c['images_per_s']:12.1f} "
        f"{c['ms_per_iter']:9.2f} {p['images_per_s']:12.1f} {p['ms_per_iter']:9.2f} {row['ratio']:12.3f} "
        f"{graph}"
    )


def report(results: dict[str, Any]) -> str:
    lines = [f"device: {results['machine']}", HEADER, *(_row_line(row) for row in results["throughput"])]
    for name, ratios in results["gradalign_over_fgsm"].items():
        lines.append(
            f"GradAlign/FGSM time, {name}: codash {ratios['codash']:.2f}x, plain {ratios['plain']:.2f}x"
        )
    for name, value in results["eval_overhead"].items():
        lines.append(
            f"eval overhead, {name}: {value['eval_s'] * 1000:.0f} ms per eval of "
            f"{value['eval_points']} points every {value['eval_every']} steps = "
            f"{value['percent_of_wall']:.1f} % of wall time"
        )
    for index, run in enumerate((results.get("time_to_co") or {}).get("runs", [])):
        lines.append(
            f"time to CO, digits FGSM preset, run {index + 1}: submit -> co event {_s(run['co_s'])} "
            f"(run started {_s(run.get('start_s'))}; CO at iteration {run['co_iteration']}, "
            f"confirmed at {run['confirmed_at']})"
        )
    for fraction, row in (results.get("gradalign_tradeoff") or {}).get("summary", {}).items():
        lines.append(
            f"GradAlign random-point batch x{fraction}: {row['train_images_per_s']:.0f} img/s, mean reg "
            f"{row['mean_reg']:.4f}, CO in {row['co_runs']}/{row['runs']} runs, "
            f"final PGD acc {row['final_pgd_acc']:.3f}"
        )
    if results.get("final_eval"):
        lines.append(_final_eval_line(results["final_eval"]))
    for count, row in (results.get("concurrent") or {}).items():
        if isinstance(row, dict):
            lines.append(
                f"{count} concurrent ResNet-18 FGSM runs: {row['total_images_per_s']:,.0f} img/s in all "
                f"({row['over_one']:.2f}x one run)"
            )
    for name, values in (results.get("variants") or {}).items():
        lines.append(f"variant {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in values.items()))
    lines.append("targets:")
    for name, verdict in results["targets"].items():
        lines.append(f"  {name}: {json.dumps(verdict)}")
    return "\n".join(lines)


def _final_eval_line(final: dict[str, Any]) -> str:
    return (
        f"final evaluation ({final['attack']} on {final['points']} points + clean, {final['precision']}), "
        f"one model: {final['as_run_s']:.2f} s as run, {final['every_restart_s']:.2f} s with every restart"
    )


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


# `python -m bench NAME [ARGS]`: the benchmarks of one part, each a module with its own flags (`--help`).
SUITES = {
    "app": ("bench.app_bench", "the dashboard: page render time with many runs, event-to-chart latency"),
    "listing": ("bench.listing", "api.list_runs with many runs stored"),
    "stream": ("bench.stream_bench", "streaming events to Redis: training overhead and reader latency"),
    "probe": ("bench.probe_cost", "the dense probe's cost per iteration"),
    "regulariser": ("bench.regulariser_cost", "a step with GradAlign and with ELLE against plain FGSM"),
    "concurrent": ("bench.concurrent", "1, 2 and 4 concurrent runs on one GPU"),
}


def main(argv: list[str] | None = None) -> int:
    """The speed benchmark, or with a suite's name first, that suite (SUITES)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SUITES:
        module = importlib.import_module(SUITES[argv[0]][0])
        return module.main(argv[1:]) or 0
    args = build_parser().parse_args(argv)
    return run_and_report(args)


def run_and_report(args: argparse.Namespace) -> int:
    print(HEADER, flush=True)
    results = run(args)
    print(report(results))
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
