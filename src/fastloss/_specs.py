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
    # For the docs (docs/hooks/loss_pages.py builds a page per loss from these; no behaviour):
    math: str = ""  # the formula in full, every option, Markdown
    option_notes: dict = field(default_factory=dict)  # option -> what it does, Markdown
    twins: dict = field(default_factory=dict)  # framework -> the same loss there, Markdown
    differs: tuple = ()  # where fastloss differs from its twins and why, one Markdown note each

    def kernel(self, kind):
        """(kernel name, options -> argument tuple) for targets of ``kind``."""
        if self.kernels is None:
            return self.name, _all_options
        return self.kernels[kind]


def _all_options(opts):
    return tuple(opts.values())


_CLASS_WEIGHT = "class weights, shape `(C,)`"
_TORCH_KINKS = ("Sub-gradients at kinks are PyTorch's: `max(0, z)` has slope 0 at `z == 0`, `|d|` slope 0 "
                "at 0.")

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
            math="Class indices `y`: `lse(x) - x[y]`, `lse(x) = log Σ_c e^x[c]`; with `label_smoothing=ε`: "
                 "`(1-ε) w[y] (lse - x[y]) + ε/C Σ_c w[c] (lse - x[c])`; plus `z_loss * w[y] * lse²`.\n\n"
                 "Probability targets `t` (floats of the input's shape): "
                 "`Σ_c w[c] t'[c] (lse - x[c]) + z_loss * r * lse²`, `t' = (1-ε) t + ε/C`, "
                 "`r = Σ_c w[c] t'[c]`; `\"mean\"` divides by the rows.",
            option_notes=dict(
                weight=_CLASS_WEIGHT + "; `\"mean\"` divides by `Σ w[y]` over the rows not ignored",
                ignore_index="rows with this label contribute 0 and are not counted (class indices only)",
                label_smoothing="`ε` in [0, 1]: the target mixes `ε/C` on every class",
                z_loss="`≥ 0`: PaLM's auxiliary `z · lse²`, weighted by the row's weight",
            ),
            twins={
                "PyTorch": "`F.cross_entropy` (class axis dim 1); "
                           "`fastloss.torch.cross_entropy`, `CrossEntropyLoss`",
                "Keras": "`SparseCategoricalCrossentropy(from_logits=True)`, "
                         "`CategoricalCrossentropy(from_logits=True)` for probabilities",
                "optax": "`softmax_cross_entropy_with_integer_labels`, `softmax_cross_entropy`",
                "Liger-Kernel": "`LigerCrossEntropyLoss` (`lse_square_scale` is `z_loss`)",
            },
            differs=(
                "The class axis is last (NumPy/JAX layout); `fastloss.torch` takes PyTorch's (dim 1).",
                "`z_loss` is PaLM's auxiliary `z · lse²` (Liger-Kernel's `lse_square_scale`), absent from "
                "PyTorch. With `weight`, the z-loss term of a row is weighted by the row's weight: `weight[y]` "
                "for class indices, `Σ_c weight[c] t[c]` for probability targets.",
                "Probability targets: a class whose (smoothed) target mass times its weight is zero "
                "contributes nothing, even where its logit is `-inf` (a masked class); PyTorch returns NaN "
                "there (`0 · inf`).",
                "When the weighted mean divides by zero (every counted row's class weight is 0), cython, numba "
                "and cuda give NaN gradients in the rows not ignored (`0 · inf`, as PyTorch); the numpy "
                "backend and `fastloss.reference` give 0. Left as it is.",
            ),
        ),
        LossSpec(
            "sigmoid_bce", ELEMENTS, VALUES, dict(weight=None, pos_weight=None),
            "w * (-(p*t*log(sigmoid(x)) + (1-t)*log(1-sigmoid(x)))), stable for any x",
            math="`w [(1-t) x + (1 + (p-1) t) log(1 + e^-x)]` with `p = pos_weight`, computed stably for "
                 "any `x`.",
            option_notes=dict(
                weight="per-element weights, broadcast to the input's shape",
                pos_weight="weight of the positive term, broadcast over the last axes "
                           "(a `(C,)` vector per class, as PyTorch)",
            ),
            twins={
                "PyTorch": "`F.binary_cross_entropy_with_logits`; "
                           "`fastloss.torch.binary_cross_entropy_with_logits`, `BCEWithLogitsLoss`",
                "Keras": "`BinaryCrossentropy(from_logits=True)`",
                "optax": "`sigmoid_binary_cross_entropy`",
            },
            differs=(
                "Targets are not checked to be probabilities (as PyTorch).",
                "A NaN logit times a zero weight stays NaN, as PyTorch's `0 * NaN`.",
                "For float32 inputs the `exp` and `log` run in float32, as PyTorch computes them (about "
                "1 ulp; cython computes the whole item in float32).",
            ),
        ),
        LossSpec(
            "huber", ELEMENTS, VALUES, dict(delta=1.0),
            "0.5*d**2 if |d| <= delta else delta*(|d| - 0.5*delta), d = x - target",
            input_name="predictions",
            math="`½d²` if `|d| ≤ δ` else `δ(|d| - ½δ)`, `d = x - t`.",
            option_notes=dict(delta="`δ > 0`: where the square turns linear"),
            twins={
                "PyTorch": "`F.huber_loss`; `fastloss.torch.huber_loss`, `HuberLoss`",
                "Keras": "`Huber`",
                "optax": "`huber_loss`",
            },
        ),
        LossSpec(
            "hinge", ELEMENTS, VALUES, dict(margin=1.0, squared=False),
            "max(0, margin - y*x) (squared if asked), y in {-1, +1} or {0, 1}",
            input_name="scores", target_name="labels", binary_labels=True,
            math="`max(0, margin - y x)`, squared if asked; `y ∈ {-1, +1}`, or `{0, 1}` with 0 meaning -1.",
            option_notes=dict(margin="finite", squared="square each term"),
            twins={
                "PyTorch": "none in `torch.nn.functional` (`hinge_embedding_loss` is another loss); "
                           "`fastloss.torch.hinge_loss`, `HingeLoss`",
                "Keras": "`Hinge`, `SquaredHinge`",
                "optax": "`hinge_loss`",
                "scikit-learn": "`hinge_loss` (binary)",
            },
            differs=(
                "Labels must be in {-1, +1} or {0, 1} (0 means -1); any other value raises. On a device the "
                "labels are not checked (a kernel cannot raise without a host sync).",
                _TORCH_KINKS,
            ),
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
            math="Weston–Watkins: `w[y]/C Σ_{j≠y} max(0, margin - x[y] + x[j])^p`; Crammer–Singer: "
                 "`w[y] max(0, margin + max_{j≠y} x[j] - x[y])^p`; `p = 2` if squared.",
            option_notes=dict(
                margin="finite", squared="`p = 2`", weight=_CLASS_WEIGHT,
                mode="`\"weston_watkins\"` (a term per wrong class) or `\"crammer_singer\"` (the worst one)",
            ),
            twins={
                "PyTorch": "`F.multi_margin_loss` (Weston–Watkins; `p=1|2`); "
                           "`fastloss.torch.multi_margin_loss` (also `mode=\"crammer_singer\"`), "
                           "`MultiMarginLoss`",
                "Keras": "`CategoricalHinge` (Crammer–Singer, one-hot targets)",
                "optax": "`multiclass_hinge_loss` (Crammer–Singer)",
                "scikit-learn": "multiclass `hinge_loss` on scores and labels (Crammer–Singer)",
            },
            differs=(
                "`mode=\"weston_watkins\"` is exactly `F.multi_margin_loss`: the weight is applied after the "
                "power, as PyTorch's kernel does (its docs put it inside).",
                "`mode=\"crammer_singer\"` is Keras' `categorical_hinge` and scikit-learn's multiclass "
                "`hinge_loss`, with `margin`, `squared` and `weight` added; Keras takes one-hot targets, "
                "fastloss class indices.",
                "Crammer–Singer's `max_{j≠y}` sends its gradient to the first maximal class (PyTorch's "
                "`max(dim)` convention); TF/JAX split it between ties.",
                "Over a single class there is no term: loss and gradient 0, even for a NaN score (as PyTorch).",
            ),
        ),
        LossSpec("mse", ELEMENTS, VALUES, {}, "(x - target)**2", input_name="predictions",
                 math="`(x - t)²`.",
                 twins={
                     "PyTorch": "`F.mse_loss`; `fastloss.torch.mse_loss`, `MSELoss`",
                     "Keras": "`MeanSquaredError`",
                     "optax": "`squared_error` (`l2_loss` is half of it)",
                 }),
        LossSpec("mae", ELEMENTS, VALUES, {}, "|x - target|", input_name="predictions",
                 math="`|x - t|`.",
                 twins={
                     "PyTorch": "`F.l1_loss`; `fastloss.torch.l1_loss`, `L1Loss`",
                     "Keras": "`MeanAbsoluteError`",
                     "optax": "none in optax 0.2 (`jnp.abs(x - t)`)",
                 },
                 differs=(_TORCH_KINKS,)),
        LossSpec(
            "kl_div", ELEMENTS, VALUES, dict(log_target=False),
            "target * (log(target) - x), or exp(target) * (target - x) with log_target",
            input_name="log_probs",
            reductions=("mean", "sum", "none", "batchmean"),
            math="`t (log t - x)` (0 where `t = 0`), or `e^t (t - x)` with `log_target=True`; `x` holds "
                 "log-probabilities.",
            option_notes=dict(log_target="the targets are log-probabilities too"),
            twins={
                "PyTorch": "`F.kl_div`; `fastloss.torch.kl_div`, `KLDivLoss`",
                "Keras": "`KLDivergence` (on probabilities, both clipped to [1e-7, 1], summed over the last axis)",
                "optax": "`kl_divergence`, `kl_divergence_with_log_targets`",
            },
            differs=(
                "`\"batchmean\"` divides by `shape[0]`, as PyTorch; `\"mean\"` by the elements.",
                "A zero target contributes 0 even under a `±inf` log-probability (a mask), where PyTorch "
                "computes `0 · inf = NaN`; a NaN log-probability under a zero target stays NaN, as PyTorch.",
                "Targets are not checked to be probabilities (as PyTorch). For float32 inputs the `exp` and "
                "`log` run in float32, as PyTorch computes them.",
            ),
        ),
        LossSpec(
            "smooth_l1", ELEMENTS, VALUES, dict(beta=1.0),
            "0.5*d**2/beta if |d| < beta else |d| - 0.5*beta, d = x - target (beta=0: |d|)",
            input_name="predictions",
            math="`½d²/β` if `|d| < β` else `|d| - ½β`, `d = x - t`; `β = 0` is L1.",
            option_notes=dict(beta="finite, `≥ 0` (PyTorch refuses a negative `beta`)"),
            twins={
                "PyTorch": "`F.smooth_l1_loss`; `fastloss.torch.smooth_l1_loss`, `SmoothL1Loss`",
                "optax": "none in optax 0.2 (`huber_loss(x, t, β) / β` for `β > 0`)",
            },
            differs=(_TORCH_KINKS,),
        ),
        LossSpec(
            "log_cosh", ELEMENTS, VALUES, {},
            "log(cosh(d)) = |d| + log1p(exp(-2|d|)) - log(2), d = x - target",
            input_name="predictions",
            math="`log cosh d = |d| + log1p(e^(-2|d|)) - log 2`, `d = x - t`: no overflow for any `d`.",
            twins={
                "PyTorch": "none in `torch.nn.functional`; `fastloss.torch.log_cosh_loss`, `LogCoshLoss`",
                "Keras": "`LogCosh`",
                "optax": "`log_cosh`",
            },
            differs=("`log(cosh(d))` as written overflows once `cosh` does (`|d|` about 89 in float32, 710 in "
                     "float64); the form above never does.",),
        ),
        LossSpec(
            "msle", ELEMENTS, VALUES, {},
            "(log1p(max(x, 1e-7)) - log1p(max(target, 1e-7)))**2, no gradient where x < 1e-7",
            input_name="predictions",
            math="`(log1p(max(x, 1e-7)) - log1p(max(t, 1e-7)))²`; no gradient where `x < 1e-7`.",
            twins={
                "PyTorch": "none in `torch.nn.functional`; `fastloss.torch.msle_loss`, `MSLELoss`",
                "Keras": "`MeanSquaredLogarithmicError`",
                "optax": "none in optax 0.2",
            },
            differs=("`log1p` for Keras' `log(x + 1)`: the same within rounding; the gradient is that of "
                     "`clamp(min=1e-7)`: none below it.",),
        ),
        LossSpec(
            "poisson_nll", ELEMENTS, VALUES, dict(log_input=True, full=False, eps=1e-8),
            "exp(x) - target*x (log_input), else x - target*log(x + eps); full adds "
            "target*log(target) - target + 0.5*log(2*pi*target) where target > 1",
            input_name="predictions",
            math="`e^x - t x` (`log_input`), else `x - t log(x + eps)`; `full` adds Stirling's "
                 "`t log t - t + ½ log(2πt)` where `t > 1`.",
            option_notes=dict(
                log_input="`x` is the log of the rate", full="add Stirling's term",
                eps="finite, `≥ 0`: keeps `log(x + eps)` finite at `x = 0` (without `log_input`)",
            ),
            twins={
                "PyTorch": "`F.poisson_nll_loss`; `fastloss.torch.poisson_nll_loss`, `PoissonNLLLoss`",
                "Keras": "`Poisson` (`log_input=False`, with Keras' epsilon)",
                "optax": "none in optax 0.2",
            },
            differs=("The same formula as PyTorch; `eps` must be finite and `≥ 0`.",),
        ),
        LossSpec(
            "sigmoid_focal", ELEMENTS, VALUES, dict(alpha=0.25, gamma=2.0),
            "alpha_t * (1 - p_t)**gamma * bce(x, target), p = sigmoid(x), p_t = p*t + (1-p)*(1-t), "
            "alpha_t = alpha*t + (1-alpha)*(1-t) (1 when alpha < 0)",
            math="`α_t (1 - p_t)^γ bce(x, t)`, `p = σ(x)`, `p_t = p t + (1-p)(1-t)`, "
                 "`α_t = α t + (1-α)(1-t)` (1 when `α < 0`).",
            option_notes=dict(
                alpha="finite; negative: no `α_t` factor (as torchvision)",
                gamma="finite, `≥ 0`: a negative `γ` makes `(1 - p_t)^γ` infinite where a prediction is right",
            ),
            twins={
                "torchvision": "`torchvision.ops.sigmoid_focal_loss`; `fastloss.torch.sigmoid_focal_loss`, "
                               "`SigmoidFocalLoss`",
                "Keras": "`BinaryFocalCrossentropy(apply_class_balancing=True, from_logits=True)`",
                "optax": "`sigmoid_focal_loss`",
            },
            differs=("torchvision's default reduction is `\"none\"`; fastloss's is `\"mean\"`, as for every "
                     "loss (`fastloss.torch.sigmoid_focal_loss` keeps torchvision's).",),
        ),
        LossSpec(
            "cosine_similarity", ROWS, VALUES, {},
            "-sum(xn * tn) over the last axis, vn = v / sqrt(max(sum(v**2), 1e-12))",
            input_name="predictions",
            math="`-Σ_c x̂[c] t̂[c]` over the last axis, `v̂ = v / sqrt(max(Σ_c v[c]², 1e-12))`; one loss "
                 "per row.",
            twins={
                "PyTorch": "`-F.cosine_similarity(x, t, dim)`; `fastloss.torch.cosine_similarity_loss`, "
                           "`CosineSimilarityLoss`",
                "Keras": "`CosineSimilarity`",
                "optax": "`-cosine_similarity(x, t, epsilon=1e-12)`",
            },
            differs=("The clamp is on the squared norm, as Keras' `l2_normalize` (each norm at least 1e-6); "
                     "below it the norm is a constant: no gradient through it. An all-zero row has loss 0.",),
        ),
    )
}
