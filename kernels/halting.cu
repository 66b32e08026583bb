// ACT bookkeeping of a training step on the device, so that a step reads nothing back to the
// host (the host reads the accumulated metrics and the guard status every log interval).
// Per row b of the carry (batch rows; q logits interleaved [b, {halt, continue}]):
//   act_take_new_i32:   rows with halted[b] take the new batch's tokens, labels and puzzle id and
//                       restart their step count (grid over batch * seq_len).
//   act_explore_i32:    min_halt[b] = (u1 < prob) ? 2 + floor(u2 * (max(max_steps, 2) - 1)) : 0
//                       with u1, u2 from a counter-based hash of (key, first_row + b: the row of
//                       the global batch, for data-parallel ranks): key mixes the seed and
//                       the step on the host, so the draw is the same on every backend and a
//                       resumed run draws what the uninterrupted one drew. Integer math only.
//   act_halt_i32:       steps[b] += 1; halted[b] = steps >= max_steps, or (max_steps > 1)
//                       q_halt > q_continue (rule 0, HRM) or q_halt > 0 (rule 1, TRM's
//                       no_ACT_continue), but never before min_halt[b].
//   act_q_loss_f32:     target[b] = sigmoid(last ? q_next_halt : max(q_next_halt,
//                       q_next_continue)); binary cross-entropy with logits of q_halt against
//                       exact[b] and of q_continue against target[b] (f64 math, as the CPU);
//                       dq = grad_scale * (sigmoid(q) - t); and the step's metrics (sums of the
//                       LM and Q losses over all rows; count, exact, token accuracy, steps and
//                       q_halt agreement over the halted rows with a label) added to the
//                       window's accumulators; a non-finite loss sets the guard status.
//                       halt_only (TRM): the q_halt term alone: target 0, no q_continue loss,
//                       dq_continue 0.
//                       One block: block_sum in a fixed order, so the sums are deterministic.
//   act_exact_hist_u8:  inference: hist[b * max_segments + steps[b]] = exact[b] (the exact flag
//                       of the segment just scored, in the column of the segments the row ran
//                       before it), so all segments run without reading anything back.
// The step number comes from device memory (`step_now`, written before the step), so a recorded
// graph of the step replays with the current number.
// Guard status (int[4]): [first bad step (INT_MAX: none), 1 if that step's loss was non-finite,
// first tensor index with a non-finite gradient in that step (INT_MAX: none), unused]. The
// optimizer kernels skip their update once status[0] != INT_MAX, so a bad step changes nothing.
// Napkin cost: all of these touch a few KB (batch 768) or the batch's tokens (768 x 81 ints):
// launch-latency bound, a few microseconds each.
#include "common.cuh"

#define ACT_NONE 0x7fffffff

static __device__ __forceinline__ unsigned long long act_mix64(unsigned long long z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

extern "C" __global__ void __launch_bounds__(256)
    act_take_new_i32(const unsigned char* __restrict__ halted, int* __restrict__ steps,
                     const int* __restrict__ new_tokens, int* __restrict__ tokens,
                     const int* __restrict__ new_ids, int* __restrict__ ids,
                     const int* __restrict__ new_labels, int* __restrict__ labels, int batch,
                     int seq_len) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= batch * seq_len) return;
  const int b = i / seq_len, t = i - b * seq_len;
  if (!halted[b]) return;
  tokens[i] = new_tokens[i];
  labels[i] = new_labels[i];
  if (t == 0) {
    ids[b] = new_ids[b];
    steps[b] = 0;
  }
}
EMU_REGISTER(act_take_new_i32)

extern "C" __global__ void __launch_bounds__(256)
    act_explore_i32(int* __restrict__ min_halt, int batch, int first_row, unsigned long long key,
                    unsigned long long threshold, int max_steps) {
  const int b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= batch) return;
  const unsigned long long g = (unsigned long long)(first_row + b);  // row of the global batch
  const unsigned long long h1 = act_mix64(key ^ act_mix64(2ull * g));
  const unsigned long long h2 = act_mix64(key ^ act_mix64(2ull * g + 1ull));
  const unsigned long long span = (unsigned long long)((max_steps > 2 ? max_steps : 2) - 1);
  const int k = 2 + (int)(((h2 >> 32) * span) >> 32);
  min_halt[b] = (h1 >> 11) < threshold ? k : 0;
}
EMU_REGISTER(act_explore_i32)

extern "C" __global__ void __launch_bounds__(256)
    act_halt_i32(const float* __restrict__ q, int* __restrict__ steps,
                 unsigned char* __restrict__ halted, const int* __restrict__ min_halt, int batch,
                 int max_steps, int rule) {
  const int b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= batch) return;
  const int s = steps[b] + 1;
  steps[b] = s;
  bool h = s >= max_steps;
  if (max_steps > 1) {
    h = h || q[2 * b] > (rule == 1 ? 0.0f : q[2 * b + 1]);
    h = h && s >= min_halt[b];
  }
  halted[b] = h ? 1 : 0;
}
EMU_REGISTER(act_halt_i32)

extern "C" __global__ void __launch_bounds__(256)
    act_exact_hist_u8(const int* __restrict__ steps, const unsigned char* __restrict__ exact,
                      unsigned char* __restrict__ hist, int batch, int max_segments) {
  const int b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= batch) return;
  const int s = steps[b];
  if (s >= 0 && s < max_segments) hist[(long long)b * max_segments + s] = exact[b];
}
EMU_REGISTER(act_exact_hist_u8)

static __device__ __forceinline__ double act_bce(double x, double t) {
  return fmax(x, 0.0) - x * t + log1p(exp(-fabs(x)));
}

// metrics: [steps, lm, q_halt, q_continue, count, exact, token accuracy, halt steps, q ok]
extern "C" __global__ void __launch_bounds__(256)
    act_q_loss_f32(const float* __restrict__ q, const float* __restrict__ q_next,
                   const int* __restrict__ steps, const unsigned char* __restrict__ halted,
                   const double* __restrict__ loss_per_row, const unsigned int* __restrict__ n_correct,
                   const unsigned int* __restrict__ n_valid, const unsigned char* __restrict__ exact,
                   int batch, int max_steps, int halt_only, double grad_scale,
                   const int* __restrict__ step_now,
                   float* __restrict__ dq,
                   float* __restrict__ target, double* __restrict__ metrics,
                   int* __restrict__ status) {
  __shared__ double scratch[32];
  const int step = *step_now;
  double lm = 0.0, qh = 0.0, qc = 0.0, count = 0.0, ex = 0.0, acc = 0.0, hs = 0.0, qok = 0.0;
  for (int b = threadIdx.x; b < batch; b += blockDim.x) {
    const bool last = steps[b] >= max_steps;
    const float nh = q_next[2 * b], nc = q_next[2 * b + 1];
    const float tx = last ? nh : fmaxf(nh, nc);
    const float tgt = halt_only ? 0.0f : 1.0f / (1.0f + expf(-tx));
    target[b] = tgt;
    const double xh = q[2 * b], xc = q[2 * b + 1];
    const double th = exact[b] ? 1.0 : 0.0, tc = tgt;
    qh += act_bce(xh, th);
    dq[2 * b] = (float)(grad_scale * (1.0 / (1.0 + exp(-xh)) - th));
    if (halt_only) {
      dq[2 * b + 1] = 0.0f;
    } else {
      qc += act_bce(xc, tc);
      dq[2 * b + 1] = (float)(grad_scale * (1.0 / (1.0 + exp(-xc)) - tc));
    }
    lm += loss_per_row[b];
    if (halted[b] && n_valid[b] > 0) {
      count += 1.0;
      ex += th;
      acc += (double)n_correct[b] / (double)n_valid[b];
      hs += steps[b];
      qok += ((q[2 * b] >= 0.0f) == (exact[b] != 0)) ? 1.0 : 0.0;
    }
  }
  lm = block_sum(lm, scratch);
  qh = block_sum(qh, scratch);
  qc = block_sum(qc, scratch);
  count = block_sum(count, scratch);
  ex = block_sum(ex, scratch);
  acc = block_sum(acc, scratch);
  hs = block_sum(hs, scratch);
  qok = block_sum(qok, scratch);
  if (threadIdx.x == 0) {
    metrics[0] += 1.0;
    metrics[1] += lm;
    metrics[2] += qh;
    metrics[3] += qc;
    metrics[4] += count;
    metrics[5] += ex;
    metrics[6] += acc;
    metrics[7] += hs;
    metrics[8] += qok;
    const double total = lm + 0.5 * (qh + qc);
    if (!(total - total == 0.0) && status[0] >= step) {  // NaN or infinity
      status[0] = step;
      status[1] = 1;
    }
  }
}
EMU_REGISTER(act_q_loss_f32)

// Multi-tensor finite check of the gradients: `table` lists (pointer, length) pairs as
// uint64; chunk c of `chunk_elems` elements belongs to tensor chunk_tensor[c]. Records the first
// bad tensor of step `step` unless an earlier step is already recorded.
extern "C" __global__ void __launch_bounds__(256)
    act_guard_f32(const unsigned long long* __restrict__ table, const int* __restrict__ chunk_tensor,
                  const long long* __restrict__ chunk_start, int chunk_elems,
                  const int* __restrict__ step_now, int* __restrict__ status) {
  const int step = *step_now;
  if (status[0] < step) return;
  const int c = blockIdx.x;
  const int t = chunk_tensor[c];
  const float* p = reinterpret_cast<const float*>(table[2 * t]);
  const long long n = (long long)table[2 * t + 1];
  const long long start = chunk_start[c];
  const long long end = start + chunk_elems < n ? start + chunk_elems : n;
  int bad = 0;
  for (long long i = start + threadIdx.x; i < end; i += blockDim.x) {
    bad |= (__float_as_int(p[i]) & 0x7f800000) == 0x7f800000;
  }
  __shared__ int scratch[32];
  bad = block_sum(bad, scratch);
  if (bad != 0 && threadIdx.x == 0) {
    atomicMin(&status[0], step);
    atomicMin(&status[2], t);
  }
}
EMU_REGISTER(act_guard_f32)
