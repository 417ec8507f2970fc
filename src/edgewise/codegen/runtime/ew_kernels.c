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

#if defined(__ARM_FEATURE_SIMD32) && defined(__ARM_FEATURE_DSP)
/* Cortex-M4/M7/M33 with the DSP extension: SMLAD does two 16-bit multiply-accumulates in one instruction
 * (as CMSIS-NN's kernels do). Four int8 values are loaded as one word, sign-extended in pairs (SXTB16:
 * bytes 0 and 2; rotated by 8: bytes 1 and 3), and accumulated exactly as the plain loop would: the same
 * integer sums, so the results stay bit-exact with the reference. */
#include <arm_acle.h>
#include <string.h>

static uint32_t ew_ror8(uint32_t x)
{
    return x >> 8 | x << 24;
}

static uint32_t ew_word(const int8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);  /* an unaligned word load on ARMv7-M */
    return v;
}

static int32_t ew_dot(const int8_t *a, const int8_t *b, int n)
{
    int32_t acc = 0;
    int i;
    for (i = 0; i + 4 <= n; i += 4) {
        const uint32_t va = ew_word(a + i), vb = ew_word(b + i);
        acc = __smlad(__sxtb16(va), __sxtb16(vb), acc);
        acc = __smlad(__sxtb16(ew_ror8(va)), __sxtb16(ew_ror8(vb)), acc);
    }
    for (; i < n; i++)
        acc += (int32_t)a[i] * (int32_t)b[i];
    return acc;
}
#else
/* Dot product of two int8 vectors, the inner loop of every convolution and fully connected layer.
 * Written as a plain reduction so compilers can vectorize it (x86: pmaddwd). */
static int32_t ew_dot(const int8_t *a, const int8_t *b, int n)
{
    /* Blocks of 16 with a constant trip count: gcc -O2 vectorizes these (very-cheap cost model). */
    const int n16 = n & ~15;
    int32_t acc = 0;
    int i, j;
    for (i = 0; i < n16; i += 16)
        for (j = 0; j < 16; j++)
            acc += (int32_t)a[i + j] * (int32_t)b[i + j];
    for (; i < n; i++)
        acc += (int32_t)a[i] * (int32_t)b[i];
    return acc;
}
#endif

/* One row of a receptive field: kw taps, dw apart, starting at column iw0 of input row `row` (NULL: a
 * padding row); taps outside the row hold the zero point. */
static int8_t *ew_gather_row(int8_t *c, const int8_t *row, int w, int iw0, int kw, int dw, int8_t zin)
{
    int j;
    if (row == 0) {
        for (j = 0; j < kw; j++) *c++ = zin;
        return c;
    }
    if (dw == 1) {
        const int j0 = ew_max(0, -iw0), j1 = ew_min(kw, w - iw0);
        if (j1 <= j0) {
            for (j = 0; j < kw; j++) *c++ = zin;
            return c;
        }
        for (j = 0; j < j0; j++) *c++ = zin;
        for (j = j0; j < j1; j++) *c++ = row[iw0 + j];
        for (j = j1; j < kw; j++) *c++ = zin;
        return c;
    }
    for (j = 0; j < kw; j++) {
        const int iw = iw0 + j * dw;
        *c++ = (iw >= 0 && iw < w) ? row[iw] : zin;
    }
    return c;
}

/* Four dot products of one vector `a` (length n, a multiple of 16) with four consecutive rows of `b`. */
#if defined(__ARM_FEATURE_SIMD32) && defined(__ARM_FEATURE_DSP)
static void ew_dot4(const int8_t *a, const int8_t *b, int n, int32_t *acc)
{
    /* `a`'s four values are sign-extended once for the four rows */
    const int8_t *b0 = b, *b1 = b + n, *b2 = b + 2 * n, *b3 = b + 3 * n;
    int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int i;
    for (i = 0; i < n; i += 4) {
        const uint32_t va = ew_word(a + i);
        const uint32_t lo = __sxtb16(va), hi = __sxtb16(ew_ror8(va));
        uint32_t vb = ew_word(b0 + i);
        s0 = __smlad(lo, __sxtb16(vb), s0);
        s0 = __smlad(hi, __sxtb16(ew_ror8(vb)), s0);
        vb = ew_word(b1 + i);
        s1 = __smlad(lo, __sxtb16(vb), s1);
        s1 = __smlad(hi, __sxtb16(ew_ror8(vb)), s1);
        vb = ew_word(b2 + i);
        s2 = __smlad(lo, __sxtb16(vb), s2);
        s2 = __smlad(hi, __sxtb16(ew_ror8(vb)), s2);
        vb = ew_word(b3 + i);
        s3 = __smlad(lo, __sxtb16(vb), s3);
        s3 = __smlad(hi, __sxtb16(ew_ror8(vb)), s3);
    }
    acc[0] = s0;
    acc[1] = s1;
    acc[2] = s2;
    acc[3] = s3;
}
#else
static void ew_dot4(const int8_t *a, const int8_t *b, int n, int32_t *acc)
{
    const int8_t *b0 = b, *b1 = b + n, *b2 = b + 2 * n, *b3 = b + 3 * n;
    int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int i, j;
    for (i = 0; i < n; i += 16)
        for (j = 0; j < 16; j++) {
            const int32_t v = a[i + j];
            s0 += v * b0[i + j];
            s1 += v * b1[i + j];
            s2 += v * b2[i + j];
            s3 += v * b3[i + j];
        }
    acc[0] = s0;
    acc[1] = s1;
    acc[2] = s2;
    acc[3] = s3;
}
#endif

void ew_conv(const int8_t *x, int cin, int h, int w, const int8_t *wt, const int32_t *bias, int cout,
             int kh, int kw, int sh, int sw, int dh, int dw, int pt, int pl, int ho, int wo, int groups, int kp,
             int32_t zin, int32_t zout, const int32_t *mult, const int32_t *shift, int8_t *col, int8_t *y)
{
    /* Each output pixel's receptive field is gathered once into `col` (padding taps hold zin), then
     * dotted with every output channel's weights. The bias already holds -zin * sum(weights), so
     * sum((x - zin) * w) + b == dot(col, w) + bias. Weight rows are zero-padded to kp (a multiple of
     * 16) so the dot product has no scalar tail; col's padding is zeroed once here. Taps are dh rows and
     * dw columns apart (dilation). Depthwise (groups == cin == cout) gathers one channel per output; other
     * groupings run as one standard convolution per group on its slice of channels. */
    const int depthwise = groups > 1 && groups == cin && cout == cin;
    const int k = (depthwise ? 1 : cin) * kh * kw;
    int oh, ow, co, ci, i;
    if (groups > 1 && !depthwise) {
        const int cg = cin / groups, og = cout / groups;
        int g;
        for (g = 0; g < groups; g++)
            ew_conv(x + g * cg * h * w, cg, h, w, wt + g * og * kp, bias + g * og, og, kh, kw, sh, sw, dh, dw,
                    pt, pl, ho, wo, 1, kp, zin, zout, mult + g * og, shift + g * og, col, y + g * og * ho * wo);
        return;
    }
    for (i = k; i < kp; i++) col[i] = 0;
    for (oh = 0; oh < ho; oh++) {
        const int ih0 = oh * sh - pt;
        for (ow = 0; ow < wo; ow++) {
            const int iw0 = ow * sw - pl;
            if (!depthwise) {
                int8_t *c = col;
                if (ih0 >= 0 && ih0 + (kh - 1) * dh < h && iw0 >= 0 && iw0 + (kw - 1) * dw < w) {
                    /* Interior pixel: plain copies, no padding checks. */
                    for (ci = 0; ci < cin; ci++) {
                        const int8_t *src = x + (ci * h + ih0) * w + iw0;
                        for (i = 0; i < kh; i++, src += dh * w) {
                            int j;
                            for (j = 0; j < kw; j++) *c++ = src[j * dw];
                        }
                    }
                } else {
                    for (ci = 0; ci < cin; ci++)
                        for (i = 0; i < kh; i++) {
                            const int ih = ih0 + i * dh;
                            c = ew_gather_row(c, (ih >= 0 && ih < h) ? x + (ci * h + ih) * w : 0, w, iw0, kw, dw,
                                              (int8_t)zin);
                        }
                }
                /* Four output channels per pass over the column: each gathered value is loaded once
                 * for four multiply-adds. */
                for (co = 0; co + 4 <= cout; co += 4) {
                    int32_t acc[4];
                    ew_dot4(col, wt + co * kp, kp, acc);
                    for (i = 0; i < 4; i++)
                        y[((co + i) * ho + oh) * wo + ow] =
                            ew_sat(zout + ew_requant(bias[co + i] + acc[i], mult[co + i], shift[co + i]), -128, 127);
                }
                for (; co < cout; co++) {
                    const int32_t acc = bias[co] + ew_dot(col, wt + co * kp, kp);
                    y[(co * ho + oh) * wo + ow] = ew_sat(zout + ew_requant(acc, mult[co], shift[co]), -128, 127);
                }
                continue;
            }
            if (ih0 >= 0 && ih0 + (kh - 1) * dh < h && iw0 >= 0 && iw0 + (kw - 1) * dw < w) {
                /* Interior pixel of a depthwise convolution: the taps straight from the input, no column */
                for (co = 0; co < cout; co++) {
                    const int8_t *src = x + (co * h + ih0) * w + iw0, *wr = wt + co * kp;
                    int32_t acc = bias[co];
                    int j;
                    for (i = 0; i < kh; i++, src += dh * w, wr += kw)
                        for (j = 0; j < kw; j++)
                            acc += (int32_t)src[j * dw] * (int32_t)wr[j];
                    y[(co * ho + oh) * wo + ow] = ew_sat(zout + ew_requant(acc, mult[co], shift[co]), -128, 127);
                }
                continue;
            }
            for (co = 0; co < cout; co++) {
                int32_t acc;
                int8_t *c = col;
                for (i = 0; i < kh; i++) {
                    const int ih = ih0 + i * dh;
                    c = ew_gather_row(c, (ih >= 0 && ih < h) ? x + (co * h + ih) * w : 0, w, iw0, kw, dw,
                                      (int8_t)zin);
                }
                acc = bias[co] + ew_dot(col, wt + co * kp, kp);
                y[(co * ho + oh) * wo + ow] = ew_sat(zout + ew_requant(acc, mult[co], shift[co]), -128, 127);
            }
        }
    }
}

void ew_fc(const int8_t *x, int k, const int8_t *wt, const int32_t *bias, int n, int32_t zout,
           const int32_t *mult, const int32_t *shift, int8_t *y)
{
    int o;
    for (o = 0; o < n; o++) {
        const int32_t acc = bias[o] + ew_dot(x, wt + o * k, k);  /* bias holds -zin * sum(weights) */
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
                const int8_t *src = x + (ch * h + ih0) * w + iw0;
                for (i = i0; i < i1; i++)
                    for (j = j0; j < j1; j++) {
                        const int32_t v = src[i * w + j];
                        m = v > m ? v : m;
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

void ew_mul(const int8_t *a, const int8_t *b, int c, int inner, int b_inner, int32_t za, int32_t zb, int32_t zout,
            int32_t mult, int32_t shift, int8_t *y)
{
    int ch, i;
    for (ch = 0; ch < c; ch++) {
        const int8_t *pa = a + ch * inner, *pb = b + ch * b_inner;
        int8_t *py = y + ch * inner;
        for (i = 0; i < inner; i++) {
            const int32_t vb = (int32_t)pb[b_inner == 1 ? 0 : i] - zb;
            py[i] = ew_sat(zout + ew_requant(((int32_t)pa[i] - za) * vb, mult, shift), -128, 127);
        }
    }
}

void ew_lut(const int8_t *x, int n, const int8_t *table, int8_t *y)
{
    int i;
    for (i = 0; i < n; i++)
        y[i] = table[(int)x[i] + 128];
}

void ew_softmax(const int8_t *x, int rows, int k, const int32_t *table, int32_t r, int32_t zout, int8_t *y)
{
    int row, i;
    for (row = 0; row < rows; row++, x += k, y += k) {
        int32_t mx = x[0];
        int64_t den;
        int32_t sum = 0;
        for (i = 1; i < k; i++)
            mx = x[i] > mx ? x[i] : mx;
        for (i = 0; i < k; i++)
            sum += table[mx - x[i]];
        den = (int64_t)sum << 16;
        for (i = 0; i < k; i++) {
            const int64_t q = ((int64_t)table[mx - x[i]] * r + den / 2) / den;
            y[i] = ew_sat((int32_t)q + zout, -128, 127);
        }
    }
}
