/*
 * cli_plots.h - the paper's figures as self-contained SVG files, drawn by
 * gsink-cli analyze --plots DIR (no plotting library needed).
 *
 *   Figure 1: per layer, the distribution over positions t of
 *             log10 ||dL/dh~_t|| at the post-RMSNorm attention input
 *             (box: quartiles, whiskers: 5th-95th percentile, grey dots: the
 *             positions t >= 1, red: token 0), titled with the median and IQR
 *             over layers of R_GS(0).
 *   Figure 3: attention branch, Bloat / Change / Compress per early token
 *             (t < 16) of every layer against ||h_in||, log10 on both axes,
 *             coloured by token group (0, 1, 2-3, 4-7, 8-15).
 *   Figure 10: the same for the MLP branch against ||h_half||.
 *
 * Inputs are plain arrays, so the figures do not depend on how the numbers
 * were computed (one batch or streamed micro-batches). Non-finite or
 * non-positive values (log of 0) are left out of a panel, never drawn at a
 * wrong place. Functions return 0, or -1 with errno set when the file cannot
 * be written.
 */
#ifndef GSINK_CLI_PLOTS_H
#define GSINK_CLI_PLOTS_H

#include <stddef.h>

/* Figure 1. gnorm: n_layers rows of T values, row l = ||g_t|| of layer l for
 * t < T (not log). rgs: n_layers values of R_GS(0) (NaN where undefined). */
int plot_gradient_sinks(const char *path, const char *title, int n_layers, int T, const float *gnorm,
                        const float *rgs);

/* Figures 3 and 10. For n_layers layers and the first n_tok (<= 16) tokens,
 * row-major (layer, token): hnorm = ||h_in|| (attention) or ||h_half|| (MLP),
 * and the three ratios. branch names the x axis ("attn" or "mlp"). */
int plot_branch_ratios(const char *path, const char *title, const char *branch, int n_layers, int n_tok,
                       const float *hnorm, const float *bloat, const float *change, const float *compress);

/* Quantile q in [0, 1] of the n values (sorted copy, linear interpolation as
 * numpy's default); NaN for n = 0. */
double plot_quantile(const double *sorted, size_t n, double q);

#endif
