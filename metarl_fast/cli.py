"""The ``metarl-fast`` command line: train, eval, bench, plot, info.

User mistakes (bad option values, a missing or corrupt checkpoint, an unknown task name) end with
one line on stderr and a non-zero exit code, never a traceback.
"""
import argparse
import dataclasses
import json
import os
import platform
import sys
import time

EXIT_USAGE = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """A mistake of the user's: reported as one line, exit code 2."""


def _info(args):
    import numpy as np

    import metarl_fast
    from metarl_fast import _backend

    try:
        from metarl_fast import _build_info as build
        compile_args = " ".join(build.COMPILE_ARGS)
        openmp = "yes" if build.OPENMP else "no (built without OpenMP)"
        built_numpy = build.BUILT_WITH_NUMPY
    except ImportError:
        compile_args, openmp, built_numpy = "(not built)", "unknown", "(not built)"
    rows = [
        ("metarl_fast", metarl_fast.__version__),
        ("backend", metarl_fast.get_backend()),
        ("cython extension", "available" if _backend.is_available("cython") else "NOT BUILT"),
        ("compiler flags", compile_args),
        ("OpenMP", openmp),
        ("numpy", f"{np.__version__} (built against {built_numpy})"),
        ("python", f"{platform.python_version()} ({platform.machine()}, {platform.system()})"),
        ("cpu cores", str(os.cpu_count())),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


# ------------------------------------------------------------------------------------- train
_TRAIN_OPTIONS = [
    # (flag, config field, type, help)
    ("--tasks", "tasks", str, "tasks: gridnav, tabular-mdp, bandits, chain, point-nav, cartpoles (continuous "
                              "observations: an MLP policy), file:PATH.npz (your tasks' arrays), "
                              "gym:ENV_ID (a Gymnasium toy-text env, e.g. gym:FrozenLake-v1) or MODULE:NAME "
                              "(a TaskDistribution, or a function returning one, in your module)"),
    ("--env-kwargs", "env_kwargs", str, "gym: and MODULE:NAME tasks: keyword arguments as a JSON object, e.g. "
                                        "'{\"map_name\": \"8x8\"}'; a list draws one value per task"),
    ("--policy", "policy", str, "auto (tabular for tabular tasks, mlp for point-nav / cartpoles), tabular or mlp"),
    ("--hidden", "hidden", str, "mlp policy: hidden widths, e.g. 64,64 ('' for a linear policy)"),
    ("--activation", "activation", str, "mlp policy: tanh or relu"),
    ("--eval-episodes", "eval_episodes", int, "point-nav / cartpoles: episodes per held-out task per measured return"),
    ("--grid-size", "grid_size", int, "GridNavigation side length"),
    ("--n-states", "n_states", int, "states (tabular-mdp, chain)"),
    ("--n-actions", "n_actions", int, "actions (tabular-mdp, chain)"),
    ("--n-arms", "n_arms", int, "arms (bandits)"),
    ("--horizon", "horizon", int, "episode length (0: the family's default)"),
    ("--algo", "algo", str, "maml, fomaml, reptile, multitask, in-context (hand-made posterior features) or "
                            "rl2 (a GRU policy trained by PPO over whole trials)"),
    ("--estimator", "estimator", str, "sampled, or exact (dynamic programming on the task models)"),
    ("--inner-estimator", "inner_estimator", str, "advantages of the inner steps: reinforce or actor-critic"),
    ("--baseline", "baseline", str, "per-step baseline of sampled gradients: leave-one-out (unbiased), mean (biased), none"),
    ("--hessian-data", "hessian_data", str, "MAML's Hessian-vector products on fresh episodes (unbiased) or shared"),
    ("--held-out-goals", "held_out_goals", int, "gridnav: withhold this many goal cells from training and test on them"),
    ("--meta-batch", "meta_batch", int, "tasks per meta-iteration"),
    ("--inner-steps", "inner_steps", int, "adaptation steps K"),
    ("--inner-lr", "inner_lr", float, "adaptation step size alpha"),
    ("--meta-lr", "meta_lr", float, "outer step size"),
    ("--meta-optimizer", "meta_optimizer", str, "adam or sgd"),
    ("--episodes", "episodes_per_task", int, "episodes per task per gradient estimate"),
    ("--trial-episodes", "trial_episodes", int, "in-context learners on MDP tasks: episodes per trial"),
    ("--rl2-hidden", "rl2_hidden", int, "rl2: the GRU's hidden size"),
    ("--rl2-lr", "rl2_lr", float, "rl2: Adam's learning rate"),
    ("--ppo-epochs", "ppo_epochs", int, "rl2: PPO epochs over each iteration's trials"),
    ("--ppo-minibatches", "ppo_minibatches", int, "rl2: minibatches of whole trials per PPO epoch"),
    ("--ppo-clip", "ppo_clip", float, "rl2: PPO's ratio clip epsilon"),
    ("--gae-lambda", "gae_lambda", float, "rl2: GAE lambda (advantages across the episodes of a trial)"),
    ("--entropy-coef", "entropy_coef", float, "rl2: entropy bonus coefficient"),
    ("--gamma", "gamma", float, "discount"),
    ("--iterations", "iterations", int, "meta-iterations"),
    ("--time-budget", "time_budget", float, "stop after this many seconds (0: none)"),
    ("--target", "target", float, "stop when the held-out post-adaptation return reaches this"),
    ("--eval-every", "eval_every", int, "evaluate on held-out tasks every N iterations"),
    ("--eval-tasks", "eval_tasks", int, "number of held-out test tasks"),
    ("--checkpoint-every", "checkpoint_every", int, "write checkpoint.npz every N iterations (and at the end)"),
    ("--replay-capacity", "replay_capacity", int, "with --replay: transitions the shared pool holds"),
    ("--replay-batch", "replay_batch", int, "with --replay: stored episodes replayed per task in each estimate"),
    ("--replay-order", "replay_order", str, "with --replay: uniform (whole episodes, with replacement), sequences (whole episodes in time order) or windows (--replay-window steps, returns by V-trace; with --inner-estimator actor-critic)"),
    ("--replay-window", "replay_window", int, "with --replay-order windows: steps per replayed window"),
    ("--rho-bar", "rho_bar", float, "with --replay: truncate each importance ratio at this (0: untruncated)"),
    ("--replay-ratio", "replay_ratio", int, "with --replay: meta-updates per iteration's environment steps (extra ones from the pool alone; first-order algorithms)"),
    ("--seed", "seed", int, "seed of the whole run"),
    ("--eval-seed", "eval_seed", int, "seed of the held-out test tasks"),
]


# on/off settings of train (compare takes them too)
_TRAIN_FLAGS = [
    ("--replay", "replay", "store every rollout in a replay pool shared across tasks and add each task's stored "
                           "episodes (in-context learners: stored trials) to its gradient estimates "
                           "(importance-weighted)"),
    ("--normalize-returns", "normalize_returns", "divide each task's rewards by the std of its episodes' returns: "
                                                 "--inner-lr in standardised units, whatever the scale of the "
                                                 "rewards (gradient-based algorithms, sampled estimator)"),
]


def _config_from_args(args, **overrides):
    from metarl_fast.trainer import TrainConfig

    config = TrainConfig.from_toml(args.config) if args.config else TrainConfig()
    changes = {field: getattr(args, field) for _, field, _, _ in _TRAIN_OPTIONS
               if getattr(args, field, None) is not None}
    changes.update(overrides)
    if changes.get("tasks", "").startswith("file:"):  # the run records where the file is, from anywhere
        changes["tasks"] = "file:" + os.path.abspath(changes["tasks"][len("file:"):])
    for _, field, _ in _TRAIN_FLAGS:
        if getattr(args, field, False):
            changes[field] = True
    config = dataclasses.replace(config, **changes)
    if args.backend:
        config = dataclasses.replace(config, backend=args.backend)
    return config.validate()


def _backend(args, config):
    """--backend, else METARL_FAST_BACKEND, else the configuration's (its default: cython)."""
    return args.backend or os.environ.get("METARL_FAST_BACKEND", "").strip().lower() or config.backend


def _train(args):
    import metarl_fast
    from metarl_fast.trainer import MetaTrainer, format_table

    if args.resume:
        if not args.out:
            raise UserError("--resume needs --out RUN_DIR (the run to continue)")
        # settings that do not change what is trained may be given (--iterations N extends a
        # finished run); the others come from the checkpoint
        given = [flag for flag, field, _, _ in _TRAIN_OPTIONS if getattr(args, field, None) is not None
                 and field not in MetaTrainer._NOT_TRAINING]
        given += [flag for flag, field, _ in _TRAIN_FLAGS if getattr(args, field, False)]
        if given or args.config:
            raise UserError(f"--resume continues the run with the settings in its checkpoint; "
                            f"drop {', '.join(given + (['--config'] if args.config else []))}")
        config, _ = MetaTrainer.read_checkpoint(os.path.join(args.out, "checkpoint.npz"))
        config = dataclasses.replace(config, **{field: getattr(args, field) for _, field, _, _ in _TRAIN_OPTIONS
                                                if getattr(args, field, None) is not None})
        config.validate()
    else:
        config = _config_from_args(args)
    metarl_fast.set_backend(_backend(args, config))
    out = args.out or new_run_dir()
    if not args.resume and os.path.exists(os.path.join(out, "checkpoint.npz")):
        raise UserError(f"{out} already holds a run; use --resume to continue it or another --out")
    trainer = MetaTrainer(config, out)
    if not args.json:
        from metarl_fast.progress import fit_to_terminal

        print(fit_to_terminal(f"metarl-fast train: {config.algo} on {config.tasks}, {config.iterations} "
                              f"meta-iterations, meta-batch {config.meta_batch}, backend "
                              f"{metarl_fast.get_backend()}, seed {config.seed} -> {out}", sys.stderr),
              file=sys.stderr)
    evaluation = trainer.run(resume=args.resume)
    if evaluation is None:
        if trainer.abandoned_iteration is not None:
            what = f"interrupted during iteration {trainer.abandoned_iteration} (left unfinished, nothing of it kept)"
        else:
            what = f"interrupted after iteration {trainer.iteration}"
        if trainer.checkpoint_iteration is None:
            print(f"metarl-fast: {what}; no checkpoint was written yet", file=sys.stderr)
        else:
            print(f"metarl-fast: {what}; the checkpoint in {out} holds iteration "
                  f"{trainer.checkpoint_iteration}: continue with `metarl-fast train --resume --out {out}`",
                  file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.json:
        print(json.dumps(evaluation, indent=2, sort_keys=True))
    else:
        print(f"\nheld-out evaluation on {evaluation['n_tasks']} test tasks "
              f"(stopped by {evaluation['stopped_by']} after {evaluation['iterations']} iterations):")
        goals = _goals_line(evaluation)
        if goals:
            print(goals)
        print(format_table(evaluation))
        totals = {}
        with open(os.path.join(out, "timings.jsonl")) as fh:
            for line in fh:
                for key, value in json.loads(line).items():
                    if key.endswith("_s") and key != "steps_per_s":
                        totals[key[:-2]] = totals.get(key[:-2], 0.0) + value
        print("\ntime per phase (s): " + ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in sorted(totals.items())))
        if trainer.wall_time is not None:
            w = trainer.wall_time
            parts = ", ".join(f"{k.replace('_', ' ')} {w[k]:.2f}" for k in
                              ("multitask_baseline", "evaluation", "checkpoints_and_logs", "other"))
            print(f"wall time of this run (s): {w['total']:.2f}: meta-iterations {w['meta_iterations']:.2f} "
                  f"({100 * w['meta_iterations'] / max(w['total'], 1e-12):.0f}%), {parts}")
        print(f"run directory: {out}")
    return 0


def _goals_line(evaluation):
    goals = evaluation.get("goals")
    if goals is None:
        return ""
    if goals["test_goals_seen_in_training"]:
        return f"test goals drawn from all {len(goals['test'])} goals, every one also a training goal"
    return f"test goals: the {len(goals['test'])} goals withheld from training ({len(goals['train'])} trained on)"


def _compare(args):
    import metarl_fast
    from metarl_fast.trainer import compare, format_comparison

    algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    # validated as the first algorithm's run (e.g. a replay ratio above 1 is for first-order ones)
    config = _config_from_args(args, **({"algo": algos[0]} if algos else {}))
    metarl_fast.set_backend(_backend(args, config))
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    if not algos or len(seeds) < 2:
        raise UserError("compare needs at least one algorithm (--algos) and two seeds (--seeds)")
    out = args.out or new_run_dir("compare-")
    if not args.json:
        print(f"metarl-fast compare: {', '.join(algos)} on {config.tasks}, seeds {args.seeds}, "
              f"{config.iterations} meta-iterations each -> {out}", file=sys.stderr)
    if args.replay_vs_on_policy:
        from metarl_fast.trainer import compare_replay, format_replay_comparison

        with open(os.devnull, "w") as quiet:
            result = compare_replay(config, algos, seeds, out, log=quiet,
                                    progress=None if args.json else sys.stderr)
        if args.json:
            print(json.dumps(result, indent=2, sort_keys=True))
        else:
            print(f"\nreplay against on-policy, {len(seeds)} training seeds:")
            print(format_replay_comparison(result))
        return 0
    with open(os.devnull, "w") as quiet:
        result = compare(config, algos, seeds, out, log=quiet, progress=None if args.json else sys.stderr)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        where = ""
        if "test_goals_seen_in_training" in result:
            where = ("; test goals also seen in training" if result["test_goals_seen_in_training"]
                     else f"; test goals: {result['held_out_goals']} withheld from training")
        print(f"\n{result['n_tasks']} held-out tasks (eval seed {result['eval_seed']}){where}; "
              f"{len(seeds)} training seeds:")
        print(format_comparison(result))
    return 0


def _eval(args):
    import dataclasses as dc

    import metarl_fast
    from metarl_fast.trainer import MetaTrainer, format_table

    path = args.run
    if os.path.isdir(path):
        path = os.path.join(path, "checkpoint.npz")
    config, arrays = MetaTrainer.read_checkpoint(path)
    if args.backend:
        metarl_fast.set_backend(args.backend)
    eval_seed = args.eval_seed if args.eval_seed is not None else config.eval_seed + 1
    eval_tasks = args.eval_tasks if args.eval_tasks is not None else config.eval_tasks
    config = dc.replace(config, eval_seed=eval_seed, eval_tasks=eval_tasks)
    trainer = MetaTrainer(config, os.path.dirname(os.path.abspath(path)))
    trainer.load_checkpoint(path)
    evaluation = trainer.evaluate()
    evaluation.update({"checkpoint": path, "iterations": trainer.iteration, "algo": config.algo,
                       "tasks": config.tasks, "backend": metarl_fast.get_backend()})
    if args.json:
        print(json.dumps(evaluation, indent=2, sort_keys=True))
    else:
        print(f"evaluation of {path} on {evaluation['n_tasks']} fresh test tasks (eval seed {eval_seed}):")
        goals = _goals_line(evaluation)
        if goals:
            print(goals)
        print(format_table(evaluation))
    return 0


def _bench(args):
    from metarl_fast.benchmark import format_bench, run_bench

    results = run_bench(quick=args.quick)
    print(json.dumps(results, indent=2) if args.json else format_bench(results))
    return 0


def _plot(args):
    from metarl_fast.plot import plot_run  # matplotlib missing: ImportError, one line, exit 2

    for path in plot_run(args.run, args.out):
        print(path)
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse without abbreviations (``--iter`` is not ``--iterations``), whose mistakes are one
    line: ``metarl-fast: error: ...`` and exit 2, without the usage dump."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        command = self.prog.split()[-1] if " " in self.prog else None
        where = f"metarl-fast {command} --help" if command else "metarl-fast --help"
        print(f"metarl-fast: error: {message} (see {where})", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def new_run_dir(prefix=""):
    """A fresh run directory under ``runs/``, created atomically: a timestamp, the process id and
    a random suffix, so runs started at the same second (or by several processes) never share one."""
    import secrets

    os.makedirs("runs", exist_ok=True)
    while True:
        path = os.path.join("runs", f"{prefix}{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-"
                                    f"{secrets.token_hex(2)}")
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue


def build_parser():
    import metarl_fast

    parser = _Parser(prog="metarl-fast", description="Meta-reinforcement learning on the CPU.")
    parser.add_argument("--version", action="version", version=f"metarl-fast {metarl_fast.__version__}")
    common = _Parser(add_help=False)
    # Without the compiled extension, choose the numpy backend with METARL_FAST_BACKEND=numpy
    # (the package picks its backend when imported, before any option is read).
    common.add_argument("--backend", choices=("cython", "numpy"), help="kernel backend (default: cython)")
    common.add_argument("--threads", type=int, default=None,
                        help="worker threads for the kernels (the kernels are single-threaded today: only 1 is accepted)")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    p = sub.add_parser("train", parents=[common], help="meta-train (the main job; defaults: MAML on GridNavigation)")
    for flag, field, typ, help_text in _TRAIN_OPTIONS:
        p.add_argument(flag, dest=field, type=typ, default=None, help=help_text)
    for flag, field, help_text in _TRAIN_FLAGS:
        p.add_argument(flag, dest=field, action="store_true", help=help_text)
    p.add_argument("--out", help="run directory (default runs/<timestamp>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--config", help="TOML file with the settings (options given on the command line win)")
    p.add_argument("--json", action="store_true", help="print the final evaluation as JSON")
    p.set_defaults(func=_train)

    p = sub.add_parser("compare", parents=[common],
                       help="train several algorithms over several seeds; table with CIs across seeds")
    for flag, field, typ, help_text in _TRAIN_OPTIONS:
        if field not in ("algo", "seed"):
            p.add_argument(flag, dest=field, type=typ, default=None, help=help_text)
    p.add_argument("--replay", action="store_true", help="every algorithm with the replay pool (see train --replay)")
    p.add_argument("--normalize-returns", dest="normalize_returns", action="store_true",
                   help="every algorithm with normalised returns (see train --normalize-returns)")
    p.add_argument("--replay-vs-on-policy", action="store_true",
                   help="train each algorithm with and without the replay pool (the --replay-* settings) "
                        "and compare them: return, environment steps, runs reaching --target, wall time")
    p.add_argument("--algos", default="maml,fomaml,reptile", help="comma-separated algorithms (default maml,fomaml,reptile)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (default 0,1,2)")
    p.add_argument("--out", help="directory of the runs (default runs/compare-<timestamp>)")
    p.add_argument("--config", help="TOML file with the settings (options given on the command line win)")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.set_defaults(func=_compare)

    p = sub.add_parser("eval", parents=[common], help="re-evaluate a run on fresh held-out tasks")
    p.add_argument("run", metavar="RUN_DIR_OR_CHECKPOINT")
    p.add_argument("--eval-seed", type=int, default=None, help="seed of the fresh test tasks (default: the run's + 1)")
    p.add_argument("--eval-tasks", type=int, default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_eval)

    p = sub.add_parser("bench", parents=[common], help="throughput suite, Cython vs NumPy")
    p.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_bench)

    p = sub.add_parser("plot", parents=[common],
                       help="PNG figures of a run: learning curve, and adaptation curve or comparison with the baselines")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--out", help="directory for the PNG files (default: RUN_DIR)")
    p.set_defaults(func=_plot)

    p = sub.add_parser("info", parents=[common], help="version, backend, build flags, OpenMP and NumPy versions")
    p.set_defaults(func=_info)
    return parser


def main(argv=None):
    import metarl_fast
    from metarl_fast.io import CheckpointError

    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    if argv is None:  # the command's own process: large per-call arrays without page faults
        from metarl_fast.memory import retain_freed_memory
        retain_freed_memory()
    try:
        if args.threads is not None and args.threads != 1:
            raise UserError(f"--threads {args.threads}: the kernels are single-threaded in this version; use 1")
        if args.backend:
            metarl_fast.set_backend(args.backend)
        return args.func(args)
    except (UserError, CheckpointError, ValueError, TypeError, ImportError) as err:
        if os.environ.get("METARL_FAST_TRACEBACK"):
            raise
        print(f"metarl-fast: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError as err:  # a request larger than the machine: one line, as for a mistake
        if os.environ.get("METARL_FAST_TRACEBACK"):
            raise
        detail = str(err).splitlines()[0] if str(err) else "the request does not fit in memory"
        print(f"metarl-fast: error: out of memory: {detail} (ask for fewer tasks, episodes or a "
              f"smaller pool)", file=sys.stderr)
        return EXIT_USAGE
    except FloatingPointError as err:  # meta.DivergenceError and the in-context learners' divergence
        print(f"metarl-fast: error: training diverged ({err}); no checkpoint was written for that "
              f"iteration, the last one is intact", file=sys.stderr)
        return EXIT_DIVERGED
    except KeyboardInterrupt:
        print("metarl-fast: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `metarl-fast ... | head`: the reader left; no traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
