// y = x @ w.T for bf16 / fp16 / fp32 weights on x86 CPUs with AVX2 + FMA (+ F16C).
//
// Why: on CPUs without native bf16 matrix instructions (AVX2-only parts), PyTorch's
// bf16 matmul takes a slow path (measured 4-20x slower than fp32 here), so a bf16
// model would be slower than fp32 despite streaming half the bytes.  This kernel
// widens each weight vector to fp32 in registers and accumulates in fp32, so a
// decode step streams the weights once at memory speed.  fp32 weights take the same
// path: for the few-row products of a decode step it reads memory about twice as fast
// as torch's fp32 matmul does here.
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

enum Kind { BF16, FP16, FP32 };

template <Kind KIND, typename T>
inline __m256 widen(const T* p) {
  if constexpr (KIND == BF16) return widen_bf16(reinterpret_cast<const uint16_t*>(p));
  else if constexpr (KIND == FP16) return widen_fp16(reinterpret_cast<const uint16_t*>(p));
  else return _mm256_loadu_ps(reinterpret_cast<const float*>(p));
}

template <Kind KIND, typename T>
inline float widen_scalar(T v) {
  if constexpr (KIND == FP32) {
    return static_cast<float>(v);
  } else if constexpr (KIND == BF16) {
    uint32_t bits = static_cast<uint32_t>(v) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    return f;
  } else {
    return _cvtsh_ss(v);
  }
}

// ROWS rows of x against WR consecutive weight rows.  Both are compile-time
// constants so the ROWS*WR accumulators stay in registers; several independent
// FMA chains hide the FMA latency, which otherwise caps a GEMV well below memory speed.
template <int ROWS, int WR, Kind KIND, typename T>
inline void dot_block(const T* w, int64_t K, const float* x, float* y, int64_t ldy) {
  __m256 acc[WR][ROWS];
  for (int j = 0; j < WR; ++j)
    for (int r = 0; r < ROWS; ++r) acc[j][r] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256 xv[ROWS];
    for (int r = 0; r < ROWS; ++r) xv[r] = _mm256_loadu_ps(x + r * K + k);
    for (int j = 0; j < WR; ++j) {
      __m256 wv = widen<KIND>(w + j * K + k);
      for (int r = 0; r < ROWS; ++r) acc[j][r] = _mm256_fmadd_ps(wv, xv[r], acc[j][r]);
    }
  }
  for (int j = 0; j < WR; ++j) {
    for (int r = 0; r < ROWS; ++r) {
      float s = hsum(acc[j][r]);
      for (int64_t kk = k; kk < K; ++kk) s += widen_scalar<KIND>(w[j * K + kk]) * x[r * K + kk];
      y[r * ldy + j] = s;
    }
  }
}

// All weight rows [o0, o1) against ROWS rows of x.
template <int ROWS, Kind KIND, typename T>
void rows_block(const T* W, const float* x, float* y, int64_t K, int64_t O, int64_t o0, int64_t o1) {
  constexpr int WR = ROWS <= 2 ? 4 : (ROWS <= 4 ? 2 : 1);
  int64_t o = o0;
  for (; o + WR <= o1; o += WR) dot_block<ROWS, WR, KIND>(W + o * K, K, x, y + o, O);
  for (; o < o1; ++o) dot_block<ROWS, 1, KIND>(W + o * K, K, x, y + o, O);
}

template <Kind KIND, typename T>
void run(const T* W, const float* X, float* Y, int64_t M, int64_t K, int64_t O) {
  // Grain: enough rows per task that each thread streams long contiguous stretches.
  at::parallel_for(0, O, 64, [&](int64_t o0, int64_t o1) {
    int64_t m = 0;
    for (; m + 8 <= M; m += 8) rows_block<8, KIND>(W, X + m * K, Y + m * O, K, O, o0, o1);
    const float* x = X + m * K;
    float* y = Y + m * O;
    switch (M - m) {
      case 7: rows_block<7, KIND>(W, x, y, K, O, o0, o1); break;
      case 6: rows_block<6, KIND>(W, x, y, K, O, o0, o1); break;
      case 5: rows_block<5, KIND>(W, x, y, K, O, o0, o1); break;
      case 4: rows_block<4, KIND>(W, x, y, K, O, o0, o1); break;
      case 3: rows_block<3, KIND>(W, x, y, K, O, o0, o1); break;
      case 2: rows_block<2, KIND>(W, x, y, K, O, o0, o1); break;
      case 1: rows_block<1, KIND>(W, x, y, K, O, o0, o1); break;
      default: break;
    }
  });
}

}  // namespace

torch::Tensor avx2_linear(torch::Tensor x, torch::Tensor w) {
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous(), "weight must be a contiguous [out, in] matrix");
  const auto wt = w.scalar_type();
  TORCH_CHECK(wt == at::kBFloat16 || wt == at::kHalf || wt == at::kFloat, "weight must be bf16, fp16 or fp32");
  TORCH_CHECK(x.size(-1) == w.size(1), "input features do not match the weight");
  auto out_dtype = x.scalar_type();
  auto lead = x.sizes().vec();
  lead.pop_back();
  auto xf = x.reshape({-1, x.size(-1)}).to(at::kFloat).contiguous();
  const int64_t M = xf.size(0), K = xf.size(1), O = w.size(0);
  auto y = torch::empty({M, O}, xf.options());
  const float* X = xf.data_ptr<float>();
  float* Y = y.data_ptr<float>();
  if (wt == at::kFloat) {
    run<FP32>(w.data_ptr<float>(), X, Y, M, K, O);
  } else {
    const auto* W = reinterpret_cast<const uint16_t*>(w.data_ptr());
    if (wt == at::kBFloat16) run<BF16>(W, X, Y, M, K, O);
    else run<FP16>(W, X, Y, M, K, O);
  }
  lead.push_back(O);
  return y.view(lead).to(out_dtype);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("avx2_linear", &avx2_linear, "x @ w.T with bf16/fp16/fp32 weights widened in registers (AVX2)");
}
