// whistle-stop's native GPT-2 engine: one call runs a forward pass over n tokens with
// block-quantized weights (4 or 8 bits, one float scale per `block` weights of a row).
//
// Why it exists: at batch 1 a decode step streams every weight once, so its floor is
// weight bytes / memory bandwidth. ONNX Runtime spends milliseconds a step outside its
// matmuls (hundreds of ops, each a barrier between threads) and, without VNNI, its 4-bit
// kernel eats weights slower than DRAM delivers them. Here a step is one call: a persistent
// pool runs every phase of every layer with a barrier between phases (~10 a layer),
// and the matmuls multiply int8 activations against the weights in int8 as they stream.
//
// Weight layout (a [N, K] matrix: output n over K inputs). A row is a run of 32-byte
// chunks: bits 8, 32 int8 inputs, q in [-127, 127], w = q * scale[n][k / block]; bits 4,
// 64 inputs, byte j holding input j in its low nibble and input j + 32 in its high one,
// q in [0, 15], w = (q - 8) * scale. Rows are stored in groups of four (N padded), chunk
// by chunk: group g's chunk c is rows 4g..4g+3's chunk c, 128 bytes; its scales likewise
// [N/4][K/block][4] (native/quantize.py writes both).
// Activations are quantized per `block` inputs too: int8, one scale and the block's sum
// (the sum turns sum((q - 8) x) into sum(q x) - 8 sum(x), so unsigned 4-bit values go
// straight into maddubs). Built with -march=native; AVX2 kernels, a plain loop otherwise;
// with VNNI one vpdpbusd does what maddubs + madd + add did. bits 32: float32 weights,
// 8 to a chunk, against float activations (the float32 path: no scales, no rounding).
// A prompt (several tokens in one call) runs a second kernel, group_tile: six tokens (two
// on AVX2) against each weight vector loaded, the weights unsigned (q + 128 for 8 bits) and the
// offset taken back out through the activations' block sums; with AVX-512, two rows a
// 512-bit register and no cross-lane reduction per block. A decode step runs it too, one
// token a call, where a scale block is whole chunks of 64 weights or more.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <chrono>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#ifdef __AVX2__
#include <immintrin.h>
#endif

namespace {

// phases a forward pass is timed in when built with -DWS_PROFILE
enum Phase {
  PHASE_ELEMENTWISE, PHASE_QKV, PHASE_ATTENTION, PHASE_PROJ, PHASE_FC, PHASE_OUT, PHASE_HEAD,
  PHASE_WAIT, PHASES
};
#ifdef WS_PROFILE
double g_phases[PHASES];
inline double now_ns() {
  return std::chrono::duration<double, std::nano>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
#endif

inline void cpu_relax() {
#ifdef __AVX2__
  _mm_pause();
#endif
}

// ---------------------------------------------------------------- thread pool
// A waiting thread spins `spin_us`, then sleeps until woken (OpenMP's blocktime,
// llama.cpp's --poll): an idle engine leaves its CPUs to a bandwidth measurement or the
// next job.
//
// Beside a neighbour that holds one of the job's CPUs, the thread on that CPU runs in the
// scheduler's slices (~1.5-3 ms), and every barrier of a step waits for it while it is
// off: on a Zen 5 VM a 1.3 ms step had a mean of 3.4x its median. Sleeping at barriers
// made it worse (9.8x the quiet median): a woken thread waits for the neighbour's slice
// to end. So the pool benches a thread that keeps the others waiting: after two runs in
// which thread 0 spent over a third of the run waiting at barriers, the thread that
// arrived last most often sits out the next BENCHED runs (its CPU left to the
// neighbour), and the others share its work; then all are tried again.
class Pool {
 public:
  Pool(int threads, int spin_us)
      : n_(std::max(1, threads)), spin_(std::chrono::microseconds(std::max(0, spin_us))),
        sense_(n_, 0), rank_(n_, 0), last_(n_, 0), resume_(n_) {
    for (int t = 0; t < n_; ++t) rank_[t] = t, resume_[t].store(0);
    active_ = n_;
    for (int t = 1; t < n_; ++t) workers_.emplace_back([this, t] { loop(t); });
  }
  ~Pool() {
    stop_.store(true);
    publish(generation_, generation_.load() + 1);
    for (auto& w : workers_) w.join();
  }
  int size() const { return n_; }
  int active() const { return active_; }  // threads in this run
  int rank(int tid) const { return rank_[tid]; }  // 0 .. active() - 1 in this run
  int benched_runs() const { return benched_runs_; }  // runs with a thread benched so far

  // Thread `tid` (not 0) sits out the next `runs` runs, as if it had kept the others
  // waiting (tests: any set of threads gives the same bits).
  void bench(int tid, int runs) {
    if (tid > 0 && tid < n_) resume_[tid].store(generation_.load() + 1 + runs);
  }

  // Runs task(tid) on every thread not benched (the caller is thread 0, never benched)
  // and returns when all are done.
  void run(const std::function<void(int)>& task) {
    const uint64_t generation = generation_.load() + 1;
    choose_threads(generation);
    task_ = &task;
    done_.store(0);
    arrived_.store(0);
    release_.store(0);
    std::fill(sense_.begin(), sense_.end(), 0);
    std::fill(last_.begin(), last_.end(), 0);
    waited_ = 0;
    const uint64_t started = ticks();
    const int used = std::min(used_.load(std::memory_order_relaxed), CALLS);
    for (int i = 0; i < used; ++i) next_[i].store(0, std::memory_order_relaxed);
    publish(generation_, generation);
    task(0);
    const uint64_t waiting = ticks();
    await([&] { return done_.load() == active_ - 1; });
    waited_ += ticks() - waiting;
    benched_runs_ += active_ < n_;
    judge(ticks() - started, generation);
  }

  // Every thread of the running task waits here until all have arrived.
  void barrier(int tid) {
    if (active_ == 1) return;
    int sense = sense_[tid] ^= 1;
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == active_) {
      arrived_.store(0, std::memory_order_relaxed);
      ++last_[tid];
      publish(release_, sense);
    } else if (tid == 0) {
      const uint64_t waiting = ticks();
      await([&] { return release_.load() == sense; });
      waited_ += ticks() - waiting;
    } else {
      await([&] { return release_.load() == sense; });
    }
  }

  // Work shared as it is done, not dealt out in advance: the `call`th shared loop of a
  // task takes its next chunk of [0, n) here (chunks of `align`, guided: a thread takes
  // a share of what is left, at least `align`). A thread whose CPU is slower (a
  // neighbour's) takes fewer chunks.
  bool next_chunk(int call, int n, int align, int& begin, int& end) {
    const int units = (n + align - 1) / align;
    std::atomic<int>& next = next_[call % CALLS];
    if (call >= used_.load(std::memory_order_relaxed))  // what run() resets
      used_.store(call + 1, std::memory_order_relaxed);
    int at = next.load(std::memory_order_relaxed);
    for (;;) {
      if (at >= units) return false;
      const int take = std::max(1, (units - at) / (2 * active_));
      if (next.compare_exchange_weak(at, at + take, std::memory_order_relaxed)) {
        begin = at * align;
        end = std::min(n, (at + take) * align);
        return true;
      }
    }
  }
  static constexpr int CALLS = 4096;  // shared loops a task may run (5 a layer: 800 layers)
  static constexpr int BENCHED = 128;  // runs a late thread sits out before it is tried again

 private:
  static uint64_t ticks() {
    return std::chrono::steady_clock::now().time_since_epoch().count();
  }

  // Before run `generation`: who takes part (ranks 0 .. active_ - 1, for the shares
  // dealt by rank). No worker is inside a run here, and a benched one reads nothing but
  // resume_ until it takes part again: only then does it read its rank.
  void choose_threads(uint64_t generation) {
    active_ = 0;
    for (int t = 0; t < n_; ++t) rank_[t] = generation >= resume_[t].load() ? active_++ : -1;
  }

  // After a run: thread 0 waited over a third of it at barriers, twice running, with
  // every thread in: bench the one that arrived last most often.
  void judge(uint64_t run_ticks, uint64_t generation) {
    if (active_ < n_ || n_ == 1) return;
    strikes_ = 3 * waited_ > run_ticks ? strikes_ + 1 : 0;
    if (strikes_ < 2) return;
    strikes_ = 0;
    int late = 1;
    for (int t = 2; t < n_; ++t)
      if (last_[t] > last_[late]) late = t;
    resume_[late].store(generation + 1 + BENCHED);
  }

  void loop(int tid) {
    uint64_t seen = 0;  // not a load: run() may have bumped it before this thread started
    for (;;) {
      await([&] { return generation_.load() != seen; });
      seen = generation_.load();
      if (stop_.load()) return;
      // benched: not this run's (a run it takes part in cannot end without it, so the
      // generation it read is the one running)
      if (seen < resume_[tid].load()) continue;
      (*task_)(tid);
      if (done_.fetch_add(1) + 1 == active_ - 1) wake();
    }
  }

  // Spins on `ready` for spin_, then sleeps until a publish() makes it true. The store
  // and the sleeper count are sequentially consistent: either the publisher sees the
  // sleeper and wakes it, or the sleeper sees the store before it sleeps.
  template <class Ready>
  void await(Ready ready) {
    const auto started = std::chrono::steady_clock::now();
    for (int spin = 1; !ready(); ++spin) {
      cpu_relax();
      if ((spin & 63) == 0 && std::chrono::steady_clock::now() - started >= spin_) {
        std::unique_lock<std::mutex> lock(mutex_);
        sleepers_.fetch_add(1);
        wake_.wait(lock, ready);
        sleepers_.fetch_sub(1);
        return;
      }
    }
  }
  template <class T>
  void publish(std::atomic<T>& state, T value) {
    state.store(value);
    wake();
  }
  void wake() {
    if (sleepers_.load() == 0) return;
    { std::lock_guard<std::mutex> lock(mutex_); }  // a sleeper is in wait(), or saw the store
    wake_.notify_all();
  }

  int n_;
  std::chrono::microseconds spin_;
  std::vector<int> sense_;
  std::vector<int> rank_;     // this run's rank of each thread, -1 if benched
  std::vector<int> last_;     // barriers each thread released this run (it came last)
  std::vector<std::atomic<uint64_t>> resume_;  // the run each benched thread is back at
  int active_ = 1;
  int strikes_ = 0;
  int benched_runs_ = 0;
  uint64_t waited_ = 0;  // thread 0's ticks at barriers this run
  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::atomic<int> sleepers_{0};
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> done_{0};
  std::atomic<int> arrived_{0};
  std::atomic<int> release_{0};
  std::atomic<bool> stop_{false};
  std::atomic<int> next_[CALLS] = {};
  std::atomic<int> used_{0};  // the shared loops a task has used (run() resets these)
  const std::function<void(int)>* task_ = nullptr;
};

inline void share(int n, int tid, int threads, int align, int& begin, int& end) {
  int units = (n + align - 1) / align;
  begin = std::min(n, static_cast<int>(static_cast<int64_t>(units) * tid / threads) * align);
  end = std::min(n, static_cast<int>(static_cast<int64_t>(units) * (tid + 1) / threads) * align);
}

// ---------------------------------------------------------------- quantized matmul
// Rows come in groups of four, interleaved chunk by chunk (see the header): the kernel
// computes four outputs at once and reads one sequential stream. One row at a time ran
// at ~7 GB/s a core, bound by instructions; four separate row streams fought the prefetcher.
constexpr int GROUP = 4;

struct QMatrix {
  int rows = 0, cols = 0, bits = 0, block = 0;  // rows: a multiple of GROUP (padded)
  const uint8_t* data = nullptr;
  const float* scales = nullptr;  // [rows / 4][cols / block][4]
  const float* bias = nullptr;    // may be null
  int chunk_inputs() const { return bits == 4 ? 64 : bits == 8 ? 32 : 8; }  // in 32 bytes
  // the GROUP x 32 bytes of chunk c for rows 4g .. 4g + 3
  const uint8_t* slab(int group, int c) const {
    return data + (static_cast<size_t>(group) * (cols / chunk_inputs()) + c) * GROUP * 32;
  }
  const float* group_scales(int group) const {
    return scales + static_cast<size_t>(group) * (cols / block) * GROUP;
  }
};

struct QActivations {  // m rows of k inputs, quantized per block
  int k = 0, block = 0;
  // float (32-bit) weights multiply the float rows themselves, k apart: nothing quantized
  const float* real = nullptr;
  std::vector<int8_t> q;
  std::vector<float> scale;
  std::vector<int32_t> sum;
  void resize(int m, int k_, int block_) {
    k = k_, block = block_;
    q.resize(static_cast<size_t>(m) * k);
    scale.resize(static_cast<size_t>(m) * k / block);
    sum.resize(static_cast<size_t>(m) * k / block);
  }
  void quantize_row(int m, const float* x) { quantize_blocks(m, x, 0, k / block); }
  // blocks [first, last) of row m; x is the whole row
  void quantize_blocks(int m, const float* x, int first, int last) {
    if (real) return;
    int blocks = k / block;
    int8_t* q_row = &q[static_cast<size_t>(m) * k];
    for (int b = first; b < last; ++b) {
      const float* xb = x + b * block;
      float amax = 0.f;
      for (int i = 0; i < block; ++i) amax = std::max(amax, std::fabs(xb[i]));
      float s = amax / 127.f, inv = amax > 0.f ? 127.f / amax : 0.f;
      int32_t total = 0;
      for (int i = 0; i < block; ++i) {
        int v = static_cast<int>(std::nearbyint(xb[i] * inv));
        q_row[b * block + i] = static_cast<int8_t>(v);
        total += v;
      }
      scale[static_cast<size_t>(m) * blocks + b] = s;
      sum[static_cast<size_t>(m) * blocks + b] = total;
    }
  }
};

#ifdef __AVX2__
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline __m256i load(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// acc + the dot products of unsigned bytes u and signed bytes s, four at a time into each
// int32 lane. VNNI does it in one instruction (vpdpbusd, no saturation); AVX2 needs
// maddubs (int16 pair sums, saturating: callers keep them small) and madd against ones.
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define WS_VNNI 1
// inline asm, not _mm256_dpbusd_epi32: GCC 12 copied every accumulator out and back
// around the intrinsic (two moves per vpdpbusd, and spills, in the prompt's kernel)
inline __m256i dot_u8s8(__m256i acc, __m256i u, __m256i s) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u), "vm"(s));
  return acc;
}
#elif defined(__AVXVNNI__)
#define WS_VNNI 1
inline __m256i dot_u8s8(__m256i acc, __m256i u, __m256i s) {
  return _mm256_dpbusd_avx_epi32(acc, u, s);
}
#else
inline __m256i dot_u8s8(__m256i acc, __m256i u, __m256i s) {
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
}
#endif
// two such products into acc: without VNNI the int16 pair sums of both add before one
// widening (callers keep them under 2^15)
inline __m256i dot2_u8s8(__m256i acc, __m256i u0, __m256i s0, __m256i u1, __m256i s1) {
#ifdef WS_VNNI
  return dot_u8s8(dot_u8s8(acc, u0, s0), u1, s1);
#else
  __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(u0, s0), _mm256_maddubs_epi16(u1, s1));
  return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
#endif
}

#ifndef WS_PREFETCH
#define WS_PREFETCH 4096
#endif
// the cache lines of [p, p + bytes), WS_PREFETCH bytes ahead in a stream: the weights'
// (a slab at a time) and attention's (each head's keys, then its values: 64 KB apiece
// at context 512 in half precision). On an Intel Xeon VM it was worth 14-26% a step and
// on a Zen 3 VM 25% of a 4-bit step; on a Zen 4 VM it cost int8 steps 1-13% (the
// hardware prefetchers keep pace, and the prefetches take load slots): native/build.py
// builds with 0 on AMD CPUs with AVX-512.
inline void prefetch_ahead(const void* p, size_t bytes) {
  if (WS_PREFETCH <= 0) return;
  const char* at = static_cast<const char*>(p) + WS_PREFETCH;
  for (size_t line = 0; line < bytes; line += 64) _mm_prefetch(at + line, _MM_HINT_T0);
}
inline void prefetch_slab(const uint8_t* slab) { prefetch_ahead(slab, GROUP * 32); }

// Outputs 4g .. 4g + 3 against activation row m, 4 bits at 32 a block (a decode step;
// blocks of 64 and more run group_tile<1>): a chunk holds two blocks, the low and high
// nibbles, each with its scale.
void group_q4(const QMatrix& w, int g, const QActivations& a, int m, float* out) {
  const int k = w.cols, blocks = k / 32;
  const float* ws = w.group_scales(g);
  const int8_t* x = &a.q[static_cast<size_t>(m) * k];
  const float* xs = &a.scale[static_cast<size_t>(m) * blocks];
  const int32_t* xsum = &a.sum[static_cast<size_t>(m) * blocks];
  const __m256i low = _mm256_set1_epi8(0x0F);
  __m256 acc[GROUP];
  float correction[GROUP] = {};  // sum of scale * sum(x): the "- 8" of every weight
  for (auto& v : acc) v = _mm256_setzero_ps();
  for (int c = 0; c < k / 64; ++c) {
    const uint8_t* slab = w.slab(g, c);
    prefetch_slab(slab);
    __m256i x0 = load(x + 64 * c), x1 = load(x + 64 * c + 32);
    for (int r = 0; r < GROUP; ++r) {
      __m256i bytes = load(slab + 32 * r), zero = _mm256_setzero_si256();
      __m256i p0 = dot_u8s8(zero, _mm256_and_si256(bytes, low), x0);
      __m256i p1 = dot_u8s8(zero, _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low), x1);
      float s0 = ws[(2 * c) * GROUP + r] * xs[2 * c];
      float s1 = ws[(2 * c + 1) * GROUP + r] * xs[2 * c + 1];
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_set1_ps(s0), acc[r]);
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_set1_ps(s1), acc[r]);
      correction[r] += s0 * xsum[2 * c] + s1 * xsum[2 * c + 1];
    }
  }
  for (int r = 0; r < GROUP; ++r) out[r] = hsum(acc[r]) - 8.f * correction[r];
}

// 8 bits: maddubs multiplies unsigned by signed, so |w| against x with w's sign (pair
// sums stay under 2 * 127 * 127: no saturation, where full-range uint8 would saturate)
void group_q8(const QMatrix& w, int g, const QActivations& a, int m, float* out) {
  const int k = w.cols, block = w.block, blocks = k / block, chunks = block / 32;
  const float* ws = w.group_scales(g);
  const int8_t* x = &a.q[static_cast<size_t>(m) * k];
  const float* xs = &a.scale[static_cast<size_t>(m) * blocks];
  __m256 acc[GROUP];
  for (auto& v : acc) v = _mm256_setzero_ps();
  for (int b = 0; b < blocks; ++b) {
    __m256i total[GROUP];
    for (auto& v : total) v = _mm256_setzero_si256();
    for (int c = b * chunks; c < (b + 1) * chunks; ++c) {
      const uint8_t* slab = w.slab(g, c);
      prefetch_slab(slab);
      __m256i xv = load(x + 32 * c);
      for (int r = 0; r < GROUP; ++r) {
        __m256i wv = load(slab + 32 * r);
        total[r] = dot_u8s8(total[r], _mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv));
      }
    }
    for (int r = 0; r < GROUP; ++r)
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total[r]),
                               _mm256_set1_ps(ws[b * GROUP + r] * xs[b]), acc[r]);
  }
  for (int r = 0; r < GROUP; ++r) out[r] = hsum(acc[r]);
}
// Outputs 4g .. 4g + 3 against MT activation rows m0 .. m0 + MT - 1: the prompt's matmul.
// Each weight vector is loaded (and unpacked) once for MT rows of activations, and goes
// in unsigned: q for 4 bits, q + 128 for 8 bits (only with VNNI: maddubs would saturate),
// the offset taken back out through the block's activation sum. A block's four row totals
// fold into one vector with two rounds of hadd (lanes r and r + 4 hold halves of row r),
// so a block costs one conversion and one fma per activation row, not four.
template <int BITS, int MT>
void group_tile(const QMatrix& w, int g, const QActivations& a, int m0, float (*out)[GROUP]) {
  const int k = w.cols, block = w.block, blocks = k / block;
  constexpr int offset = BITS == 4 ? 8 : 128;
  const float* ws = w.group_scales(g);
  const __m256i low = _mm256_set1_epi8(0x0F), flip = _mm256_set1_epi8(static_cast<char>(0x80));
  const int8_t* x[MT];
  for (int i = 0; i < MT; ++i) x[i] = &a.q[static_cast<size_t>(m0 + i) * k];
  __m256 acc[MT];
  for (auto& v : acc) v = _mm256_setzero_ps();
  for (int b = 0; b < blocks; ++b) {
    __m256i total[MT][GROUP];
    for (auto& row : total)
      for (auto& v : row) v = _mm256_setzero_si256();
    if (BITS == 8) {
      for (int c = b * block / 32; c < (b + 1) * block / 32; ++c) {
        const uint8_t* slab = w.slab(g, c);
        prefetch_slab(slab);
        __m256i wv[GROUP];
        for (int r = 0; r < GROUP; ++r) wv[r] = _mm256_xor_si256(load(slab + 32 * r), flip);
        for (int i = 0; i < MT; ++i) {
          const __m256i xv = load(x[i] + 32 * c);
          for (int r = 0; r < GROUP; ++r) total[i][r] = dot_u8s8(total[i][r], wv[r], xv);
        }
      }
    } else if (block == 32) {  // block b: the low (b even) or high nibbles of chunk b / 2
      const uint8_t* slab = w.slab(g, b / 2);
      if (b % 2 == 0) prefetch_slab(slab);
      __m256i wv[GROUP];
      for (int r = 0; r < GROUP; ++r) {
        __m256i bytes = load(slab + 32 * r);
        wv[r] = _mm256_and_si256(b % 2 ? _mm256_srli_epi16(bytes, 4) : bytes, low);
      }
      for (int i = 0; i < MT; ++i) {
        const __m256i xv = load(x[i] + 32 * b);
        for (int r = 0; r < GROUP; ++r) total[i][r] = dot_u8s8(total[i][r], wv[r], xv);
      }
    } else {
      for (int c = b * block / 64; c < (b + 1) * block / 64; ++c) {
        const uint8_t* slab = w.slab(g, c);
        prefetch_slab(slab);
        __m256i lo[GROUP], hi[GROUP];
        for (int r = 0; r < GROUP; ++r) {
          __m256i bytes = load(slab + 32 * r);
          lo[r] = _mm256_and_si256(bytes, low);
          hi[r] = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low);
        }
        for (int i = 0; i < MT; ++i) {
          const __m256i x0 = load(x[i] + 64 * c), x1 = load(x[i] + 64 * c + 32);
          for (int r = 0; r < GROUP; ++r) total[i][r] = dot2_u8s8(total[i][r], lo[r], x0, hi[r], x1);
        }
      }
    }
    const __m256 wscale = _mm256_broadcast_ps(reinterpret_cast<const __m128*>(ws + b * GROUP));
    for (int i = 0; i < MT; ++i) {
      const size_t at = static_cast<size_t>(m0 + i) * blocks + b;
      __m256i rows = _mm256_hadd_epi32(_mm256_hadd_epi32(total[i][0], total[i][1]),
                                       _mm256_hadd_epi32(total[i][2], total[i][3]));
      // offset * sum is even (offset 8 or 128): half of it off each half of the lanes
      rows = _mm256_sub_epi32(rows, _mm256_set1_epi32(offset / 2 * a.sum[at]));
      acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(rows),
                               _mm256_mul_ps(wscale, _mm256_set1_ps(a.scale[at])), acc[i]);
    }
  }
  for (int i = 0; i < MT; ++i) {
    __m128 sums = _mm_add_ps(_mm256_castps256_ps128(acc[i]), _mm256_extractf128_ps(acc[i], 1));
    _mm_storeu_ps(out[i], sums);
  }
}

// Float weights: outputs 4g .. 4g + 3 against MT float activation rows (MT 1 in decode),
// 8 inputs a chunk. A decode step only streams (one FMA per 32 bytes read); the prompt
// takes MT tokens per weight vector loaded.
template <int MT>
void group_f32(const QMatrix& w, int g, const QActivations& a, int m0, float (*out)[GROUP]) {
  const int k = w.cols;
  const float* x[MT];
  for (int i = 0; i < MT; ++i) x[i] = a.real + static_cast<size_t>(m0 + i) * k;
  __m256 acc[MT][GROUP];
  for (auto& row : acc)
    for (auto& v : row) v = _mm256_setzero_ps();
  for (int c = 0; c < k / 8; ++c) {
    const uint8_t* slab = w.slab(g, c);
    prefetch_slab(slab);
    __m256 wv[GROUP];
    for (int r = 0; r < GROUP; ++r) wv[r] = _mm256_loadu_ps(reinterpret_cast<const float*>(slab + 32 * r));
    for (int i = 0; i < MT; ++i) {
      const __m256 xv = _mm256_loadu_ps(x[i] + 8 * c);
      for (int r = 0; r < GROUP; ++r) acc[i][r] = _mm256_fmadd_ps(wv[r], xv, acc[i][r]);
    }
  }
  for (int i = 0; i < MT; ++i)
    for (int r = 0; r < GROUP; ++r) out[i][r] = hsum(acc[i][r]);
}

#if defined(__AVX512BW__) && defined(__AVX512VNNI__)
// group_tile in 512-bit registers, where a block is whole chunks: one register holds two
// rows' 32 bytes (the slab's halves), against the activations broadcast to both halves.
// Half the instructions of the 256-bit kernel for the same products.
inline __m512i dot_u8s8(__m512i acc, __m512i u, __m512i s) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u), "vm"(s));
  return acc;
}
inline __m512i broadcast32(const int8_t* p) {
  return _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

template <int BITS, int MT>
void group_tile512(const QMatrix& w, int g, const QActivations& a, int m0, float (*out)[GROUP]) {
  const int k = w.cols, block = w.block, blocks = k / block;
  constexpr int offset = BITS == 4 ? 8 : 128, per = BITS == 4 ? 64 : 32;  // inputs a chunk
  const float* ws = w.group_scales(g);
  const __m512i low = _mm512_set1_epi8(0x0F), flip = _mm512_set1_epi8(static_cast<char>(0x80));
  const uint8_t* group = w.data + static_cast<size_t>(g) * (k / per) * GROUP * 32;
  const int8_t* x[MT];
  for (int i = 0; i < MT; ++i) x[i] = &a.q[static_cast<size_t>(m0 + i) * k];
  __m512 acc[MT][2];  // float partial sums: rows 0 | 1 and rows 2 | 3, 8 lanes a row
  for (auto& pair : acc) pair[0] = pair[1] = _mm512_setzero_ps();
  // lane l of a pair holds row (l < 8 ? first : second): the row's scale in every lane
  const __m512i first01 = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i first23 = _mm512_add_epi32(first01, _mm512_set1_epi32(2));
  for (int b = 0; b < blocks; ++b) {
    __m512i total[MT][2];
    for (auto& pair : total) pair[0] = pair[1] = _mm512_setzero_si512();
    for (int c = b * block / per; c < (b + 1) * block / per; ++c) {
      const uint8_t* slab = group + static_cast<size_t>(c) * GROUP * 32;
      prefetch_slab(slab);
      const __m512i w01 = _mm512_loadu_si512(slab), w23 = _mm512_loadu_si512(slab + 64);
      if (BITS == 8) {
        const __m512i u01 = _mm512_xor_si512(w01, flip), u23 = _mm512_xor_si512(w23, flip);
        for (int i = 0; i < MT; ++i) {
          const __m512i xv = broadcast32(x[i] + 32 * c);
          total[i][0] = dot_u8s8(total[i][0], u01, xv);
          total[i][1] = dot_u8s8(total[i][1], u23, xv);
        }
      } else {
        const __m512i lo01 = _mm512_and_si512(w01, low), lo23 = _mm512_and_si512(w23, low);
        const __m512i hi01 = _mm512_and_si512(_mm512_srli_epi16(w01, 4), low);
        const __m512i hi23 = _mm512_and_si512(_mm512_srli_epi16(w23, 4), low);
        for (int i = 0; i < MT; ++i) {
          const __m512i x0 = broadcast32(x[i] + 64 * c), x1 = broadcast32(x[i] + 64 * c + 32);
          total[i][0] = dot_u8s8(dot_u8s8(total[i][0], lo01, x0), hi01, x1);
          total[i][1] = dot_u8s8(dot_u8s8(total[i][1], lo23, x0), hi23, x1);
        }
      }
    }
    // no reduction across lanes per block (hadds cost more than the products at block
    // 128): each lane is scaled and kept, the offset taken off an eighth per lane
    const __m512 wscale = _mm512_castps128_ps512(_mm_loadu_ps(ws + b * GROUP));
    const __m512 scale01 = _mm512_permutexvar_ps(first01, wscale);
    const __m512 scale23 = _mm512_permutexvar_ps(first23, wscale);
    for (int i = 0; i < MT; ++i) {
      const size_t at = static_cast<size_t>(m0 + i) * blocks + b;
      const __m512i shift = _mm512_set1_epi32(offset / 8 * a.sum[at]);
      const __m512 xs = _mm512_set1_ps(a.scale[at]);
      acc[i][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(total[i][0], shift)),
                                  _mm512_mul_ps(scale01, xs), acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(total[i][1], shift)),
                                  _mm512_mul_ps(scale23, xs), acc[i][1]);
    }
  }
  for (int i = 0; i < MT; ++i)
    for (int half = 0; half < 2; ++half) {
      out[i][2 * half] = hsum(_mm512_castps512_ps256(acc[i][half]));
      out[i][2 * half + 1] =
          hsum(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc[i][half]), 1)));
    }
}
#endif

template <int MT>
void group_tile(const QMatrix& w, int g, const QActivations& a, int m0, float (*out)[GROUP]) {
  if (w.bits == 32) return group_f32<MT>(w, g, a, m0, out);
#if defined(__AVX512BW__) && defined(__AVX512VNNI__)
  if (w.bits == 8) return group_tile512<8, MT>(w, g, a, m0, out);
  if (w.block >= 64) return group_tile512<4, MT>(w, g, a, m0, out);
#endif
  if (w.bits == 4)
    group_tile<4, MT>(w, g, a, m0, out);
  else
    group_tile<8, MT>(w, g, a, m0, out);
}

// the prompt's kernel takes 8-bit weights only where VNNI multiplies them unsigned
inline bool tiles(const QMatrix& w) {
#ifdef WS_VNNI
  return true;
#else
  return w.bits != 8;
#endif
}
#endif

// The same four outputs with plain loops (CPUs without AVX2; the layout spelled out).
void group_plain(const QMatrix& w, int g, const QActivations& a, int m, float* out) {
  const int k = w.cols, block = w.block, blocks = k / block, per = w.chunk_inputs();
  if (w.bits == 32) {
    for (int r = 0; r < GROUP; ++r) {
      float result = 0.f;
      for (int i = 0; i < k; ++i)
        result += reinterpret_cast<const float*>(w.slab(g, i / 8) + 32 * r)[i % 8] *
                  a.real[static_cast<size_t>(m) * k + i];
      out[r] = result;
    }
    return;
  }
  const float* ws = w.group_scales(g);
  const int8_t* x = &a.q[static_cast<size_t>(m) * k];
  const float* xs = &a.scale[static_cast<size_t>(m) * blocks];
  for (int r = 0; r < GROUP; ++r) {
    float result = 0.f;
    for (int b = 0; b < blocks; ++b) {
      int32_t total = 0;
      for (int i = b * block; i < (b + 1) * block; ++i) {
        const uint8_t* bytes = w.slab(g, i / per) + 32 * r;
        const int j = i % per;
        int q = w.bits == 8 ? static_cast<int8_t>(bytes[j])
                            : (j < 32 ? bytes[j] & 0x0F : bytes[j - 32] >> 4) - 8;
        total += q * x[i];
      }
      result += ws[b * GROUP + r] * xs[b] * total;
    }
    out[r] = result;
  }
}

// y[m][n] = w_n . a_m + bias over rows begin .. end (whole groups), into `put`.
template <class Put>
void rows_chunk(const QMatrix& w, const QActivations& a, int m_count, int begin, int end, Put& put) {
#ifdef __AVX2__
  // tokens a tile: with AVX-512's 32 registers six (~5% faster than four or eight for a
  // 512-token prompt on a Zen 4 VM, in a profiling build); AVX2's 16 hold the totals of two
#ifdef __AVX512F__
  constexpr int MT = 6;
#else
  constexpr int MT = 2;
#endif
  constexpr int M_BLOCK = 16 * MT;  // a block of the prompt's activations stays in L2
  if (m_count >= MT && tiles(w)) {
    for (int m_begin = 0; m_begin < m_count; m_begin += M_BLOCK) {
      const int m_end = std::min(m_count, m_begin + M_BLOCK);
      for (int n = begin; n < end; n += GROUP) {
        float out[MT][GROUP];
        int m = m_begin;
        for (; m + MT <= m_end; m += MT) {
          group_tile<MT>(w, n / GROUP, a, m, out);
          put(m, n, MT, out);
        }
        for (; m < m_end; ++m) {  // the block's last tokens, one at a time
          group_tile<1>(w, n / GROUP, a, m, out);
          put(m, n, 1, out);
        }
      }
    }
    return;
  }
#endif
  // Decode (one token): the tile kernel where a block is whole chunks of 64 weights and
  // more (4-bit, 128 a block, AVX-512 VNNI: 1.07 against 1.30 ms a step on a Zen 5 VM;
  // AVX2 only: 1.31 against 1.57), the per-token kernels at 32 a block (1.6 against 1.9).
  for (int n = begin; n < end; n += GROUP) {
    for (int m = 0; m < m_count; ++m) {
      float out[1][GROUP];
#ifdef __AVX2__
      if (w.bits == 32 || (tiles(w) && w.block >= 64))
        group_tile<1>(w, n / GROUP, a, m, out);
      else if (w.bits == 4)
        group_q4(w, n / GROUP, a, m, out[0]);
      else
        group_q8(w, n / GROUP, a, m, out[0]);
#else
      group_plain(w, n / GROUP, a, m, out[0]);
#endif
      put(m, n, 1, out);
    }
  }
}

// y[m][n] = w_n . a_m + bias, the rows taken chunk by chunk from the pool (the `call`th
// shared loop of this task: every thread counts the same loops); `store(m, n, value)`
// for n < `valid` only (the padding rows of the last group are skipped), then
// `after(begin, end)` on each chunk's rows, the chunks in whole multiples of `align`.
struct NoAfter {
  void operator()(int, int) const {}
};
template <typename Store, typename After = NoAfter>
void matmul_rows(const QMatrix& w, const QActivations& a, int m_count, Pool& pool, int& call,
                 int valid, Store store, int align = 16, After after = {}) {
  // outputs of tokens m .. m + tokens - 1 for rows n .. n + 3, bias added, padding skipped
  auto put = [&](int m, int n, int tokens, const float (*out)[GROUP]) {
    for (int i = 0; i < tokens; ++i)
      for (int r = 0; r < GROUP && n + r < valid; ++r)
        store(m + i, n + r, out[i][r] + (w.bias ? w.bias[n + r] : 0.f));
  };
  // chunks of whole groups, whole blocks of `align` and at least 64 rows: a chunk taken
  // costs a shared atomic, ~100 ns between cores
  const int unit = std::max({align, GROUP, 64}), shared_loop = call++;
  int begin, end;
  while (pool.next_chunk(shared_loop, w.rows, unit, begin, end)) {
    rows_chunk(w, a, m_count, begin, end, put);
    after(begin, std::min(end, valid));
  }
}

// ---------------------------------------------------------------- the KV cache's type
// Half precision where the CPU converts in hardware (F16C, every AVX2 CPU): a decode step
// reads the whole cache back (at context 512, 38 MB in float32 for GPT-2 small: half
// the bytes of its 4-bit weights), and halves keep keys and values to 3 decimal digits.
#if defined(__F16C__) && defined(__AVX2__)
using kv_t = uint16_t;
inline kv_t to_kv(float v) { return _cvtss_sh(v, _MM_FROUND_TO_NEAREST_INT); }
#else
using kv_t = float;
inline kv_t to_kv(float v) { return v; }
#endif

#ifdef __AVX2__
// eight cached values as floats, whatever the cache stores
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const int8_t* p) {
  __m128i eight = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(eight));
}
#ifdef __F16C__
inline __m256 load8(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
#endif
#endif

// q . k over d values (d a multiple of 8 on the vector path); k half, float or int8
template <typename T>
inline float dot_cached(const float* q, const T* k, int d) {
#ifdef __AVX2__
  __m256 acc = _mm256_setzero_ps();
  for (int i = 0; i < d; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), load8(k + i), acc);
  return hsum(acc);
#else
  float s = 0.f;
  for (int i = 0; i < d; ++i) s += q[i] * k[i];
  return s;
#endif
}

// out += p * v over d values
template <typename T>
inline void axpy_cached(float p, const T* v, float* out, int d) {
#ifdef __AVX2__
  const __m256 scale = _mm256_set1_ps(p);
  for (int i = 0; i < d; i += 8)
    _mm256_storeu_ps(out + i, _mm256_fmadd_ps(load8(v + i), scale, _mm256_loadu_ps(out + i)));
#else
  for (int i = 0; i < d; ++i) out[i] += p * v[i];
#endif
}

// ---------------------------------------------------------------- elementwise
void layer_norm(const float* x, const float* gain, const float* bias, int n, float* out) {
  float mean = 0.f, var = 0.f;
  for (int i = 0; i < n; ++i) mean += x[i];
  mean /= n;
  for (int i = 0; i < n; ++i) var += (x[i] - mean) * (x[i] - mean);
  float inv = 1.f / std::sqrt(var / n + 1e-5f);
  for (int i = 0; i < n; ++i) out[i] = (x[i] - mean) * inv * gain[i] + bias[i];
}

// GPT-2's gelu (tanh form). tanh(u) = 1 - 2 / (exp(2u) + 1); libm's tanhf would cost
// ~0.5 ms a token over 12 x 3072 values, so exp is a short polynomial (rel. error ~1e-7).
inline float fast_exp(float x) {
  x = std::min(88.f, std::max(-88.f, x));
  float n = std::nearbyint(x * 1.44269504f);
  float r = x - n * 0.693145752f - n * 1.42860677e-6f;
  float p = 1.f + r * (1.f + r * (0.5f + r * (0.166666672f + r * (0.0416666418f +
                                                                  r * (0.00833336f + r * 0.00138833f)))));
  int32_t bits;
  std::memcpy(&bits, &p, 4);
  bits += static_cast<int32_t>(n) << 23;
  std::memcpy(&p, &bits, 4);
  return p;
}

inline float gelu(float x) {
  float u = 0.7978845608f * (x + 0.044715f * x * x * x);
  float t = 1.f - 2.f / (fast_exp(2.f * u) + 1.f);
  return 0.5f * x * (1.f + t);
}

#ifdef __AVX2__
inline __m256 fast_exp8(__m256 x) {  // fast_exp, eight at a time
  x = _mm256_min_ps(_mm256_set1_ps(88.f), _mm256_max_ps(_mm256_set1_ps(-88.f), x));
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145752f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860677e-6f), r);
  __m256 p = _mm256_set1_ps(0.00138833f);
  for (float c : {0.00833336f, 0.0416666418f, 0.166666672f, 0.5f, 1.f, 1.f})
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
  __m256i bits = _mm256_add_epi32(_mm256_castps_si256(p),
                                  _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23));
  return _mm256_castsi256_ps(bits);
}
#endif

void gelu_inplace(float* x, int n) {
  int i = 0;
#ifdef __AVX2__
  const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.f), two = _mm256_set1_ps(2.f);
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    __m256 inner = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_mul_ps(v, v), v),
                                   _mm256_set1_ps(0.044715f), v);
    __m256 e = fast_exp8(_mm256_mul_ps(inner, _mm256_set1_ps(2.f * 0.7978845608f)));
    __m256 t = _mm256_sub_ps(one, _mm256_div_ps(two, _mm256_add_ps(e, one)));
    _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_mul_ps(half, v), _mm256_add_ps(one, t)));
  }
#endif
  for (; i < n; ++i) x[i] = gelu(x[i]);
}

// ---------------------------------------------------------------- attention
// One query against `count` cached positions of a head (keys, values [t][d] contiguous):
// softmax(q . k * scale) . v into out. key_scale / value_scale: the int8 cache's per-
// position scales (null for half or float). d 64 (GPT-2's head size) on AVX2: scores
// eight keys at a time, reduced together (a horizontal sum per key cost as much as its
// products), and the output kept in registers across positions.
template <typename T>
void attend_head(const float* query, const T* keys, const T* values, const float* key_scale,
                 const float* value_scale, int count, int d, float scale, float* scores,
                 float* out) {
  int t = 0;
#ifdef __AVX2__
  if (d == 64) {
    __m256 qv[8];
    for (int i = 0; i < 8; ++i) qv[i] = _mm256_loadu_ps(query + 8 * i);
    for (; t + 8 <= count; t += 8) {
      prefetch_ahead(keys + static_cast<size_t>(t) * 64, 8 * 64 * sizeof(T));
      __m256 a[8];
      for (int j = 0; j < 8; ++j) {
        const T* k = keys + static_cast<size_t>(t + j) * 64;
        a[j] = _mm256_mul_ps(qv[0], load8(k));
        for (int i = 1; i < 8; ++i) a[j] = _mm256_fmadd_ps(qv[i], load8(k + 8 * i), a[j]);
      }
      // lanes 0-3 and 4-7 of keys 0-3 | 4-7, then the halves added: key j in lane j
      const __m256 g0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
      const __m256 g1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
      __m256 r = _mm256_add_ps(_mm256_permute2f128_ps(g0, g1, 0x20),
                               _mm256_permute2f128_ps(g0, g1, 0x31));
      r = _mm256_mul_ps(r, _mm256_set1_ps(scale));
      if (key_scale) r = _mm256_mul_ps(r, _mm256_loadu_ps(key_scale + t));
      _mm256_storeu_ps(scores + t, r);
    }
  }
#endif
  for (; t < count; ++t)
    scores[t] = dot_cached(query, keys + static_cast<size_t>(t) * d, d) * scale *
                (key_scale ? key_scale[t] : 1.f);
  float top = -INFINITY;
  for (t = 0; t < count; ++t) top = std::max(top, scores[t]);
  float total = 0.f;
  for (t = 0; t < count; ++t) total += scores[t] = fast_exp(scores[t] - top);
  if (value_scale)
    for (t = 0; t < count; ++t) scores[t] *= value_scale[t];
#ifdef __AVX2__
  if (d == 64) {
    __m256 acc[8];
    for (auto& v : acc) v = _mm256_setzero_ps();
    for (t = 0; t < count; ++t) {
      const __m256 p = _mm256_set1_ps(scores[t]);
      const T* v = values + static_cast<size_t>(t) * 64;
      prefetch_ahead(v, 64 * sizeof(T));
      for (int i = 0; i < 8; ++i) acc[i] = _mm256_fmadd_ps(load8(v + 8 * i), p, acc[i]);
    }
    const __m256 inverse = _mm256_set1_ps(1.f / total);
    for (int i = 0; i < 8; ++i) _mm256_storeu_ps(out + 8 * i, _mm256_mul_ps(acc[i], inverse));
    return;
  }
#endif
  std::fill(out, out + d, 0.f);
  for (t = 0; t < count; ++t) axpy_cached(scores[t] / total, values + static_cast<size_t>(t) * d, out, d);
}

// ---------------------------------------------------------------- the model
struct Layer {
  const float *ln1_g, *ln1_b, *ln2_g, *ln2_b;
  QMatrix qkv, proj, fc, out;
};

struct Model {
  int n_layer, n_embd, n_head, vocab, n_pos;
  int bits = 8;  // the layers' (the head may have its own: activations are int8 for both)
  const float *wte, *wpe, *lnf_g, *lnf_b;
  QMatrix head;
  std::vector<Layer> layers;
  Pool* pool;
  int capacity = 0;              // positions the cache holds
  std::vector<kv_t> keys, values;  // half precision (or float32 without F16C)
  // kv_int8: int8 keys and values instead, one float scale per (layer, head, position):
  // half the bytes again, which at context 512 are a quarter of 4-bit weights' bytes
  bool kv_int8 = false;
  std::vector<int8_t> keys8, values8;
  std::vector<float> key_scale, value_scale;
  std::vector<float> fresh;  // kv_int8: this call's keys and values in float, [m][2 n_embd]
  // scratch, sized for `rows` tokens
  int rows = 0;
  std::vector<float> x, h, q, att, ff;
  QActivations hq, attq, ffq;

  void scratch(int m) {
    if (m <= rows) return;
    rows = m;
    x.resize(static_cast<size_t>(m) * n_embd);
    h.resize(static_cast<size_t>(m) * n_embd);
    q.resize(static_cast<size_t>(m) * n_embd);
    att.resize(static_cast<size_t>(m) * n_embd);
    ff.resize(static_cast<size_t>(m) * 4 * n_embd);
    hq.resize(m, n_embd, head.block);
    attq.resize(m, n_embd, head.block);
    ffq.resize(m, 4 * n_embd, head.block);
    if (bits == 32) hq.real = h.data(), attq.real = att.data(), ffq.real = ff.data();
    if (kv_int8) fresh.resize(static_cast<size_t>(m) * 2 * n_embd);
  }

  size_t slot(int layer, int head_index, int pos) const {
    return (static_cast<size_t>(layer) * n_head + head_index) * capacity + pos;
  }

  // kv_int8: the keys and values of position pos + m, head h, from `fresh` into the cache
  void store_int8(int layer, int m, int head_index, int pos) {
    const int d = n_embd / n_head;
    const size_t at = slot(layer, head_index, pos + m);
    for (int part = 0; part < 2; ++part) {
      const float* x = &fresh[static_cast<size_t>(m) * 2 * n_embd + part * n_embd + head_index * d];
      int8_t* out = (part == 0 ? keys8.data() : values8.data()) + at * d;
      float amax = 0.f;
      for (int i = 0; i < d; ++i) amax = std::max(amax, std::fabs(x[i]));
      const float inverse = amax > 0.f ? 127.f / amax : 0.f;
      for (int i = 0; i < d; ++i) out[i] = static_cast<int8_t>(std::nearbyint(x[i] * inverse));
      (part == 0 ? key_scale : value_scale)[at] = amax / 127.f;
    }
  }

  // [layer][head][position][head_size]: attention streams one head's keys and values
  // contiguously (a layout by position strides 3 KB between a head's rows)
  kv_t* key(int layer, int head_index, int pos) {
    return &keys[((static_cast<size_t>(layer) * n_head + head_index) * capacity + pos) *
                 (n_embd / n_head)];
  }
  kv_t* value(int layer, int head_index, int pos) {
    return &values[((static_cast<size_t>(layer) * n_head + head_index) * capacity + pos) *
                   (n_embd / n_head)];
  }

  void attend(int layer, int m, int head_index, int pos, float* scores) {
    const int d = n_embd / n_head, count = pos + m + 1;
    const float* query = &q[static_cast<size_t>(m) * n_embd + head_index * d];
    float* out = &att[static_cast<size_t>(m) * n_embd + head_index * d];
    const float scale = 1.f / std::sqrt(static_cast<float>(d));
    const size_t first = slot(layer, head_index, 0);
    if (kv_int8)
      attend_head(query, &keys8[first * d], &values8[first * d], &key_scale[first],
                  &value_scale[first], count, d, scale, scores, out);
    else
      attend_head(query, key(layer, head_index, 0), value(layer, head_index, 0),
                  static_cast<const float*>(nullptr), static_cast<const float*>(nullptr), count,
                  d, scale, scores, out);
  }

  // Runs tokens at positions pos .. pos + m - 1; logits of the last one.
  void forward(const int32_t* tokens, int m, int pos, float* logits) {
    scratch(m);
    const int c = n_embd;
    std::function<void(int)> task = [&](int tid) {
      const int threads = pool->active(), rank = pool->rank(tid);  // this run's
#ifdef WS_PROFILE  // thread 0's wall time by phase (benchmarks/native_profile.py)
      double last = now_ns();
      auto lap = [&](int phase) {
        if (tid != 0) return;
        double t = now_ns();
        g_phases[phase] += t - last;
        last = t;
      };
#else
      auto lap = [](int) {};
#endif
      auto wait = [&] {  // a barrier, its wait timed as a phase of its own
        pool->barrier(tid);
        lap(PHASE_WAIT);
      };
      int begin, end, call = 0;  // call: the shared loops this thread has run
      std::vector<float> scores(static_cast<size_t>(pos + m));
      share(m, rank, threads, 1, begin, end);
      for (int r = begin; r < end; ++r)
        for (int i = 0; i < c; ++i)
          x[r * c + i] = wte[static_cast<size_t>(tokens[r]) * c + i] + wpe[(pos + r) * c + i];
      lap(PHASE_ELEMENTWISE);
      for (int l = 0; l < n_layer; ++l) {
        Layer& L = layers[l];
        wait();
        for (int r = begin; r < end; ++r) {  // ln_1, quantized for the qkv matmul
          layer_norm(&x[r * c], L.ln1_g, L.ln1_b, c, &h[r * c]);
          hq.quantize_row(r, &h[r * c]);
        }
        lap(PHASE_ELEMENTWISE);
        wait();
        const int d = c / n_head;
        matmul_rows(L.qkv, hq, m, *pool, call, 3 * c, [&](int r, int n, float v) {
          if (n < c)
            q[r * c + n] = v;
          else if (kv_int8)
            fresh[static_cast<size_t>(r) * 2 * c + n - c] = v;
          else if (n < 2 * c)
            key(l, (n - c) / d, pos + r)[(n - c) % d] = to_kv(v);
          else
            value(l, (n - 2 * c) / d, pos + r)[(n - 2 * c) % d] = to_kv(v);
        });
        lap(PHASE_QKV);
        wait();
        if (kv_int8) {  // a head's new keys and values share a scale: all of them first
          int pair_begin, pair_end;
          share(m * n_head, rank, threads, 1, pair_begin, pair_end);
          for (int p = pair_begin; p < pair_end; ++p) store_int8(l, p / n_head, p % n_head, pos);
          lap(PHASE_ATTENTION);
          wait();
        }
        // (token, head) pairs dealt out in turn: a prompt's later tokens attend over more
        // positions, and contiguous shares gave the last thread ~3x the first one's work
        for (int p = rank; p < m * n_head; p += threads) attend(l, p / n_head, p % n_head, pos, scores.data());
        lap(PHASE_ATTENTION);
        wait();
        for (int r = begin; r < end; ++r) attq.quantize_row(r, &att[r * c]);
        lap(PHASE_ELEMENTWISE);
        wait();
        matmul_rows(L.proj, attq, m, *pool, call, c, [&](int r, int n, float v) { x[r * c + n] += v; });
        lap(PHASE_PROJ);
        wait();
        for (int r = begin; r < end; ++r) {
          layer_norm(&x[r * c], L.ln2_g, L.ln2_b, c, &h[r * c]);
          hq.quantize_row(r, &h[r * c]);
        }
        lap(PHASE_ELEMENTWISE);
        wait();
        // each chunk of fc rows is whole blocks of the next matmul's inputs: the thread that
        // computed it applies gelu and quantizes it, no barrier in between
        const int block = ffq.block;
        matmul_rows(
            L.fc, hq, m, *pool, call, 4 * c,
            [&](int r, int n, float v) { ff[static_cast<size_t>(r) * 4 * c + n] = v; }, block,
            [&](int ff_begin, int ff_end) {
              for (int r = 0; r < m; ++r) {
                float* row = &ff[static_cast<size_t>(r) * 4 * c];
                gelu_inplace(row + ff_begin, ff_end - ff_begin);
                ffq.quantize_blocks(r, row, ff_begin / block, ff_end / block);
              }
            });
        lap(PHASE_FC);
        wait();
        matmul_rows(L.out, ffq, m, *pool, call, c, [&](int r, int n, float v) { x[r * c + n] += v; });
        lap(PHASE_OUT);
      }
      wait();
      if (tid == 0) {  // only the last position's logits are asked for
        layer_norm(&x[(m - 1) * c], lnf_g, lnf_b, c, &h[0]);
        hq.quantize_row(0, &h[0]);
      }
      lap(PHASE_ELEMENTWISE);
      wait();
      matmul_rows(head, hq, 1, *pool, call, vocab, [&](int, int n, float v) { logits[n] = v; });
      lap(PHASE_HEAD);
    };
    pool->run(task);
  }
};

QMatrix matrix(int rows, int cols, int bits, int block, const void* data, const void* scales,
               const void* bias) {
  QMatrix w;
  w.rows = rows, w.cols = cols, w.bits = bits, w.block = block;
  w.data = static_cast<const uint8_t*>(data);
  w.scales = static_cast<const float*>(scales);
  w.bias = static_cast<const float*>(bias);
  return w;
}

}  // namespace

extern "C" {

// spin_us: how long a waiting thread spins before it sleeps (see Pool)
void* ws_pool_create(int threads, int spin_us) { return new Pool(threads, spin_us); }
void ws_pool_destroy(void* pool) { delete static_cast<Pool*>(pool); }
void ws_pool_bench(void* pool, int tid, int runs) { static_cast<Pool*>(pool)->bench(tid, runs); }
int ws_pool_benched_runs(void* pool) { return static_cast<Pool*>(pool)->benched_runs(); }

// y[M][N] = x[M][K] . w^T (+ bias): the engine's matmul alone, for tests and benchmarks.
// The weights are in groups of four rows (N padded up to a multiple of four).
void ws_matmul(void* pool_ptr, const void* data, const float* scales, const float* bias, int n,
               int k, int bits, int block, const float* x, int m, float* y) {
  Pool* pool = static_cast<Pool*>(pool_ptr);
  QMatrix w = matrix((n + GROUP - 1) / GROUP * GROUP, k, bits, block, data, scales, bias);
  QActivations a;
  a.resize(m, k, block);
  if (bits == 32) a.real = x;
  for (int r = 0; r < m; ++r) a.quantize_row(r, x + static_cast<size_t>(r) * k);
  std::function<void(int)> task = [&](int) {
    int call = 0;
    matmul_rows(w, a, m, *pool, call, n,
                [&](int r, int col, float v) { y[static_cast<size_t>(r) * n + col] = v; });
  };
  pool->run(task);
}

// dims: n_layer, n_embd, n_head, vocab, n_pos, bits, block, kv_int8 (0 or 1), head bits,
// then the bits of each layer's qkv, proj, fc and out matrices (4 and 8 mix: the
// activations are int8 blocks for both).
// pointers: wte, wpe, ln_f gain, ln_f bias, head data, head scales, then per layer:
// ln_1 gain, ln_1 bias, qkv data, scales, bias, proj data, scales, bias,
// ln_2 gain, ln_2 bias, fc data, scales, bias, out data, scales, bias.
void* ws_model_create(void* pool, const int32_t* dims, const void* const* ptrs) {
  Model* model = new Model();
  model->n_layer = dims[0], model->n_embd = dims[1], model->n_head = dims[2];
  model->vocab = dims[3], model->n_pos = dims[4];
  const int bits = dims[5], block = dims[6], c = dims[1];
  model->kv_int8 = dims[7] != 0;
  model->bits = bits;
  model->pool = static_cast<Pool*>(pool);
  model->wte = static_cast<const float*>(ptrs[0]);
  model->wpe = static_cast<const float*>(ptrs[1]);
  model->lnf_g = static_cast<const float*>(ptrs[2]);
  model->lnf_b = static_cast<const float*>(ptrs[3]);
  const int padded = (model->vocab + GROUP - 1) / GROUP * GROUP;  // the head, in whole groups
  model->head = matrix(padded, c, dims[8], block, ptrs[4], ptrs[5], nullptr);
  for (int l = 0; l < model->n_layer; ++l) {
    const void* const* p = ptrs + 6 + 16 * l;
    Layer L;
    L.ln1_g = static_cast<const float*>(p[0]), L.ln1_b = static_cast<const float*>(p[1]);
    L.qkv = matrix(3 * c, c, dims[9], block, p[2], p[3], p[4]);
    L.proj = matrix(c, c, dims[10], block, p[5], p[6], p[7]);
    L.ln2_g = static_cast<const float*>(p[8]), L.ln2_b = static_cast<const float*>(p[9]);
    L.fc = matrix(4 * c, c, dims[11], block, p[10], p[11], p[12]);
    L.out = matrix(c, 4 * c, dims[12], block, p[13], p[14], p[15]);
    model->layers.push_back(L);
  }
  return model;
}

}  // extern "C"

// A cache array ([layer][head][position][width]) for `positions`, what it held kept.
template <typename T>
std::vector<T> grown(const std::vector<T>& old, const Model& model, int positions, int width) {
  const int blocks = model.n_layer * model.n_head;
  std::vector<T> fresh(static_cast<size_t>(blocks) * positions * width);
  const size_t before = static_cast<size_t>(model.capacity) * width;
  const size_t after = static_cast<size_t>(positions) * width;
  for (int b = 0; b < blocks && before && !old.empty(); ++b)
    std::memcpy(&fresh[b * after], &old[b * before], before * sizeof(T));
  return fresh;
}

extern "C" {

// Sizes the cache for `positions` (at most n_pos); keeps what it holds when it grows.
int ws_model_reserve(void* model_ptr, int positions) {
  Model* model = static_cast<Model*>(model_ptr);
  if (positions > model->n_pos) return -1;
  if (positions <= model->capacity) return 0;
  if (!model->kv_int8) {
    model->keys = grown(model->keys, *model, positions, model->n_embd / model->n_head);
    model->values = grown(model->values, *model, positions, model->n_embd / model->n_head);
  } else {
    model->keys8 = grown(model->keys8, *model, positions, model->n_embd / model->n_head);
    model->values8 = grown(model->values8, *model, positions, model->n_embd / model->n_head);
    model->key_scale = grown(model->key_scale, *model, positions, 1);
    model->value_scale = grown(model->value_scale, *model, positions, 1);
  }
  model->capacity = positions;
  return 0;
}

// Tokens at positions pos .. pos + n - 1 (the cache must hold them): the last one's logits.
int ws_model_forward(void* model_ptr, const int32_t* tokens, int n, int pos, float* logits) {
  Model* model = static_cast<Model*>(model_ptr);
  if (n < 1 || pos < 0 || pos + n > model->capacity) return -1;
  for (int i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= model->vocab) return -2;
  model->forward(tokens, n, pos, logits);
  return 0;
}

void ws_model_destroy(void* model) { delete static_cast<Model*>(model); }

// Thread 0's nanoseconds per phase since the last call (order of enum Phase), then zeroed;
// 0 when built without -DWS_PROFILE.
int ws_profile(double* out) {
#ifdef WS_PROFILE
  for (int i = 0; i < PHASES; ++i) out[i] = g_phases[i], g_phases[i] = 0;
  return PHASES;
#else
  (void)out;
  return 0;
#endif
}

}  // extern "C"
