/* edgewise int8 kernels: dependency-free C99, no malloc, no floating point.
 *
 * Tensors are int8, NCHW without the batch dimension (1-D signals are H = 1). Every op requantizes its
 * int32 accumulator with a Q31 multiplier m and a right shift s (real scale = m * 2^-s):
 *     y = zero_point_out + round_half_even(acc * m * 2^-s), saturated to int8, in 64-bit integers.
 * Convolutions and fully connected layers take a bias that already holds -zin * sum(weights), so their
 * inner loop is a plain int8 dot product; a convolution's weight rows are zero-padded to
 * kp bytes (a multiple of 16) and it takes `col`, a kp-byte scratch buffer in the arena for one
 * receptive field.
 * Right shifts of negative values are arithmetic on every compiler edgewise targets (gcc, clang,
 * arm-none-eabi-gcc); the generated tests check that the results match edgewise's reference bit for bit.
 */
#ifndef EW_KERNELS_H
#define EW_KERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

void ew_conv(const int8_t *x, int cin, int h, int w, const int8_t *wt, const int32_t *bias, int cout,
             int kh, int kw, int sh, int sw, int dh, int dw, int pt, int pl, int ho, int wo, int groups, int kp,
             int32_t zin, int32_t zout, const int32_t *mult, const int32_t *shift, int8_t *col, int8_t *y);

void ew_fc(const int8_t *x, int k, const int8_t *wt, const int32_t *bias, int n, int32_t zout,
           const int32_t *mult, const int32_t *shift, int8_t *y);

void ew_maxpool(const int8_t *x, int c, int h, int w, int kh, int kw, int sh, int sw, int pt, int pl,
                int ho, int wo, int same_scale, int32_t zin, int32_t zout, int32_t mult, int32_t shift,
                int8_t *y);

void ew_avgpool(const int8_t *x, int c, int h, int w, int kh, int kw, int sh, int sw, int pt, int pl,
                int ho, int wo, int32_t zin, int32_t zout, int32_t mult, int32_t shift, int8_t *y);

void ew_add(const int8_t *a, const int8_t *b, int n, int32_t za, int32_t zb, int32_t zout,
            const int32_t *mult, const int32_t *shift, int8_t *y);

void ew_clamp(const int8_t *x, int n, int32_t zin, int32_t zout, int32_t mult, int32_t shift,
              int32_t lo, int32_t hi, int8_t *y);

/* y = zout + requant((a - za) * (b - zb)) over c channels of `inner` values; b holds b_inner values per
 * channel: 1 (one per channel, or one for all when c == 1) or inner (the same shape as a). */
void ew_mul(const int8_t *a, const int8_t *b, int c, int inner, int b_inner, int32_t za, int32_t zb, int32_t zout,
            int32_t mult, int32_t shift, int8_t *y);

/* Any elementwise activation of an int8 tensor (Sigmoid, Tanh, HardSwish, ...): a 256-entry table indexed
 * by x + 128, computed by the compiler from the op's float definition and the in/out quantization. */
void ew_lut(const int8_t *x, int n, const int8_t *table, int8_t *y);

/* Softmax over the last axis (rows of k): table[d] = 2^20 exp(-d * scale_in) for d = max - x;
 * y = round(table[d] * r / (sum << 16)) + zout with r = round(2^16 / scale_out). */
void ew_softmax(const int8_t *x, int rows, int k, const int32_t *table, int32_t r, int32_t zout, int8_t *y);

/* Index of the largest value: the predicted class of a classifier's int8 logits. */
int ew_argmax(const int8_t *x, int n);

#ifdef __cplusplus
}
#endif

#endif
