/* Fused loops of a GMM layer's training step (dcgmm.native builds this file with the system C compiler).
 *
 * Each function does in one pass over memory what the PyTorch path does in several element-wise operations;
 * dcgmm/layers/gmm.py holds that PyTorch path, which stays the reference (tests/test_native.py compares the
 * two) and the fallback where no compiler is found. Arrays are float32 (indices int64; window_sums' totals
 * double), C-contiguous. With DCGMM_VECTOR_MATH, expf and logf are declared as SIMD functions so that the loops
 * vectorise through glibc's libmvec. Built with -fopenmp (only where PyTorch itself runs on libgomp, whose
 * threads these loops then share), the loops split their work over `threads` OpenMP threads where it is large
 * enough to pay; without it they run on one.
 */
#include <math.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#else
static int omp_get_thread_num(void) { return 0; }
static int omp_get_num_threads(void) { return 1; }
#endif

#ifdef DCGMM_VECTOR_MATH
__attribute__((simd("notinbranch"))) float expf(float);
__attribute__((simd("notinbranch"))) float logf(float);
#endif

static const float LOG_2PI = 1.8378770664093453f;
/* Loops over fewer elements than this run on one thread: starting the others would cost more. */
#define PARALLEL_SIZE 16384

/* log of sum_k exp(logits[k]), the normaliser of softmax(logits), K >= 1. */
static float log_sum_exp(const float *logits, int64_t K)
{
    float top = logits[0], sum = 0.0f;
    for (int64_t k = 1; k < K; k++)
        top = logits[k] > top ? logits[k] : top;
    for (int64_t k = 0; k < K; k++)
        sum += expf(logits[k] - top);
    return top + logf(sum);
}

/* tau (K, D), b = tau mu (K, D) with |b| < tiny set to 0, and c (K,) of GMM.coefficients:
 *   log tau = log_tau_max - softplus(raw),  c_k = log pi_k + (sum_d log tau_kd - D log 2 pi - sum_d b_kd mu_kd) / 2.
 * softplus(x) = max(x, 0) + log(1 + exp(-|x|)). */
void gaussian_terms(const float *weight_logits, const float *mu, const float *raw, int64_t K, int64_t D,
                    float log_tau_max, float tiny, int threads, float *tau, float *b, float *c)
{
    float log_norm = log_sum_exp(weight_logits, K);
    (void)threads;
#pragma omp parallel for num_threads(threads) if (K * D >= PARALLEL_SIZE)
    for (int64_t k = 0; k < K; k++) {
        const float *r = raw + k * D, *m = mu + k * D;
        float *t = tau + k * D, *bk = b + k * D, sum_log_tau = 0.0f, sum_b_mu = 0.0f;
#pragma omp simd reduction(+ : sum_log_tau, sum_b_mu)
        for (int64_t d = 0; d < D; d++) {
            float x = r[d], positive = x > 0.0f ? x : 0.0f, minus_abs = x > 0.0f ? -x : x;
            float log_tau = log_tau_max - (positive + logf(1.0f + expf(minus_abs)));
            float precision = expf(log_tau), coefficient = precision * m[d];
            coefficient = (coefficient < tiny && coefficient > -tiny) ? 0.0f : coefficient;
            t[d] = precision;
            bk[d] = coefficient;
            sum_log_tau += log_tau;
            sum_b_mu += coefficient * m[d];
        }
        c[k] = weight_logits[k] - log_norm + 0.5f * (sum_log_tau - (float)D * LOG_2PI - sum_b_mu);
    }
}

/* The gradients of max_component_step (see its docstring) from the sums S_a, S_b (K, D) and the mass m (K,):
 *   d/dmu = [b != 0] tau (m mu - S_b),
 *   d/draw = (S_a tau - m + b (m mu - 2 S_b)) / 2 * (tau / tau_max - 1),   1 / tau_max = variance_floor,
 *   d/dweight_logits = pi sum(m) - m. */
void gmm_gradients(const float *weight_logits, const float *mu, const float *tau, const float *b, const float *stats_a,
                   const float *stats_b, const float *mass, int64_t K, int64_t D, float variance_floor, int threads,
                   float *grad_w, float *grad_mu, float *grad_raw)
{
    float log_norm = log_sum_exp(weight_logits, K), total = 0.0f;
    for (int64_t k = 0; k < K; k++)
        total += mass[k];
    (void)threads;
#pragma omp parallel for num_threads(threads) if (K * D >= PARALLEL_SIZE)
    for (int64_t k = 0; k < K; k++) {
        float mk = mass[k];
        grad_w[k] = expf(weight_logits[k] - log_norm) * total - mk;
        const float *m = mu + k * D, *t = tau + k * D, *bk = b + k * D, *sa = stats_a + k * D, *sb = stats_b + k * D;
        float *gm = grad_mu + k * D, *gr = grad_raw + k * D;
#pragma omp simd
        for (int64_t d = 0; d < D; d++) {
            float m_mu = m[d] * mk;
            gm[d] = bk[d] == 0.0f ? 0.0f : (m_mu - sb[d]) * t[d];
            gr[d] = ((m_mu - 2.0f * sb[d]) * bk[d] + sa[d] * t[d] - mk) * (0.5f * variance_floor * t[d] - 0.5f);
        }
    }
}

/* Per-component sums of the winners' windows: for every window position p = (n, i, j) of a Folding with window
 * (fy, fx) and stride (sy, sx) over features (N, H, W, C), add the window (fy, fx, C) to sums[best[p]].
 * best: (N, Ho, Wo); sums: (K, fy, fx, C). A window row is fx * C contiguous floats in both arrays. Returns 0, or
 * -1 (at once, nothing written out of bounds) for a winner outside [0, K). The sums are kept in double:
 * thousands of small values, many ~1e-16 (responsibilities), would otherwise be added one by one to a float32
 * total and partly lost. */
static int window_sums_of(const float *features, int64_t N, int64_t H, int64_t W, int64_t C, const int64_t *best,
                          int64_t Ho, int64_t Wo, int64_t fy, int64_t fx, int64_t sy, int64_t sx, int64_t K, double *sums)
{
    int64_t row = fx * C;
    for (int64_t n = 0; n < N; n++)
        for (int64_t i = 0; i < Ho; i++)
            for (int64_t j = 0; j < Wo; j++) {
                int64_t k = best[(n * Ho + i) * Wo + j];
                if (k < 0 || k >= K)
                    return -1;
                for (int64_t dy = 0; dy < fy; dy++) {
                    const float *source = features + ((n * H + i * sy + dy) * W + j * sx) * C;
                    double *target = sums + (k * fy + dy) * row;
#pragma omp simd
                    for (int64_t t = 0; t < row; t++)
                        target[t] += source[t];
                }
            }
    return 0;
}

/* window_sums_of on up to `threads` threads, each over its share of the N images: thread 0 adds into sums
 * (zeroed by the caller), thread t > 0 into scratch row t - 1 (scratch: (threads - 1, K fy fx C), zeroed here);
 * then each thread adds a slice of the scratch rows into sums. */
int window_sums(const float *features, int64_t N, int64_t H, int64_t W, int64_t C, const int64_t *best, int64_t Ho,
                int64_t Wo, int64_t fy, int64_t fx, int64_t sy, int64_t sx, int64_t K, int threads, double *sums,
                double *scratch)
{
    int64_t size = K * fy * fx * C;
    int failed = 0;
    (void)threads; /* without OpenMP */
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        int t = omp_get_thread_num(), T = omp_get_num_threads();
        int64_t first = N * t / T, last = N * (t + 1) / T;
        double *totals = t == 0 ? sums : scratch + (t - 1) * size;
        for (int64_t i = 0; t > 0 && i < size; i++)
            totals[i] = 0.0;
        failed |= window_sums_of(features + first * H * W * C, last - first, H, W, C, best + first * Ho * Wo, Ho, Wo,
                                 fy, fx, sy, sx, K, totals) != 0;
#pragma omp barrier
        for (int u = 1; u < T; u++) {
            const double *other = scratch + (u - 1) * size;
#pragma omp simd
            for (int64_t i = size * t / T; i < size * (t + 1) / T; i++)
                sums[i] += other[i];
        }
    }
    return failed ? -1 : 0;
}

/* The winners of the rows of a log joint, and its responsibilities, 16 rows at a time.
 *
 * For rows p of scores (P, K): top[p] = max_k scores[p, k] (NaN if the row holds a NaN), best[p] its first
 * index, counts[k] += the rows won by k; out (P, K) = softmax of log_joint's row with every entry raised to 35
 * below the row's maximum (gmm.responsibilities). scores may be log_joint itself (the plain max-component loss)
 * or its smoothing (the annealed one). Each block of 16 rows is transposed into `block` so that every
 * operation runs across 16 rows at once: a row of 25 or 36 components fills no whole vector. */
#define ROWS 16
typedef float floats __attribute__((vector_size(ROWS * sizeof(float))));
typedef int32_t ints __attribute__((vector_size(ROWS * sizeof(int32_t))));
typedef uint32_t unsigned_ints __attribute__((vector_size(ROWS * sizeof(uint32_t))));

static inline floats pick(ints mask, floats yes, floats no) { return (floats)(((ints)yes & mask) | ((ints)no & ~mask)); }

/* exp(x) for x in [-88, 0]: x = n ln 2 + r with |r| <= ln 2 / 2 (Cody-Waite), a degree-6 polynomial for exp(r)
 * (Cephes' expf coefficients, error ~1 ulp), and 2^n put into the exponent bits. */
static inline floats exp_nonpositive(floats x)
{
    ints n = __builtin_convertvector(x * 1.44269504088896341f - 0.5f, ints); /* rounds to nearest: x <= 0 */
    floats nf = __builtin_convertvector(n, floats);
    floats r = x - nf * 0.693359375f + nf * 2.12194440e-4f;
    floats p = (floats){} + 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    return p * (floats)((unsigned_ints)(n + 127) << 23);
}

static void winners_of(const float *scores, const float *log_joint, int64_t P, int64_t K, float floor_ratio,
                       float *top, int64_t *best, float *out, int64_t *counts)
{
    floats block[K];
    for (int64_t p = 0; p < P; p += ROWS) {
        int64_t rows = P - p < ROWS ? P - p : ROWS;
        for (int64_t k = 0; k < K; k++) {
            block[k] = (floats){};
            for (int64_t r = 0; r < rows; r++)
                block[k][r] = scores[(p + r) * K + k];
        }
        floats high = block[0];
        ints winner = (ints){}, nan = block[0] != block[0];
        for (int64_t k = 1; k < K; k++) {
            ints above = block[k] > high;
            winner = (((ints){} + (int32_t)k) & above) | (winner & ~above);
            high = pick(above, block[k], high);
            nan |= block[k] != block[k];
        }
        high = pick(nan, (floats){} + NAN, high);
        for (int64_t r = 0; r < rows; r++) {
            top[p + r] = high[r];
            best[p + r] = winner[r];
            counts[winner[r]]++;
        }
        if (log_joint != scores) {
            for (int64_t k = 0; k < K; k++)
                for (int64_t r = 0; r < rows; r++)
                    block[k][r] = log_joint[(p + r) * K + k];
            high = block[0];
            nan = block[0] != block[0];
            for (int64_t k = 1; k < K; k++) {
                high = pick(block[k] > high, block[k], high);
                nan |= block[k] != block[k];
            }
            high = pick(nan, (floats){} + NAN, high);
        }
        floats total = (floats){}, low = high - floor_ratio;
        for (int64_t k = 0; k < K; k++) {
            block[k] = exp_nonpositive(pick(block[k] < low, low, block[k]) - high);
            total += block[k];
        }
        floats scale = 1.0f / total;
        for (int64_t r = 0; r < rows; r++)
            for (int64_t k = 0; k < K; k++)
                out[(p + r) * K + k] = block[k][r] * scale[r];
    }
}

/* winners_of on up to `threads` threads, each over a share of the blocks of rows. counts (K,): zeroed by the
 * caller. K at most 1024 (the block lives on the stack: 64 KB). */
void winners(const float *scores, const float *log_joint, int64_t P, int64_t K, float floor_ratio, int threads,
             float *top, int64_t *best, float *out, int64_t *counts)
{
    (void)threads; /* without OpenMP */
#pragma omp parallel num_threads(threads) reduction(+ : counts[:K])
    {
        int t = omp_get_thread_num(), T = omp_get_num_threads();
        int64_t blocks = (P + ROWS - 1) / ROWS, first = blocks * t / T * ROWS, last = blocks * (t + 1) / T * ROWS;
        last = last < P ? last : P;
        if (first < last)
            winners_of(scores + first * K, log_joint + first * K, last - first, K, floor_ratio, top + first,
                       best + first, out + first * K, counts);
    }
}

/* Per-component sums of the winners' rows and of their squares: for every row p of x (P, D), add x_p^2 to
 * stats_a[best[p]] and x_p to stats_b[best[p]]. stats_a, stats_b: (K, D), zeroed by the caller. In float32, as
 * the index-adds they replace: the unfolded step has few rows per component (a top layer: one per image), and
 * zeroing, filling and converting K x D double totals costs more than the additions themselves. Returns 0, or
 * -1 as window_sums. */
int winner_sums(const float *x, int64_t P, int64_t D, const int64_t *best, int64_t K, float *stats_a, float *stats_b)
{
    for (int64_t p = 0; p < P; p++) {
        if (best[p] < 0 || best[p] >= K)
            return -1;
        const float *row = x + p * D;
        float *sa = stats_a + best[p] * D, *sb = stats_b + best[p] * D;
#pragma omp simd
        for (int64_t d = 0; d < D; d++) {
            sa[d] += row[d] * row[d];
            sb[d] += row[d];
        }
    }
    return 0;
}

/* The convolution's input [x^2, x] of a Folding + GMM pair: features (M, 2C) from x (M, C), M = N H W pixels;
 * row m is (x_m1^2 ... x_mC^2, x_m1 ... x_mC). */
void square_features(const float *x, int64_t M, int64_t C, int threads, float *features)
{
    (void)threads;
    if (C == 1) { /* grey images: one loop over all pixels, which vectorises */
#pragma omp parallel for simd num_threads(threads) if (M >= PARALLEL_SIZE)
        for (int64_t m = 0; m < M; m++) {
            features[2 * m] = x[m] * x[m];
            features[2 * m + 1] = x[m];
        }
        return;
    }
#pragma omp parallel for num_threads(threads) if (M * C >= PARALLEL_SIZE)
    for (int64_t m = 0; m < M; m++) {
        const float *source = x + m * C;
        float *target = features + m * 2 * C;
#pragma omp simd
        for (int64_t c = 0; c < C; c++) {
            target[c] = source[c] * source[c];
            target[C + c] = source[c];
        }
    }
}
