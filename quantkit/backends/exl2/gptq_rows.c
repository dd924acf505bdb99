/* quantkit: the row-by-row inner loop of EXL2's GPTQ for one group, in plain C.
 *
 * Same arithmetic as quant.py's torch loop (which stays as the fallback when no
 * C compiler is present): row c first receives the error feedback of the
 * group's earlier rows, is quantized with the group's per-column scales, and
 * its dequantized value is rounded to fp16 exactly as exllamav2's kernels do
 * (__hmul of two fp16-exact values). Built at first use with the system C
 * compiler and loaded with ctypes; see quant.py.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

/* Round a float to the nearest fp16 value (ties to even) and return it as a float. */
static inline float round_fp16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = x & 0x80000000u, ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return f;                 /* inf, nan */
    if (ax < 0x38800000u) {                          /* below 2^-14: fp16 subnormals, step 2^-24 */
        float a;
        memcpy(&a, &ax, 4);
        a = rintf(a * 16777216.0f) * (1.0f / 16777216.0f);
        return sign ? -a : a;
    }
    ax += 0x0fffu + ((ax >> 13) & 1u);               /* round the 23-bit mantissa to 10 bits */
    ax &= ~0x1fffu;
    if (ax > 0x477fe000u) ax = 0x7f800000u;          /* above 65504: inf */
    x = sign | ax;
    memcpy(&f, &x, 4);
    return f;
}

/* w: [rows, cols] (act-order, updated in place); hinv: [rows, rows] upper factor;
 * rows a..b-1 form the group; scale: [cols]; outputs for those rows: qint, quant, err. */
void gptq_group(float *w, const float *hinv, int64_t rows, int64_t cols, int64_t a, int64_t b,
                const float *scale, float qzero, float maxq, int16_t *qint, float *quant, float *err) {
    for (int64_t c = a; c < b; c++) {
        float *wc = w + c * cols;
        for (int64_t j = a; j < c; j++) {
            const float h = hinv[j * rows + c];
            const float *ej = err + j * cols;
            for (int64_t k = 0; k < cols; k++) wc[k] -= h * ej[k];
        }
        const float d = hinv[c * rows + c];
        float *qc = quant + c * cols, *ec = err + c * cols;
        int16_t *ic = qint + c * cols;
        for (int64_t k = 0; k < cols; k++) {
            float q = rintf(wc[k] / scale[k]) + qzero;
            q = q < 0.0f ? 0.0f : (q > maxq ? maxq : q);
            ic[k] = (int16_t)q;
            float deq = round_fp16((q - qzero) * scale[k]);
            qc[k] = deq;
            ec[k] = (wc[k] - deq) / d;
        }
    }
}
