"""The mutation catalogue stays applicable to the tree, and the runner tells a kill from a survival.

The full mutation run is slow (a copy of the tree, a rebuild and a test run per mutation) and is
run by hand (tests/README.md); here only what keeps it usable: every catalogued snippet still
occurs exactly once in its file, and one planted bug and one harmless change run end to end.
"""
import os
import sys

import pytest

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mutation")
sys.path.insert(0, HERE)
import run  # noqa: E402  (tests/mutation/run.py)


def test_every_catalogued_mutation_applies_to_this_tree():
    mutations = run.load_catalogue()
    assert len(mutations) >= 100
    problems = [p for p in map(run.check, mutations) if p]
    assert not problems, problems
    modules = {m.module for m in mutations}
    for required in ("policy", "pg", "optim", "meta", "replay", "reference.envs", "rollout", "tasks", "exact",
                     "baselines", "trainer", "io", "cli",
                     "_core.policy", "_core.pg", "_core.meta", "_core.replay", "_core.envs", "_core.baselines",
                     "_core.incontext", "_core.incontext_mdp", "_core.normal"):
        assert required in modules, f"no mutation of {required}"


@pytest.mark.skipif(os.environ.get("METARL_FAST_BACKEND") == "numpy", reason="the runner copies the built tree")
@pytest.mark.skipif(not os.path.isdir(os.path.join(run.ROOT, ".git")), reason="the runner lists files with git")
def test_runner_kills_a_planted_bug_and_lets_a_harmless_change_survive(tmp_path):
    pristine = tmp_path / "pristine"
    run.pristine_copy(str(pristine))
    bug = run.Mutation("t-bug", "metarl_fast/meta.py", "v = v + problem.hvp(thetas[k], data_h, inner_lr * v)",
                       "v = v + problem.hvp(thetas[k], data_h, v)",
                       ["tests/test_meta.py", "-k", "unrolled_inner_loop"])
    harmless = run.Mutation("t-same", "metarl_fast/meta.py", "v = v + problem.hvp(thetas[k], data_h, inner_lr * v)",
                            "v = problem.hvp(thetas[k], data_h, inner_lr * v) + v",
                            ["tests/test_meta.py", "-k", "unrolled_inner_loop"])
    outcome, detail, _ = run.run_one(bug, str(pristine), timeout=300)
    assert outcome == "killed", detail
    outcome, detail, _ = run.run_one(harmless, str(pristine), timeout=300)
    assert outcome == "survived", detail
