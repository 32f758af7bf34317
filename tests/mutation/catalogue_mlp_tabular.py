"""Mutations of the exact MLP-on-tabular-task problem (issue 16's check against dynamic programming)."""
from run import Mutation

P = "metarl_fast/mlp_tabular.py"
T = ["tests/test_mlp_tabular.py"]

MUTATIONS = [
    Mutation("mlp-tabular-exact-hvp-no-network-curvature", P,
             "            r_delta = (r_delta @ w.T + delta @ vw.T) * slope + d_a * curve * r_zs[index - 1]\n",
             "            r_delta = (r_delta @ w.T + delta @ vw.T) * slope\n", T,
             "the exact HVP without the activation's second derivative"),
    Mutation("mlp-tabular-exact-hvp-no-gauss-newton-term", P,
             "            out[t] = (active.mlp.mlp_grad(theta[t], self.features, self.hidden, self.activation, h_logits[t])\n"
             "                      + linear_functional_hvp(",
             "            out[t] = (0.0 * active.mlp.mlp_grad(theta[t], self.features, self.hidden, self.activation, h_logits[t])\n"
             "                      + linear_functional_hvp(", T,
             "the exact HVP without the logit-space Hessian pulled back"),
]
