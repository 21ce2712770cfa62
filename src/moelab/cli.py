"""The ``moelab`` command line: parse, look up, call.

    moelab list                         the named experiments
    moelab run NAME [--seeds N|S1,S2,..] [--set k=v ...] [--workers N] [--out DIR] [--show-config]
                    [--executor process|ray|submitit]   runs on a process pool, Ray or SLURM
    moelab report DIR                   markdown report with figures, CSV and JSON exports
    moelab reproduce [--out DIR]        Tables 3 and 4 with 3 seeds each, then the report
    moelab construct NAME [--set k=v]   a hand-built construction of a theorem, and its summary
    moelab export DIR [--format csv|json] [-o PATH]
    moelab demo                         train a 1-4-MoE on the circle task for a few seconds
    moelab analyze-hf DIR_OR_ARCH --text FILE [--out DIR]   routing analysis of a Hugging Face MoE model

Bad arguments end with ``moelab: error: ...`` and status 2; Ctrl-C ends a sweep with
``interrupted: N runs stored; rerun to resume`` and status 130.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

DEFAULT_OUT = "results"
REPRODUCED = ("table3", "table4")
#: Measured with the tables, as built and without the user's overrides (they set training), for the
#: hand-built network that Table 4's section sets beside the trained ones.
CONTRASTS = ("constructions",)


def _overrides(items: Sequence[str] | None) -> dict:
    from moelab.experiments.config import parse_override

    return dict(parse_override(item) for item in items or ())


def _list(args: argparse.Namespace) -> int:
    from moelab.experiments.registry import EXPERIMENTS

    for name, factory in EXPERIMENTS.items():
        exp = factory()
        n = len(exp.runs(seeds=1))
        print(f"{name:16s} {exp.title}")
        print(f"{'':16s} {n} run(s) per seed, {exp.seeds} seed(s) by default")
    return 0


def _seeds(text: str) -> int | list[int]:
    """``--seeds``: a count ("3") or a comma-separated list of seeds ("5,7,9")."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"--seeds must be a count (e.g. 3) or a comma-separated list of seeds "
                         f"(e.g. 5,7,9), got {text!r}") from None
    if "," not in text:
        if values[0] < 1:
            raise ValueError(f"--seeds count must be >= 1, got {values[0]}")
        return values[0]
    if any(v < 0 for v in values) or len(set(values)) != len(values):
        raise ValueError(f"--seeds list must hold distinct seeds >= 0, got {text!r}")
    return values


def _check_run_args(args: argparse.Namespace) -> None:
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {args.out!r} is a regular file, not a directory; results go to "
                         f"DIR/results.sqlite, so give a directory")


def _executor(args: argparse.Namespace):
    """The --executor's engine for the sweep (a context manager; None: the process pool)."""
    from moelab.experiments.executors import open_executor

    slurm = {"slurm_partition": args.slurm_partition, "timeout_min": args.slurm_time,
             "mem_gb": args.slurm_mem_gb}
    options = {"ray": {"--ray-address": args.ray_address},
               "submitit": {"--submitit-folder": args.submitit_folder,
                            "--submitit-local": args.submitit_local or None,
                            "--slurm-partition": args.slurm_partition,
                            "--slurm-time": args.slurm_time, "--slurm-mem-gb": args.slurm_mem_gb}}
    for engine, flags in options.items():
        stray = [flag for flag, value in flags.items() if value is not None]
        if engine != args.executor and stray:
            raise ValueError(f"{', '.join(stray)}: only for --executor {engine}, and the executor "
                             f"is {args.executor!r}")
    folder = args.submitit_folder
    if args.executor == "submitit" and folder is None:
        if not args.submitit_local:
            raise ValueError("--executor submitit needs --submitit-folder DIR, on a filesystem the "
                             "compute nodes share (or --submitit-local to test on this machine)")
        folder = str(Path(args.out) / "submitit")
    return open_executor(args.executor, workers=args.workers, ray_address=args.ray_address,
                         submitit_folder=folder,
                         submitit_cluster="local" if args.submitit_local else None,
                         submitit_parameters={k: v for k, v in slurm.items() if v is not None})


def _runs(exp, args: argparse.Namespace, overrides: dict) -> list:
    from moelab.experiments.resolve import resolve_runs

    seeds = _seeds(args.seeds) if isinstance(args.seeds, str) else args.seeds
    return _streamed(resolve_runs(exp, seeds, overrides), args)


def _streamed(runs: list, args: argparse.Namespace) -> list:
    """--tensorboard DIR / --jsonl DIR: each training run streams its logged rows to DIR/RUN_ID
    (a TensorBoard folder) or DIR/RUN_ID.jsonl; the run ids do not change."""
    import dataclasses

    if args.tensorboard is None and args.jsonl is None:
        return runs
    tb, jsonl = (None if d is None else Path(d).resolve() for d in (args.tensorboard, args.jsonl))
    out = []
    for run in runs:
        if hasattr(run, "train"):
            rid = run.run_id()
            run = dataclasses.replace(run, train=run.train.replace(
                tensorboard_dir=None if tb is None else str(tb / rid),
                jsonl_path=None if jsonl is None else str(jsonl / f"{rid}.jsonl")))
        out.append(run)
    return out


def _run(args: argparse.Namespace) -> int:
    from moelab.experiments.registry import get_experiment
    from moelab.experiments.schedule import run_all
    from moelab.experiments.store import ResultStore

    exp = get_experiment(args.name)
    overrides = _overrides(args.set)
    runs = _runs(exp, args, overrides)
    _note_unused(runs, overrides)
    if args.show_config:
        _show_config(exp, runs, overrides)
        return 0
    _check_run_args(args)
    engine = _executor(args)  # its options are checked before the store is created
    store = ResultStore(args.out)
    start = time.perf_counter()
    with engine as executor:
        done = run_all(runs, store, workers=args.workers, progress=not args.quiet,
                       executor=executor)
    skipped = len(runs) - len(done)
    print(f"{exp.name}: {len(done)} run(s) done, {skipped} already stored, "
          f"{time.perf_counter() - start:.1f} s -> {store.path}")
    return 0


def _note_unused(runs: list, overrides: dict) -> None:
    """Say which --set keys no run reads (a task or model field its kind ignores)."""
    from moelab.experiments.config import unused_keys

    ignored = [k for k in overrides if runs and all(unused_keys(r, [k]) for r in runs)]
    if ignored:
        print(f"note: --set {', '.join(ignored)}: not read by the task or model kind of any run "
              "here, so the runs (and their ids) do not change", file=sys.stderr)


def _show_config(exp, runs: list, overrides: dict) -> None:
    """The runs as resolved (each as its differences from the resolved base) and every --set key."""
    from moelab.experiments.config import apply_overrides, unused_keys
    from moelab.experiments.resolve import settable_keys

    base = apply_overrides(exp.base, overrides)
    base_values = {k.key: k.value for k in settable_keys(base)}
    print(f"{exp.name}: {len(runs)} run(s) — {exp.title}")
    print("runs (run id, seed, labels: settings that differ from the base below):")
    for run in runs:
        labels = " ".join(f"{k}={v}" for k, v in run.labels.items())
        diff = " ".join(f"{k.key}={k.value!r}" for k in settable_keys(run)
                        if k.key not in ("seed", "labels") and base_values[k.key] != k.value)
        print(f"  {run.run_id()}  seed={run.seed}  {labels}{'  ' if labels else ''}{diff}")
    axis_keys = {key: axis.name for axis in exp.axes for _, sets in axis.variants for key in sets
                 if not all(set(s) <= set(overrides) for _, s in axis.variants)}
    print("--set keys (type; value in this experiment's base, after --set; which axis varies it):")
    keys = [k for k in settable_keys(base) if k.key not in ("experiment", "labels")]
    width = max(len(k.key) for k in keys)
    for k in keys:
        note = f"   (varied by axis {axis_keys[k.key]!r})" if k.key in axis_keys else ""
        if runs and all(unused_keys(r, [k.key]) for r in runs):
            note += "   (not read by these runs' task or model kind)"
        print(f"  {k.key:<{width}}  {k.type}; {k.value!r}{note}")


def _report(args: argparse.Namespace) -> int:
    from moelab.reporting import write_report

    path = write_report(args.dir, experiments=args.experiment or None)
    print(f"report: {path}")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from moelab.experiments.registry import get_experiment
    from moelab.experiments.schedule import run_all
    from moelab.experiments.store import ResultStore
    from moelab.reporting import write_report

    _check_run_args(args)
    engine = _executor(args)  # its options are checked before the store is created
    store = ResultStore(args.out)
    overrides = _overrides(args.set)
    start = time.perf_counter()
    runs = []
    for name in REPRODUCED + CONTRASTS:
        exp = get_experiment(name)
        mine = _runs(exp, args, overrides) if name in REPRODUCED else exp.runs()
        print(f"{name}: {len(mine)} run(s) — {exp.title}", flush=True)
        runs += mine
    with engine as executor:  # one sweep, so the workers share all experiments' batches
        run_all(runs, store, workers=args.workers, progress=not args.quiet, executor=executor)
    path = write_report(args.out, experiments=list(REPRODUCED))
    print(f"reproduced {', '.join(REPRODUCED)} in {time.perf_counter() - start:.0f} s; "
          f"report: {path}")
    return 0


def _construct(args: argparse.Namespace) -> int:
    from moelab.constructions import CONSTRUCTIONS
    from moelab.experiments.execute import single_thread

    if args.name not in CONSTRUCTIONS:
        raise ValueError(f"unknown construction {args.name!r}; known: {sorted(CONSTRUCTIONS)}")
    build = CONSTRUCTIONS[args.name]
    kwargs = _overrides(args.set)
    sweep = None
    if args.sweep:
        if len(args.sweep) > 1:
            raise ValueError(f"--sweep given {len(args.sweep)} times ({', '.join(args.sweep)}); "
                             "sweep one argument at a time")
        sweep = _sweep(args.sweep[0])
        if sweep[0] in kwargs:
            raise ValueError(f"--set {sweep[0]}={kwargs[sweep[0]]!r} and --sweep {args.sweep[0]} "
                             f"both set {sweep[0]!r}; give one")
    _check_construction_keys(args.name, build, [*kwargs, *([sweep[0]] if sweep else [])])
    with single_thread():
        if sweep is None:
            print(build(**kwargs)[1])
            return 0
        key, values = sweep
        _print_sweep(args.name, key, values, [build(**{**kwargs, key: v})[1] for v in values])
    return 0


def _check_construction_keys(name: str, build, keys: Sequence[str]) -> None:
    """A ValueError naming each unknown keyword and listing the valid ones with their defaults."""
    import inspect

    params = {p.name: p for p in inspect.signature(build).parameters.values()
              if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    unknown = [k for k in keys if k not in params]
    if unknown:
        valid = ", ".join(f"{p.name}={p.default!r}" for p in params.values())
        raise ValueError(f"construct {name}: unknown argument(s) {unknown}; valid (with defaults): "
                         f"{valid}")


def _sweep(text: str) -> tuple[str, list]:
    from moelab.experiments.config import parse_value

    key, sep, rest = text.partition("=")
    values = [parse_value(v) for v in rest.split(",") if v.strip()]
    if not sep or not key.isidentifier() or len(values) < 2:
        raise ValueError(f"--sweep {text!r} must have the form KEY=v1,v2[,...] with two or more "
                         "values")
    return key, values


def _print_sweep(name: str, key: str, values: list, summaries: list) -> None:
    from moelab.analysis import fit_rate

    print(f"{name}: sup error and MSE against {key}")
    for v, s in zip(values, summaries, strict=True):
        print(f"  {key}={v!s:<6} sup {s.sup_error:.4g}   MSE {s.mse:.4g}   bound {s.bound:.4g}   "
              f"paths {s.paths_seen}/{s.paths_possible}   misrouted {s.misrouted:g}")
    sups = [s.sup_error for s in summaries]
    if key == "m":
        print(f"  fit of sup error ~ m^slope: {fit_rate(values, sups, predicted=-0.5)}")
        print("  (-0.5 is the theorems' worst-case exponent for C^kappa targets, kappa/d >= 1/2; "
              "exact interpolation of C^2 pieces gives -2)")
    else:
        print(f"  max/min of the sup error over {key}: {max(sups) / min(sups):.6f}")


def _export(args: argparse.Namespace) -> int:
    from moelab.experiments.store import ResultStore

    fmt = args.format
    if fmt is None:
        suffix = Path(args.output).suffix.lower() if args.output else ""
        fmt = "json" if suffix == ".json" else "csv"
    out = Path(args.output) if args.output else Path(args.dir) / f"results.{fmt}"
    if out.is_dir():
        raise ValueError(f"-o {str(out)!r} is a directory; give the path of the file to write")
    store = ResultStore(args.dir, create=False)  # read-only: the database is never changed
    path = store.export_csv(out) if fmt == "csv" else store.export_json(out)
    print(f"exported {len(store.runs())} run(s) to {path}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from moelab.experiments.demo import circle_demo
    from moelab.experiments.execute import single_thread

    with single_thread():
        r = circle_demo(D=args.D, steps=args.steps, lr=args.lr, seed=args.seed,
                        progress=not args.quiet)
    print(f"1-4-MoE on the unit circle in R^{r.D}: f(x) = sin(5 x1) + cos(3 x2), "
          f"{r.steps} Adam steps, batch 128, cosine lr from {args.lr:g}, data-dependent init")
    print(f"  parameters: {r.parameters} total, {r.active_parameters:.0f} active per token")
    print(f"  test MSE  {r.test_mse:.3e}   (paper, Table 3, 2000 steps: ~3.4e-4)")
    print(f"  test sup  {r.test_sup:.3e}")
    print(f"  tokens per expert on 4096 test points: {r.tokens_per_expert}")
    print(f"  trained in {r.train.seconds:.1f} s")
    return 0


def _add_common(p: argparse.ArgumentParser, *, workers_default: int) -> None:
    p.add_argument("--seeds", default=None, metavar="N|S1,S2,...",
                   help="a count of seeds per configuration (seeds 0 .. N-1; default: the "
                        "experiment's own, 3 for tables) or an explicit list, e.g. 5,7,9")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config field by dotted path, e.g. train.steps=500, "
                        "task.D=64, model.moe.experts.hidden=32 (repeatable; unknown keys and "
                        "wrong types are errors)")
    p.add_argument("--workers", type=int, default=workers_default,
                   help=f"parallel worker processes, >= 1 (default {workers_default})")
    p.add_argument("--out", default=DEFAULT_OUT,
                   help=f"output directory with results.sqlite (default ./{DEFAULT_OUT}); a "
                        "directory, created if needed")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--tensorboard", metavar="DIR",
                   help="stream each run's logged rows (loss, lr, router metrics) to TensorBoard "
                        "under DIR/RUN_ID (needs moelab[tensorboard])")
    p.add_argument("--jsonl", metavar="DIR",
                   help="stream each run's logged rows to DIR/RUN_ID.jsonl, one JSON object a line")
    engine = p.add_argument_group(
        "engines", "where the runs execute (docs/sweeps.md); this process alone writes the "
                   "results database, which must be on a local disk")
    engine.add_argument("--executor", choices=("process", "ray", "submitit"), default="process",
                        help="process: a pool of --workers processes here (default); ray: Ray "
                             "tasks on a local cluster of --workers CPUs or at --ray-address; "
                             "submitit: SLURM jobs (at most --workers in flight)")
    engine.add_argument("--ray-address", metavar="ADDR",
                        help="a running Ray cluster, e.g. auto or ray://head:10001 (default: "
                             "start a local one)")
    engine.add_argument("--submitit-folder", metavar="DIR",
                        help="submitit's job files and logs, on a filesystem the SLURM nodes "
                             "share (default with --submitit-local: OUT/submitit)")
    engine.add_argument("--submitit-local", action="store_true",
                        help="run submitit's jobs as processes on this machine (for testing)")
    engine.add_argument("--slurm-partition", metavar="NAME", help="SLURM partition of the jobs")
    engine.add_argument("--slurm-time", type=int, metavar="MIN",
                        help="time limit of each job in minutes (default 60)")
    engine.add_argument("--slurm-mem-gb", type=float, metavar="GB", help="memory of each job")


#: Each command's one-line help (``moelab --help``) and description (``moelab COMMAND --help``).
_COMMANDS = {
    "list": ("list the named experiments",
             "List the named experiments with their run counts."),
    "run": ("run a named experiment (skips runs already stored)",
            "Run a named experiment into OUT/results.sqlite. Finished runs are skipped, so an "
            "interrupted run resumes."),
    "report": ("write the markdown report of a results directory",
               "Write DIR/report.md with figures under DIR/figures, and DIR/results.csv and "
               "DIR/results.json."),
    "reproduce": ("reproduce Tables 3 and 4 (3 seeds each) and report",
                  "Run table3 and table4 (both recipes: the paper's budget and moelab's best) "
                  "with 3 seeds each, then write the report."),
    "construct": ("build a theorem's construction and print its summary",
                  "Build a hand-made network realising a theorem (no training) and print its "
                  "pieces, paths, parameters, bound and error."),
    "export": ("export a results database to CSV or JSON",
               "Write DIR/results.csv or DIR/results.json (or -o PATH). The database is opened "
               "read-only."),
    "demo": ("train a 1-4-MoE on the circle task and print its error",
             "Train the paper's 1-4-MoE on Experiment I's circle task."),
}
_RESULTS_DIR_HELP = "directory holding results.sqlite"


def _command(sub: argparse._SubParsersAction, name: str, func) -> argparse.ArgumentParser:
    """The parser of command ``name`` (its texts from :data:`_COMMANDS`), which calls ``func``."""
    help_, description = _COMMANDS[name]
    p = sub.add_parser(name, help=help_, description=description)
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moelab",
        description="Mixture-of-experts layers and the experiments of Wang & E (NeurIPS 2025).",
        epilog="Each command has its own --help.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _command(sub, "list", _list)

    p = _command(sub, "run", _run)
    p.add_argument("name", help="experiment name (see `moelab list`)")
    _add_common(p, workers_default=1)
    p.add_argument("--show-config", action="store_true",
                   help="print the resolved run configurations and every valid --set key with "
                        "its type and value, then exit without running")

    p = _command(sub, "report", _report)
    p.add_argument("dir", help=_RESULTS_DIR_HELP)
    p.add_argument("--experiment", action="append", help="only this experiment (repeatable)")

    p = _command(sub, "reproduce", _reproduce)
    _add_common(p, workers_default=os.cpu_count() or 1)
    p.set_defaults(seeds=3)  # after --seeds exists, so it replaces that argument's default

    p = _command(sub, "construct", _construct)
    p.add_argument("name", help="construction name, e.g. thm5.3, cor4.9, thm4.8, thm5.2")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="keyword argument of the construction, e.g. E=3, L=2, m=32")
    p.add_argument("--sweep", metavar="KEY=V1,V2,...", action="append",
                   help="build at each value of one argument and compare, e.g. m=4,8,16,32,64 "
                        "(fits the rate in m) or D=3,16,128,1024 (error against D)")

    p = _command(sub, "export", _export)
    p.add_argument("dir", help=_RESULTS_DIR_HELP)
    p.add_argument("--format", choices=("csv", "json"), default=None,
                   help="file format (default: json if -o ends in .json, else csv)")
    p.add_argument("-o", "--output", metavar="PATH",
                   help="file to write (default DIR/results.csv or DIR/results.json)")

    p = _command(sub, "demo", _demo)
    p.add_argument("--D", type=int, default=16, help="ambient dimension (default 16)")
    p.add_argument("--steps", type=int, default=1000, help="training steps (default 1000)")
    p.add_argument("--lr", type=float, default=1e-2, help="peak learning rate (default 1e-2)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    from moelab.interop.hf_cli import add_parser as add_analyze_hf

    add_analyze_hf(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _call(args)
    except KeyboardInterrupt as exc:
        # A sweep's RunsInterrupted says how many runs were stored; anywhere else, nothing was.
        print(str(exc) or "interrupted", file=sys.stderr)
        if argv is None:
            # Run as the program: end here. Every finished run is committed; the exit hooks of a
            # process pool whose workers were just stopped can only print tracebacks.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
        return 130


def _call(args: argparse.Namespace) -> int:
    from moelab.experiments.store import StoreError

    try:
        return args.func(args)
    except (ValueError, TypeError, StoreError) as exc:
        print(f"moelab: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
