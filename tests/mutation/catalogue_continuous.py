"""Mutations of the MLP learners on continuous tasks (issue 16): the meta-gradient's pieces."""
from run import Mutation

P = "metarl_fast/continuous_meta.py"
T = ["tests/test_continuous_meta.py"]

MUTATIONS = [
    Mutation("continuous-meta-no-score-term", P,
             "            out[t] = score + curvature\n", "            out[t] = curvature\n", T,
             "MAML's Hessian without the score-function term (the surrogate's Hessian alone)"),
    Mutation("continuous-meta-score-own-episode-in-baseline", P,
             "            kappa = fv - (fv.sum() - fv) / (N - 1) if N > 1 else fv\n",
             "            kappa = fv - fv.mean()\n", T,
             "the score weights' baseline includes the episode's own term: biased by (1 - 1/N)"),
    Mutation("continuous-meta-no-network-curvature", P,
             "            curvature = active.mlp.mlp_hvp(theta[t], obs, self.hidden, self.activation, actions, c, v[t])\n",
             "            curvature = 0.0 * v[t]\n", T,
             "the surrogate's Hessian dropped (first-order MAML's direction in MAML's clothes)"),
    Mutation("continuous-meta-grad-wrong-task-rows", P,
             "        return slice(int(b[t]), int(b[t + 1]))\n",
             "        return slice(int(b[0]), int(b[1]))\n", T,
             "every task's gradient from the first task's episodes"),
]
