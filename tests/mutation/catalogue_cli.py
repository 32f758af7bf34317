"""Mutations of the command line (cli.py): exit codes, resume, run protection, config precedence, eval."""
from run import Mutation

P = "metarl_fast/cli.py"
F = "tests/test_trainer_cli.py::"
T_ERRORS = [F + "test_cli_usage_errors_exit_2_and_never_overwrite_a_run"]
T_EXITS = [F + "test_cli_divergence_exits_3_and_interrupt_exits_130_with_a_resumable_checkpoint"]
T_CONFIG = [F + "test_cli_config_file_and_overrides_reach_the_run"]
T_EVAL = [F + "test_cli_eval_reports_the_adapted_checkpoint_on_fresh_tasks"]

MUTATIONS = [
    Mutation("cli-diverged-exit-code", P, "EXIT_DIVERGED = 3", "EXIT_DIVERGED = 1", T_EXITS),
    Mutation("cli-interrupted-run-exits-0", P,
             "        return EXIT_INTERRUPTED\n    if args.json:", "        return 0\n    if args.json:", T_EXITS,
             "an interrupted training reports success"),
    Mutation("cli-ctrl-c-exit-code", P,
             '        print("metarl-fast: interrupted", file=sys.stderr)\n        return EXIT_INTERRUPTED',
             '        print("metarl-fast: interrupted", file=sys.stderr)\n        return EXIT_USAGE', T_EXITS),
    Mutation("cli-resume-config-from-options", P,
             '        config, _ = MetaTrainer.read_checkpoint(os.path.join(args.out, "checkpoint.npz"))',
             "        config = _config_from_args(args)", T_EXITS,
             "--resume takes the settings from the command line (defaults), not the checkpoint"),
    Mutation("cli-overwrites-existing-run", P,
             'if not args.resume and os.path.exists(os.path.join(out, "checkpoint.npz")):',
             'if not args.resume and os.path.exists(os.path.join(out, "checkpoint")):', T_ERRORS,
             "the existing-run check looks for the wrong file: a run is overwritten"),
    Mutation("cli-resume-without-out", P, "        if not args.out:\n            raise UserError(\"--resume needs",
             "        if False:\n            raise UserError(\"--resume needs", T_ERRORS),
    Mutation("cli-threads-unchecked", P, "if args.threads is not None and args.threads != 1:",
             "if args.threads is not None and args.threads < 1:", T_ERRORS),
    Mutation("cli-compare-one-seed-accepted", P, "if not algos or len(seeds) < 2:", "if not algos or len(seeds) < 1:",
             T_ERRORS, "a CI across one seed"),
    Mutation("cli-config-file-ignored", P,
             "config = TrainConfig.from_toml(args.config) if args.config else TrainConfig()",
             "config = TrainConfig()", T_CONFIG),
    Mutation("cli-options-do-not-override-config", P, "    config = dataclasses.replace(config, **changes)\n",
             "    config = config if args.config else dataclasses.replace(config, **changes)\n", T_CONFIG,
             "the config file wins over the command line"),
    Mutation("cli-eval-same-seed-as-training", P, "config.eval_seed + 1", "config.eval_seed", T_EVAL,
             "eval re-uses the run's test tasks instead of fresh ones"),
    Mutation("cli-eval-tasks-zero-ignored", P, "eval_tasks = args.eval_tasks if args.eval_tasks is not None else config.eval_tasks",
             "eval_tasks = args.eval_tasks or config.eval_tasks", T_ERRORS,
             "the old behaviour: --eval-tasks 0 silently replaced by the run's number"),
    Mutation("cli-goals-line-inverted", P, 'if goals["test_goals_seen_in_training"]:',
             'if not goals["test_goals_seen_in_training"]:', T_EVAL),
]
