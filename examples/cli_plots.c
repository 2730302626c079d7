/*
 * cli_plots.c - the paper's Figures 1, 3 and 10 as SVG (see cli_plots.h).
 */
#include "cli_plots.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* A panel: a data rectangle [x0, x1] x [y0, y1] mapped onto a pixel box.    */
/* ------------------------------------------------------------------------ */

typedef struct panel {
    double px, py, pw, ph; /* pixel box of the plotting area */
    double x0, x1, y0, y1; /* data range */
} panel;

static double sx(const panel *p, double x) { return p->px + (x - p->x0) / (p->x1 - p->x0) * p->pw; }
static double sy(const panel *p, double y) { return p->py + p->ph - (y - p->y0) / (p->y1 - p->y0) * p->ph; }

static void xml_text(FILE *f, const char *s)
{
    for (; s && *s; s++) {
        switch (*s) {
        case '&': fputs("&amp;", f); break;
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '"': fputs("&quot;", f); break;
        default:
            if ((unsigned char)*s >= 0x20 || *s == '\t') fputc(*s, f);
        }
    }
}

static void text(FILE *f, double x, double y, const char *anchor, int size, const char *s, int rotate)
{
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"%d\" text-anchor=\"%s\"", x, y, size, anchor);
    if (rotate) fprintf(f, " transform=\"rotate(-90 %.1f %.1f)\"", x, y);
    fputc('>', f);
    xml_text(f, s);
    fputs("</text>\n", f);
}

/* A step of 1, 2 or 5 times a power of ten giving about n ticks over span. */
static double nice_step(double span, int n)
{
    double raw = span / n, p = pow(10.0, floor(log10(raw))), r = raw / p;
    return (r < 1.5 ? 1 : r < 3.5 ? 2 : r < 7.5 ? 5 : 10) * p;
}

/* Widens [lo, hi] to a non-empty range with a margin. */
static void pad_range(double *lo, double *hi)
{
    if (!isfinite(*lo) || !isfinite(*hi)) {
        *lo = 0;
        *hi = 1;
    }
    if (*hi - *lo < 1e-9) {
        *lo -= 0.5;
        *hi += 0.5;
    }
    double m = 0.05 * (*hi - *lo);
    *lo -= m;
    *hi += m;
}

/* Frame, ticks and labels; y ticks always, x ticks unless xticks == 0. */
static void axes(FILE *f, const panel *p, const char *xlabel, const char *ylabel, int xticks)
{
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#000\"/>\n",
            p->px, p->py, p->pw, p->ph);
    char buf[32];
    double st = nice_step(p->y1 - p->y0, 5);
    for (double v = ceil(p->y0 / st) * st; v <= p->y1 + 1e-9 * st; v += st) {
        double y = sy(p, v);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", p->px, y, p->px + p->pw, y);
        snprintf(buf, sizeof buf, "%g", fabs(v) < 1e-9 * st ? 0.0 : v);
        text(f, p->px - 4, y + 4, "end", 10, buf, 0);
    }
    if (xticks) {
        st = nice_step(p->x1 - p->x0, 5);
        for (double v = ceil(p->x0 / st) * st; v <= p->x1 + 1e-9 * st; v += st) {
            double x = sx(p, v);
            fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#000\"/>\n", x, p->py + p->ph, x,
                    p->py + p->ph + 4);
            snprintf(buf, sizeof buf, "%g", fabs(v) < 1e-9 * st ? 0.0 : v);
            text(f, x, p->py + p->ph + 15, "middle", 10, buf, 0);
        }
    }
    text(f, p->px + p->pw / 2, p->py + p->ph + 32, "middle", 11, xlabel, 0);
    text(f, p->px - 38, p->py + p->ph / 2, "middle", 11, ylabel, 1);
}

static FILE *svg_open(const char *path, double w, double h)
{
    FILE *f = fopen(path, "w");
    if (!f) return NULL;
    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
               "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" "
               "font-family=\"sans-serif\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"#fff\"/>\n",
            w, h, w, h);
    return f;
}

static int svg_close(FILE *f)
{
    fputs("</svg>\n", f);
    int bad = ferror(f);
    if (fclose(f) != 0) bad = 1;
    if (bad && !errno) errno = EIO;
    return bad ? -1 : 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double plot_quantile(const double *sorted, size_t n, double q)
{
    if (n == 0) return NAN;
    double pos = q * (double)(n - 1);
    size_t i = (size_t)floor(pos);
    if (i + 1 >= n) return sorted[n - 1];
    return sorted[i] + (pos - (double)i) * (sorted[i + 1] - sorted[i]);
}

/* Deterministic jitter in [-1, 1). */
static double jitter(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(*s >> 11) / (double)(1ull << 52) - 1.0;
}

/* ------------------------------------------------------------------------ */
/* Figure 1                                                                 */
/* ------------------------------------------------------------------------ */

int plot_gradient_sinks(const char *path, const char *title, int n_layers, int T, const float *gnorm,
                        const float *rgs)
{
    if (n_layers <= 0 || T <= 0) {
        errno = EINVAL;
        return -1;
    }
    double *lg = malloc(sizeof(double) * (size_t)T), *r = malloc(sizeof(double) * (size_t)n_layers);
    if (!lg || !r) {
        free(lg);
        free(r);
        errno = ENOMEM;
        return -1;
    }
    /* y range over every finite log value */
    double lo = INFINITY, hi = -INFINITY;
    for (size_t i = 0; i < (size_t)n_layers * (size_t)T; i++) {
        double g = gnorm[i];
        if (g > 0 && isfinite(g)) {
            lo = fmin(lo, log10(g));
            hi = fmax(hi, log10(g));
        }
    }
    pad_range(&lo, &hi);
    /* R_GS(0): median and IQR over layers */
    size_t nr = 0;
    for (int l = 0; l < n_layers; l++)
        if (isfinite(rgs[l])) r[nr++] = rgs[l];
    qsort(r, nr, sizeof *r, cmp_double);
    char head[512];
    if (nr)
        snprintf(head, sizeof head, "%s: R_GS(0) median %.2f, IQR %.2f-%.2f", title ? title : "gradient sinks",
                 plot_quantile(r, nr, 0.5), plot_quantile(r, nr, 0.25), plot_quantile(r, nr, 0.75));
    else
        snprintf(head, sizeof head, "%s: R_GS(0) undefined (sequence too short)", title ? title : "gradient sinks");

    double slot = n_layers > 24 ? 22 : 34, W = 90 + slot * n_layers + 30, H = 330;
    panel p = {70, 40, slot * n_layers, 230, -0.5, n_layers - 0.5, lo, hi};
    FILE *f = svg_open(path, W, H);
    if (!f) {
        free(lg);
        free(r);
        return -1;
    }
    text(f, W / 2, 22, "middle", 13, head, 0);
    axes(f, &p, "layer", "log10 ||dL/dh~_t||", 0);
    uint64_t js = 0x9E3779B97F4A7C15ull;
    for (int l = 0; l < n_layers; l++) {
        const float *g = gnorm + (size_t)l * (size_t)T;
        size_t n = 0;
        for (int t = 1; t < T; t++)
            if (g[t] > 0 && isfinite(g[t])) lg[n++] = log10(g[t]);
        double cx = sx(&p, l), hw = slot * 0.3;
        fprintf(f, "<g class=\"layer\" data-layer=\"%d\">\n", l);
        for (size_t i = 0; i < n; i++)
            fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"1.2\" fill=\"#888\" fill-opacity=\"0.5\"/>\n",
                    cx + hw * 0.8 * jitter(&js), sy(&p, lg[i]));
        qsort(lg, n, sizeof *lg, cmp_double);
        if (n) {
            double q1 = plot_quantile(lg, n, 0.25), q2 = plot_quantile(lg, n, 0.5), q3 = plot_quantile(lg, n, 0.75),
                   w0 = plot_quantile(lg, n, 0.05), w1 = plot_quantile(lg, n, 0.95);
            fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#000\"/>\n", cx, sy(&p, w0), cx,
                    sy(&p, q1));
            fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#000\"/>\n", cx, sy(&p, q3), cx,
                    sy(&p, w1));
            fprintf(f, "<rect class=\"box\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" "
                       "stroke=\"#000\" data-q1=\"%.6g\" data-median=\"%.6g\" data-q3=\"%.6g\"/>\n",
                    cx - hw, sy(&p, q3), 2 * hw, sy(&p, q1) - sy(&p, q3), q1, q2, q3);
            fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e67e00\" stroke-width=\"2\"/>\n",
                    cx - hw, sy(&p, q2), cx + hw, sy(&p, q2));
        }
        if (g[0] > 0 && isfinite(g[0]))
            fprintf(f, "<circle class=\"token0\" cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"#d62728\" data-log10=\"%.6g\"/>\n",
                    cx, sy(&p, log10(g[0])), log10(g[0]));
        char lab[16];
        snprintf(lab, sizeof lab, "%d", l);
        text(f, cx, p.py + p.ph + 15, "middle", 10, lab, 0);
        fputs("</g>\n", f);
    }
    /* legend */
    fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"#d62728\"/>\n", p.px + 10, p.py + 12);
    text(f, p.px + 18, p.py + 16, "start", 10, "token 0", 0);
    free(lg);
    free(r);
    return svg_close(f);
}

/* ------------------------------------------------------------------------ */
/* Figures 3 and 10                                                          */
/* ------------------------------------------------------------------------ */

static const char *GROUP_COLOR[5] = {"#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#7f7f7f"};
static const char *GROUP_NAME[5] = {"token 0", "token 1", "tokens 2-3", "tokens 4-7", "tokens 8-15"};

static int token_group(int t) { return t == 0 ? 0 : t == 1 ? 1 : t < 4 ? 2 : t < 8 ? 3 : 4; }

int plot_branch_ratios(const char *path, const char *title, const char *branch, int n_layers, int n_tok,
                       const float *hnorm, const float *bloat, const float *change, const float *compress)
{
    if (n_layers <= 0 || n_tok <= 0 || n_tok > 16) {
        errno = EINVAL;
        return -1;
    }
    const float *ys[3] = {bloat, change, compress};
    const char *names[3] = {"Bloat", "Change", "Compress"};
    int is_mlp = branch && !strcmp(branch, "mlp");
    size_t n = (size_t)n_layers * (size_t)n_tok;
    double xlo = INFINITY, xhi = -INFINITY;
    for (size_t i = 0; i < n; i++)
        if (hnorm[i] > 0 && isfinite(hnorm[i])) {
            xlo = fmin(xlo, log10(hnorm[i]));
            xhi = fmax(xhi, log10(hnorm[i]));
        }
    pad_range(&xlo, &xhi);
    double W = 3 * 260 + 40, H = 330;
    FILE *f = svg_open(path, W, H);
    if (!f) return -1;
    char head[512];
    snprintf(head, sizeof head, "%s: %s branch, tokens 0-%d of every layer", title ? title : "gradient reshaping",
             is_mlp ? "MLP" : "attention", n_tok - 1);
    text(f, W / 2, 22, "middle", 13, head, 0);
    for (int k = 0; k < 3; k++) {
        double ylo = INFINITY, yhi = -INFINITY;
        for (size_t i = 0; i < n; i++) {
            double y = ys[k][i];
            if (y > 0 && isfinite(y) && hnorm[i] > 0 && isfinite(hnorm[i])) {
                ylo = fmin(ylo, log10(y));
                yhi = fmax(yhi, log10(y));
            }
        }
        pad_range(&ylo, &yhi);
        panel p = {60 + k * 260.0, 40, 200, 230, xlo, xhi, ylo, yhi};
        char yl[64], xl[64];
        snprintf(yl, sizeof yl, "log10 %s^%s", names[k], is_mlp ? "mlp" : "attn");
        snprintf(xl, sizeof xl, "log10 ||%s||", is_mlp ? "h_half" : "h_in");
        axes(f, &p, xl, yl, 1);
        fprintf(f, "<g class=\"panel\" data-metric=\"%s\">\n", names[k]);
        for (int l = 0; l < n_layers; l++)
            for (int t = 0; t < n_tok; t++) {
                size_t i = (size_t)l * (size_t)n_tok + (size_t)t;
                double x = hnorm[i], y = ys[k][i];
                if (!(x > 0 && isfinite(x) && y > 0 && isfinite(y))) continue;
                fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"%s\" fill=\"%s\" fill-opacity=\"0.75\" "
                           "data-layer=\"%d\" data-token=\"%d\"/>\n",
                        sx(&p, log10(x)), sy(&p, log10(y)), t == 0 ? "3.5" : "2.2", GROUP_COLOR[token_group(t)], l,
                        t);
            }
        fputs("</g>\n", f);
    }
    /* legend, under the panels */
    for (int g = 0; g < 5; g++) {
        double x = 60 + g * 150.0, y = H - 14;
        fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"%s\"/>\n", x, y - 4, GROUP_COLOR[g]);
        text(f, x + 8, y, "start", 10, GROUP_NAME[g], 0);
    }
    return svg_close(f);
}
