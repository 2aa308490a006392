# cython: language_level=3
"""fastloss scalar loss formulas, for ``cimport`` by other Cython extensions.

    from fastloss.formulas cimport huber_item, log1pexp, sigmoid

These are the C functions of ``fastloss/include/fl_formulas.h`` (documented there), the very ones
fastloss's own kernels run, so there is one copy of each formula: static inline, nogil, float64.
Item formulas return the item's loss and store d(loss)/dx through ``g``. They follow
``fastloss.reference``, including its kinks (PyTorch sub-gradients: slope 0 for max(0, z) at
z == 0, sign(0) = 0) and its NaN propagation (NaN in, NaN loss out).
Build with ``include_path=[fastloss.get_include()]`` (cythonize) and
``include_dirs=[fastloss.get_include()]`` (the Extension: the C compiler finds the header there).
"""

cdef extern from "fastloss/include/fl_formulas.h" nogil:
    # helpers
    double log1pexp "fl_log1pexp"(double x)
    double sigmoid "fl_sigmoid"(double x)
    double relu_keep_nan "fl_relu_keep_nan"(double z)

    # elementwise losses
    double sigmoid_bce_item "fl_sigmoid_bce_item_d"(double x, double t, double w, double pw, double* g)
    double huber_item "fl_huber_item"(double d, double delta, double* g)
    double hinge_item "fl_hinge_item"(double x, double t, double margin, bint squared, double* g)
    double mse_item "fl_mse_item"(double d, double* g)
    double mae_item "fl_mae_item"(double d, double* g)
    double kl_div_item "fl_kl_div_item_d"(double x, double t, bint log_target, double* g)
    double smooth_l1_item "fl_smooth_l1_item"(double d, double beta, double* g)
    double log_cosh_item "fl_log_cosh_item_d"(double d, double* g)
    double msle_item "fl_msle_item_d"(double x, double t, double* g)
    double poisson_nll_item "fl_poisson_nll_item_d"(double x, double t, bint log_input, bint full,
                                                    double eps, double* g)
    double sigmoid_focal_item "fl_sigmoid_focal_item_d"(double x, double t, double alpha, double gamma,
                                                        double* g)

    # row losses: the scalar parts of a row
    double softmax_xent_loss "fl_softmax_xent_loss"(double lse, double x_y, double w_y, double eps,
                                                    double inv_c, double w_sum, double wx_sum, double z)
    double softmax_xent_coef "fl_softmax_xent_coef"(double lse, double w_y, double eps, double inv_c,
                                                    double w_sum, double z)
    double softmax_xent_grad_y "fl_softmax_xent_grad_y"(double e_y, double s, double lse, double w_y,
                                                        double eps, double inv_c, double w_sum, double z)
    double softmax_xent_probs_loss "fl_softmax_xent_probs_loss"(double lse, double r, double tx_sum,
                                                                double z)
    double hinge_power_grad "fl_hinge_power_grad"(double z, double h, bint squared)
    # cosine similarity from a row's sums (sum x^2, sum t^2, sum x t): returns the loss and sets
    # the gradient's parts, grad_c = -t_c / nn - k x_c
    double cosine_similarity_loss "fl_cosine_similarity_loss"(double sx, double st, double sxt,
                                                              double* nn, double* k)
