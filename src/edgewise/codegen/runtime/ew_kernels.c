/* edgewise int8 kernels; see ew_kernels.h for the arithmetic. */
#include "ew_kernels.h"

/* acc * m * 2^-s rounded half to even (ONNX QuantizeLinear's rounding), in integers only. */
static int32_t ew_requant(int32_t acc, int32_t m, int32_t s)
{
    const int64_t v = (int64_t)acc * m;
    const int64_t q = v >> s;
    const int64_t r = v - q * ((int64_t)1 << s);
    const int64_t half = (int64_t)1 << (s - 1);
    return (int32_t)(q + (r > half || (r == half && (q & 1))));
}

static int8_t ew_sat(int32_t v, int32_t lo, int32_t hi)
{
    return (int8_t)(v < lo ? lo : (v > hi ? hi : v));
}

static int ew_min(int a, int b) { return a < b ? a : b; }
static int ew_max(int a, int b) { return a > b ? a : b; }

void ew_conv(const int8_t *x, int cin, int h, int w, const int8_t *wt, const int32_t *bias, int cout,
             int kh, int kw, int sh, int sw, int pt, int pl, int ho, int wo, int depthwise,
             int32_t zin, int32_t zout, const int32_t *mult, const int32_t *shift, int8_t *y)
{
    const int wstride = (depthwise ? 1 : cin) * kh * kw;
    int co, oh, ow, ci, i, j;
    for (co = 0; co < cout; co++) {
        const int8_t *wc = wt + co * wstride;
        const int ci0 = depthwise ? co : 0, ci1 = depthwise ? co + 1 : cin;
        for (oh = 0; oh < ho; oh++) {
            const int ih0 = oh * sh - pt;
            const int i0 = ew_max(0, -ih0), i1 = ew_min(kh, h - ih0);
            for (ow = 0; ow < wo; ow++) {
                const int iw0 = ow * sw - pl;
                const int j0 = ew_max(0, -iw0), j1 = ew_min(kw, w - iw0);
                int32_t acc = bias[co];
                /* (x - zin) * wt summed as x * wt - zin * wt: one multiply-add per tap in the loop. */
                int32_t wsum = 0;
                for (ci = ci0; ci < ci1; ci++) {
                    const int8_t *xc = x + ci * h * w + ih0 * w + iw0;
                    const int8_t *wk = wc + (depthwise ? 0 : ci) * kh * kw;
                    for (i = i0; i < i1; i++) {
                        const int8_t *xr = xc + i * w;
                        const int8_t *wr = wk + i * kw;
                        for (j = j0; j < j1; j++) {
                            acc += (int32_t)xr[j] * wr[j];
                            wsum += wr[j];
                        }
                    }
                }
                acc -= zin * wsum;
                y[(co * ho + oh) * wo + ow] = ew_sat(zout + ew_requant(acc, mult[co], shift[co]), -128, 127);
            }
        }
    }
}

void ew_fc(const int8_t *x, int k, const int8_t *wt, const int32_t *bias, int n, int32_t zin, int32_t zout,
           const int32_t *mult, const int32_t *shift, int8_t *y)
{
    int o, i;
    for (o = 0; o < n; o++) {
        const int8_t *wr = wt + o * k;
        int32_t acc = 0, wsum = 0;
        for (i = 0; i < k; i++) {
            acc += (int32_t)x[i] * wr[i];
            wsum += wr[i];
        }
        acc += bias[o] - zin * wsum;
        y[o] = ew_sat(zout + ew_requant(acc, mult[o], shift[o]), -128, 127);
    }
}

void ew_maxpool(const int8_t *x, int c, int h, int w, int kh, int kw, int sh, int sw, int pt, int pl,
                int ho, int wo, int same_scale, int32_t zin, int32_t zout, int32_t mult, int32_t shift,
                int8_t *y)
{
    int ch, oh, ow, i, j;
    for (ch = 0; ch < c; ch++) {
        for (oh = 0; oh < ho; oh++) {
            const int ih0 = oh * sh - pt;
            const int i0 = ew_max(0, -ih0), i1 = ew_min(kh, h - ih0);
            for (ow = 0; ow < wo; ow++) {
                const int iw0 = ow * sw - pl;
                const int j0 = ew_max(0, -iw0), j1 = ew_min(kw, w - iw0);
                int32_t m = -128;
                for (i = i0; i < i1; i++)
                    for (j = j0; j < j1; j++) {
                        const int32_t v = x[(ch * h + ih0 + i) * w + iw0 + j];
                        if (v > m) m = v;
                    }
                y[(ch * ho + oh) * wo + ow] =
                    same_scale ? (int8_t)m : ew_sat(zout + ew_requant(m - zin, mult, shift), -128, 127);
            }
        }
    }
}

void ew_avgpool(const int8_t *x, int c, int h, int w, int kh, int kw, int sh, int sw, int pt, int pl,
                int ho, int wo, int32_t zin, int32_t zout, int32_t mult, int32_t shift, int8_t *y)
{
    int ch, oh, ow, i, j;
    for (ch = 0; ch < c; ch++) {
        for (oh = 0; oh < ho; oh++) {
            const int ih0 = oh * sh - pt;
            const int i0 = ew_max(0, -ih0), i1 = ew_min(kh, h - ih0);
            for (ow = 0; ow < wo; ow++) {
                const int iw0 = ow * sw - pl;
                const int j0 = ew_max(0, -iw0), j1 = ew_min(kw, w - iw0);
                int32_t acc = 0;
                for (i = i0; i < i1; i++)
                    for (j = j0; j < j1; j++)
                        acc += x[(ch * h + ih0 + i) * w + iw0 + j] - zin;
                y[(ch * ho + oh) * wo + ow] = ew_sat(zout + ew_requant(acc, mult, shift), -128, 127);
            }
        }
    }
}

void ew_add(const int8_t *a, const int8_t *b, int n, int32_t za, int32_t zb, int32_t zout,
            const int32_t *mult, const int32_t *shift, int8_t *y)
{
    int i;
    for (i = 0; i < n; i++) {
        /* Both inputs go to a common scale with 20 bits of headroom before the sum is requantized. */
        const int32_t ta = ew_requant((a[i] - za) * (1 << 20), mult[0], shift[0]);
        const int32_t tb = ew_requant((b[i] - zb) * (1 << 20), mult[1], shift[1]);
        y[i] = ew_sat(zout + ew_requant(ta + tb, mult[2], shift[2]), -128, 127);
    }
}

void ew_clamp(const int8_t *x, int n, int32_t zin, int32_t zout, int32_t mult, int32_t shift,
              int32_t lo, int32_t hi, int8_t *y)
{
    int i;
    for (i = 0; i < n; i++)
        y[i] = ew_sat(zout + ew_requant(x[i] - zin, mult, shift), lo, hi);
}

int ew_argmax(const int8_t *x, int n)
{
    int i, best = 0;
    for (i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}
