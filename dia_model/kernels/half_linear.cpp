// y = x @ w.T for bf16 / fp16 weights on x86 CPUs with AVX2 + FMA (+ F16C).
//
// Why: on CPUs without native bf16 matrix instructions (AVX2-only parts), PyTorch's
// bf16 matmul takes a slow path (measured 4-20x slower than fp32 here), so a bf16
// model would be slower than fp32 despite streaming half the bytes.  This kernel
// widens each weight vector to fp32 in registers and accumulates in fp32, so a
// decode step streams the weights once at memory speed.
//
// Layout: w [O, K] row-major (nn.Linear), x [M, K] fp32, y [M, O] fp32.
// Parallel over output rows; each weight row is widened once per block of up to
// 8 input rows and reused from L1 for every row of x.

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <cstdint>
#include <cstring>

namespace {

inline __m256 widen_bf16(const uint16_t* p) {
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

inline __m256 widen_fp16(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float widen_scalar(uint16_t h, bool bf16) {
  if (bf16) {
    uint32_t bits = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    return f;
  }
  return _cvtsh_ss(h);
}

// ROWS rows of x against WR consecutive weight rows.  Both are compile-time
// constants so the ROWS*WR accumulators stay in registers; several independent
// FMA chains hide the FMA latency, which otherwise caps a GEMV well below memory speed.
template <int ROWS, int WR, bool BF16>
inline void dot_block(const uint16_t* w, int64_t K, const float* x, float* y, int64_t ldy) {
  __m256 acc[WR][ROWS];
  for (int j = 0; j < WR; ++j)
    for (int r = 0; r < ROWS; ++r) acc[j][r] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256 xv[ROWS];
    for (int r = 0; r < ROWS; ++r) xv[r] = _mm256_loadu_ps(x + r * K + k);
    for (int j = 0; j < WR; ++j) {
      __m256 wv = BF16 ? widen_bf16(w + j * K + k) : widen_fp16(w + j * K + k);
      for (int r = 0; r < ROWS; ++r) acc[j][r] = _mm256_fmadd_ps(wv, xv[r], acc[j][r]);
    }
  }
  for (int j = 0; j < WR; ++j) {
    for (int r = 0; r < ROWS; ++r) {
      float s = hsum(acc[j][r]);
      for (int64_t kk = k; kk < K; ++kk) s += widen_scalar(w[j * K + kk], BF16) * x[r * K + kk];
      y[r * ldy + j] = s;
    }
  }
}

// All weight rows [o0, o1) against ROWS rows of x.
template <int ROWS, bool BF16>
void rows_block(const uint16_t* W, const float* x, float* y, int64_t K, int64_t O, int64_t o0, int64_t o1) {
  constexpr int WR = ROWS <= 2 ? 4 : (ROWS <= 4 ? 2 : 1);
  int64_t o = o0;
  for (; o + WR <= o1; o += WR) dot_block<ROWS, WR, BF16>(W + o * K, K, x, y + o, O);
  for (; o < o1; ++o) dot_block<ROWS, 1, BF16>(W + o * K, K, x, y + o, O);
}

template <bool BF16>
void run(const uint16_t* W, const float* X, float* Y, int64_t M, int64_t K, int64_t O) {
  // Grain: enough rows per task that each thread streams long contiguous stretches.
  at::parallel_for(0, O, 64, [&](int64_t o0, int64_t o1) {
    int64_t m = 0;
    for (; m + 8 <= M; m += 8) rows_block<8, BF16>(W, X + m * K, Y + m * O, K, O, o0, o1);
    const float* x = X + m * K;
    float* y = Y + m * O;
    switch (M - m) {
      case 7: rows_block<7, BF16>(W, x, y, K, O, o0, o1); break;
      case 6: rows_block<6, BF16>(W, x, y, K, O, o0, o1); break;
      case 5: rows_block<5, BF16>(W, x, y, K, O, o0, o1); break;
      case 4: rows_block<4, BF16>(W, x, y, K, O, o0, o1); break;
      case 3: rows_block<3, BF16>(W, x, y, K, O, o0, o1); break;
      case 2: rows_block<2, BF16>(W, x, y, K, O, o0, o1); break;
      case 1: rows_block<1, BF16>(W, x, y, K, O, o0, o1); break;
      default: break;
    }
  });
}

}  // namespace

torch::Tensor half_linear(torch::Tensor x, torch::Tensor w) {
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous(), "weight must be a contiguous [out, in] matrix");
  TORCH_CHECK(w.scalar_type() == at::kBFloat16 || w.scalar_type() == at::kHalf, "weight must be bf16 or fp16");
  TORCH_CHECK(x.size(-1) == w.size(1), "input features do not match the weight");
  auto out_dtype = x.scalar_type();
  auto lead = x.sizes().vec();
  lead.pop_back();
  auto xf = x.reshape({-1, x.size(-1)}).to(at::kFloat).contiguous();
  const int64_t M = xf.size(0), K = xf.size(1), O = w.size(0);
  auto y = torch::empty({M, O}, xf.options());
  const auto* W = reinterpret_cast<const uint16_t*>(w.data_ptr());
  if (w.scalar_type() == at::kBFloat16) {
    run<true>(W, xf.data_ptr<float>(), y.data_ptr<float>(), M, K, O);
  } else {
    run<false>(W, xf.data_ptr<float>(), y.data_ptr<float>(), M, K, O);
  }
  lead.push_back(O);
  return y.view(lead).to(out_dtype);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("half_linear", &half_linear, "x @ w.T with bf16/fp16 weights widened in registers (AVX2)");
}
