"""Mutations of the MLP policy's reference kernels (issue 16): the reference must stand on its own
tests against mathematics (finite differences, torch.autograd)."""
from run import Mutation

REF = "metarl_fast/reference/mlp.py"
T = ["tests/test_mlp_math.py"]

MUTATIONS = [
    Mutation("mlp-ref-hvp-no-network-curvature", REF,
             "                       + d_a * _ddact(a, activation) * r_zs[index - 1])\n",
             "                       + 0.0 * d_a * _ddact(a, activation) * r_zs[index - 1])\n", T,
             "the HVP without the activation's second derivative (a Gauss-Newton-like product)"),
    Mutation("mlp-ref-hvp-no-weight-direction", REF,
             "            r_d_a = r_delta @ w.T + delta @ vw.T\n", "            r_d_a = r_delta @ w.T\n", T,
             "the R-pass forgets that the weights move along v"),
    Mutation("mlp-ref-hvp-no-softmax-curvature", REF,
             "    r_delta = -coef[:, None] * p * (r_logits - (p * r_logits).sum(axis=1, keepdims=True))\n",
             "    r_delta = -coef[:, None] * p * r_logits\n", T,
             "the softmax's Hessian without its rank-one term"),
    Mutation("mlp-ref-grad-bias-from-first-row", REF,
             "        grad[b_off:b_off + n_out] = delta.sum(axis=0)\n",
             "        grad[b_off:b_off + n_out] = delta[0]\n", T,
             "the bias gradient of one row instead of the batch"),
]
