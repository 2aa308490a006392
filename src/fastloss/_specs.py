"""The one table of losses. Everything public is generated from it: the entry points, the
validation of options, the dispatch to kernels, the reference tests and the benchmark list."""

from dataclasses import dataclass, field

ROWS = "rows"  # inputs (..., C), one loss per row, class axis last
ELEMENTS = "elements"  # one loss per element, any shape

CLASSES = "classes"  # int class indices of the batch shape
CLASSES_OR_PROBS = "classes_or_probs"  # ... or float probabilities of the input shape
VALUES = "values"  # floats of the input shape


@dataclass(frozen=True)
class LossSpec:
    name: str
    layout: str
    targets: str
    options: dict  # option name -> default
    formula: str  # one line for the docstring
    input_name: str = "logits"
    target_name: str = "targets"
    reductions: tuple = ("mean", "sum", "none")
    choices: dict = field(default_factory=dict)  # option -> allowed values
    # "mean" divides by the sum of weight[y] over rows not ignored (class-index targets), not N
    label_weighted_mean: bool = False
    # float targets must be labels in {-1, 0, +1} (the backend's binary_label_check)
    binary_labels: bool = False
    # target kind ('classes', 'probs', 'values') -> (kernel name, its loss-specific arguments
    # from the checked options, in the order of the backend contract); default: the loss's own
    # kernel with every option in the spec's order
    kernels: dict = None

    def kernel(self, kind):
        """(kernel name, options -> argument tuple) for targets of ``kind``."""
        if self.kernels is None:
            return self.name, _all_options
        return self.kernels[kind]


def _all_options(opts):
    return tuple(opts.values())


SPECS = {
    s.name: s
    for s in (
        LossSpec(
            "softmax_xent", ROWS, CLASSES_OR_PROBS,
            dict(weight=None, ignore_index=-100, label_smoothing=0.0, z_loss=0.0),
            "lse(x) - x[y] per row (PyTorch cross_entropy, class axis last) + z_loss * lse(x)**2",
            target_name="labels", label_weighted_mean=True,
            kernels={
                "classes": ("softmax_xent",
                            lambda o: (o["weight"], o["ignore_index"], o["label_smoothing"], o["z_loss"])),
                "probs": ("softmax_xent_probs", lambda o: (o["weight"], o["label_smoothing"], o["z_loss"])),
            },
        ),
        LossSpec(
            "sigmoid_bce", ELEMENTS, VALUES, dict(weight=None, pos_weight=None),
            "w * (-(p*t*log(sigmoid(x)) + (1-t)*log(1-sigmoid(x)))), stable for any x",
        ),
        LossSpec(
            "huber", ELEMENTS, VALUES, dict(delta=1.0),
            "0.5*d**2 if |d| <= delta else delta*(|d| - 0.5*delta), d = x - target",
            input_name="predictions",
        ),
        LossSpec(
            "hinge", ELEMENTS, VALUES, dict(margin=1.0, squared=False),
            "max(0, margin - y*x) (squared if asked), y in {-1, +1} or {0, 1}",
            input_name="scores", target_name="labels", binary_labels=True,
        ),
        LossSpec(
            "multiclass_hinge", ROWS, CLASSES,
            dict(margin=1.0, squared=False, weight=None, mode="weston_watkins"),
            "weston_watkins: w[y]/C * sum_{j!=y} max(0, margin - x[y] + x[j])**p; "
            "crammer_singer: w[y] * max(0, margin + max_{j!=y} x[j] - x[y])**p",
            input_name="scores", target_name="labels",
            choices=dict(mode=("weston_watkins", "crammer_singer")),
            kernels={"classes": ("multiclass_hinge", lambda o: (o["weight"], o["margin"], o["squared"],
                                                                o["mode"] == "crammer_singer"))},
        ),
        LossSpec("mse", ELEMENTS, VALUES, {}, "(x - target)**2", input_name="predictions"),
        LossSpec("mae", ELEMENTS, VALUES, {}, "|x - target|", input_name="predictions"),
        LossSpec(
            "kl_div", ELEMENTS, VALUES, dict(log_target=False),
            "target * (log(target) - x), or exp(target) * (target - x) with log_target",
            input_name="log_probs",
            reductions=("mean", "sum", "none", "batchmean"),
        ),
        LossSpec(
            "smooth_l1", ELEMENTS, VALUES, dict(beta=1.0),
            "0.5*d**2/beta if |d| < beta else |d| - 0.5*beta, d = x - target (beta=0: |d|)",
            input_name="predictions",
        ),
        LossSpec(
            "log_cosh", ELEMENTS, VALUES, {},
            "log(cosh(d)) = |d| + log1p(exp(-2|d|)) - log(2), d = x - target",
            input_name="predictions",
        ),
        LossSpec(
            "msle", ELEMENTS, VALUES, {},
            "(log1p(max(x, 1e-7)) - log1p(max(target, 1e-7)))**2, no gradient where x < 1e-7",
            input_name="predictions",
        ),
        LossSpec(
            "poisson_nll", ELEMENTS, VALUES, dict(log_input=True, full=False, eps=1e-8),
            "exp(x) - target*x (log_input), else x - target*log(x + eps); full adds "
            "target*log(target) - target + 0.5*log(2*pi*target) where target > 1",
            input_name="predictions",
        ),
        LossSpec(
            "sigmoid_focal", ELEMENTS, VALUES, dict(alpha=0.25, gamma=2.0),
            "alpha_t * (1 - p_t)**gamma * bce(x, target), p = sigmoid(x), p_t = p*t + (1-p)*(1-t), "
            "alpha_t = alpha*t + (1-alpha)*(1-t) (1 when alpha < 0)",
        ),
        LossSpec(
            "cosine_similarity", ROWS, VALUES, {},
            "-sum(xn * tn) over the last axis, vn = v / sqrt(max(sum(v**2), 1e-12))",
            input_name="predictions",
        ),
    )
}
