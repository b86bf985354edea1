//! Attention for the packed layout, fused: per (sequence, head), scores, softmax and
//! the weighted sum of values in one pass over small buffers that stay in L1, with
//! no padding, no mask and no intermediate tensors. Jobs run on the rayon pool.

use rayon::prelude::*;

use super::kernels;
use super::simd::multiversion;

/// Query rows scored together: their scores share every key load.
const ROWS: usize = 4;
/// Key positions per vector chunk (scores are computed 16 keys at a time).
const CHUNK: usize = 16;

/// Where a sequence's rows are: keys/values at `kv_start..kv_start + len` of the
/// key/value matrix, queries (and outputs) at `q_start..q_start + q_len`.
#[derive(Debug, Clone, Copy)]
pub struct Seq {
    pub kv_start: usize,
    pub len: usize,
    pub q_start: usize,
    pub q_len: usize,
}

/// The inputs of one attention call, row-major with the given row strides.
pub struct Inputs<'a> {
    /// Queries: `head_dim` columns per head, heads side by side.
    pub q: &'a [f32],
    pub q_stride: usize,
    /// Keys then values in one row: key of head h at `k_col + h * head_dim`.
    pub kv: &'a [f32],
    pub kv_stride: usize,
    pub k_col: usize,
    pub v_col: usize,
    pub heads: usize,
    pub head_dim: usize,
}

/// Output pointer shared by jobs that write disjoint (row, head) blocks.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every job writes only its own sequence's rows × its own head's columns.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// Copies `values` to `self + at`. SAFETY: the caller keeps the range in bounds and
    /// unshared.
    unsafe fn write(self, at: usize, values: &[f32]) {
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), self.0.add(at), values.len()) }
    }
}

#[derive(Default)]
struct Scratch {
    /// Keys of one head transposed: `head_dim` rows of `padded` positions.
    kt: Vec<f32>,
    /// `ROWS` query rows, pre-scaled, `head_dim` each.
    q: Vec<f32>,
    /// `ROWS` rows of `padded` scores.
    scores: Vec<f32>,
    /// `ROWS` rows of `head_dim` outputs.
    ctx: Vec<f32>,
}

/// Softmax(q kᵀ / sqrt(head_dim)) v for every sequence and head; `out` has the
/// query matrix's rows, `heads * head_dim` wide, row stride `out_stride`.
pub fn attend(inp: &Inputs<'_>, seqs: &[Seq], out: &mut [f32], out_stride: usize) {
    let width = inp.heads * inp.head_dim;
    for s in seqs {
        assert!(s.len > 0, "empty sequence");
        let kv_end = (s.kv_start + s.len - 1) * inp.kv_stride + inp.v_col + width;
        assert!(kv_end <= inp.kv.len(), "keys/values out of range");
        let q_end = (s.q_start + s.q_len).saturating_sub(1) * inp.q_stride + width;
        assert!(s.q_len == 0 || q_end <= inp.q.len(), "queries out of range");
        let o_end = (s.q_start + s.q_len).saturating_sub(1) * out_stride + width;
        assert!(s.q_len == 0 || o_end <= out.len(), "output out of range");
    }
    let ptr = OutPtr(out.as_mut_ptr());
    let jobs: Vec<(usize, usize)> = (0..seqs.len())
        .flat_map(|s| (0..inp.heads).map(move |h| (s, h)))
        .collect();
    jobs.into_par_iter()
        .for_each_init(Scratch::default, |scratch, (s, h)| {
            let seq = seqs[s];
            one_head(inp, seq, h, scratch, |row, values| {
                let at = row * out_stride + h * inp.head_dim;
                // SAFETY: the asserts above keep `at..at + head_dim` inside `out`, and no
                // other job has this (row, head): rows belong to one sequence, columns to
                // one head.
                unsafe { ptr.write(at, values) }
            });
        });
}

fn one_head(
    inp: &Inputs<'_>,
    seq: Seq,
    head: usize,
    s: &mut Scratch,
    mut write: impl FnMut(usize, &[f32]),
) {
    let dh = inp.head_dim;
    let len = seq.len;
    let padded = len.div_ceil(CHUNK) * CHUNK;
    s.kt.clear();
    s.kt.resize(dh * padded, 0.0);
    let k_col = inp.k_col + head * dh;
    for j in 0..len {
        let row = &inp.kv[(seq.kv_start + j) * inp.kv_stride + k_col..][..dh];
        for (d, &v) in row.iter().enumerate() {
            s.kt[d * padded + j] = v;
        }
    }
    let v_col = inp.v_col + head * dh;
    let values = &inp.kv[seq.kv_start * inp.kv_stride + v_col..];
    let scale = 1.0 / (dh as f32).sqrt();
    s.q.resize(ROWS * dh, 0.0);
    s.scores.resize(ROWS * padded, 0.0);
    s.ctx.resize(ROWS * dh, 0.0);
    let q_col = head * dh;
    for block in (0..seq.q_len).step_by(ROWS) {
        let rows = ROWS.min(seq.q_len - block);
        for r in 0..ROWS {
            let dst = &mut s.q[r * dh..(r + 1) * dh];
            if r < rows {
                let src = &inp.q[(seq.q_start + block + r) * inp.q_stride + q_col..][..dh];
                for (d, &v) in dst.iter_mut().zip(src) {
                    *d = v * scale;
                }
            } else {
                dst.fill(0.0);
            }
        }
        scores(&s.q, &s.kt, dh, padded, &mut s.scores);
        for r in 0..rows {
            kernels::softmax(&mut s.scores[r * padded..r * padded + len]);
        }
        context(
            &s.scores,
            padded,
            rows,
            values,
            inp.kv_stride,
            len,
            dh,
            &mut s.ctx,
        );
        for r in 0..rows {
            write(seq.q_start + block + r, &s.ctx[r * dh..(r + 1) * dh]);
        }
    }
}

multiversion! {
    /// `scores[r][j] = Σ_d q[r][d] · kt[d][j]` for `ROWS` rows and `padded` keys.
    fn scores / scores_with(q: &[f32], kt: &[f32], dh: usize, padded: usize, scores: &mut [f32]) {
        for j0 in (0..padded).step_by(CHUNK) {
            let mut acc = [[0.0f32; CHUNK]; ROWS];
            for d in 0..dh {
                let k: &[f32; CHUNK] = kt[d * padded + j0..][..CHUNK].try_into().unwrap_or(&[0.0; CHUNK]);
                for (r, a) in acc.iter_mut().enumerate() {
                    let qv = q[r * dh + d];
                    for i in 0..CHUNK {
                        a[i] = qv.mul_add(k[i], a[i]);
                    }
                }
            }
            for (r, a) in acc.iter().enumerate() {
                scores[r * padded + j0..][..CHUNK].copy_from_slice(a);
            }
        }
    }
}

/// `ctx[r] = Σ_j p[r][j] · v[j]` for the first `rows` rows (values `stride` apart).
#[allow(clippy::too_many_arguments)]
fn context(
    p: &[f32],
    padded: usize,
    rows: usize,
    v: &[f32],
    stride: usize,
    len: usize,
    dh: usize,
    ctx: &mut [f32],
) {
    if dh == HEAD32 {
        context32(p, padded, rows, v, stride, len, ctx)
    } else {
        context_any(p, padded, rows, v, stride, len, dh, ctx)
    }
}

/// The head width of MiniLM and BERT-base's 64/2: its context sums stay in registers.
const HEAD32: usize = 32;

multiversion! {
    /// [`context`] for 32-wide heads: every row's sum in registers for the whole pass.
    fn context32 / context32_with(
        p: &[f32],
        padded: usize,
        rows: usize,
        v: &[f32],
        stride: usize,
        len: usize,
        ctx: &mut [f32],
    ) {
        let mut acc = [[0.0f32; HEAD32]; ROWS];
        for j in 0..len {
            let vj: &[f32; HEAD32] = match v[j * stride..j * stride + HEAD32].try_into() {
                Ok(a) => a,
                Err(_) => return,
            };
            for (r, a) in acc.iter_mut().enumerate() {
                let w = p[r * padded + j];
                for i in 0..HEAD32 {
                    a[i] = w.mul_add(vj[i], a[i]);
                }
            }
        }
        for (r, a) in acc.iter().enumerate().take(rows) {
            ctx[r * HEAD32..(r + 1) * HEAD32].copy_from_slice(a);
        }
    }
}

multiversion! {
    /// [`context`] for any head width, summing in `ctx`.
    fn context_any / context_any_with(
        p: &[f32],
        padded: usize,
        rows: usize,
        v: &[f32],
        stride: usize,
        len: usize,
        dh: usize,
        ctx: &mut [f32],
    ) {
        ctx.fill(0.0);
        for j in 0..len {
            let vj = &v[j * stride..j * stride + dh];
            for r in 0..rows {
                let w = p[r * padded + j];
                let c = &mut ctx[r * dh..(r + 1) * dh];
                for (c, &x) in c.iter_mut().zip(vj) {
                    *c = w.mul_add(x, *c);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attention in f64, straight from the definition.
    fn naive(inp: &Inputs<'_>, seq: Seq, out_rows: usize) -> Vec<f64> {
        let (dh, width) = (inp.head_dim, inp.heads * inp.head_dim);
        let mut out = vec![0.0; out_rows * width];
        for h in 0..inp.heads {
            for i in 0..seq.q_len {
                let q = &inp.q[(seq.q_start + i) * inp.q_stride + h * dh..][..dh];
                let s: Vec<f64> = (0..seq.len)
                    .map(|j| {
                        let k = &inp.kv[(seq.kv_start + j) * inp.kv_stride + inp.k_col + h * dh..]
                            [..dh];
                        q.iter()
                            .zip(k)
                            .map(|(&a, &b)| a as f64 * b as f64)
                            .sum::<f64>()
                            / (dh as f64).sqrt()
                    })
                    .collect();
                let max = s.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = s.iter().map(|v| (v - max).exp()).collect();
                let total: f64 = e.iter().sum();
                for (j, w) in e.iter().enumerate() {
                    let v =
                        &inp.kv[(seq.kv_start + j) * inp.kv_stride + inp.v_col + h * dh..][..dh];
                    for d in 0..dh {
                        out[(seq.q_start + i) * width + h * dh + d] += w / total * v[d] as f64;
                    }
                }
            }
        }
        out
    }

    fn data(n: usize, seed: u32) -> Vec<f32> {
        crate::cpu::test_values(n, seed, 2.0)
    }

    #[test]
    fn matches_the_definition_for_ragged_sequences_and_single_queries() {
        let (heads, dh) = (3, 8);
        let width = heads * dh;
        // Two sequences packed: 5 and 21 tokens (neither a multiple of 16 or of ROWS).
        let tokens = 26;
        let qkv = data(tokens * 3 * width, 11);
        let inp = Inputs {
            q: &qkv,
            q_stride: 3 * width,
            kv: &qkv,
            kv_stride: 3 * width,
            k_col: width,
            v_col: 2 * width,
            heads,
            head_dim: dh,
        };
        let seqs = [
            Seq {
                kv_start: 0,
                len: 5,
                q_start: 0,
                q_len: 5,
            },
            Seq {
                kv_start: 5,
                len: 21,
                q_start: 5,
                q_len: 21,
            },
        ];
        let mut out = vec![f32::NAN; tokens * width];
        attend(&inp, &seqs, &mut out, width);
        let mut want = vec![0.0; tokens * width];
        for s in seqs {
            for (w, n) in want.iter_mut().zip(naive(&inp, s, tokens)) {
                *w += n;
            }
        }
        for (i, (g, w)) in out.iter().zip(&want).enumerate() {
            assert!((*g as f64 - w).abs() < 1e-5, "element {i}: {g} vs {w}");
        }

        // The last layer's shape: one query row per sequence, read from a separate matrix.
        let cls_q = data(2 * width, 12);
        let inp1 = Inputs {
            q: &cls_q,
            q_stride: width,
            ..inp
        };
        let seqs1 = [
            Seq {
                kv_start: 0,
                len: 5,
                q_start: 0,
                q_len: 1,
            },
            Seq {
                kv_start: 5,
                len: 21,
                q_start: 1,
                q_len: 1,
            },
        ];
        let mut out1 = vec![f32::NAN; 2 * width];
        attend(&inp1, &seqs1, &mut out1, width);
        let mut want1 = vec![0.0; 2 * width];
        for s in seqs1 {
            for (w, n) in want1.iter_mut().zip(naive(&inp1, s, 2)) {
                *w += n;
            }
        }
        for (g, w) in out1.iter().zip(&want1) {
            assert!((*g as f64 - w).abs() < 1e-5, "{g} vs {w}");
        }
    }

    #[test]
    fn every_instruction_set_scores_alike() {
        let (dh, padded) = (32, 48);
        let q = data(ROWS * dh, 1);
        let kt = data(dh * padded, 2);
        let v = data(40 * 64, 3);
        let mut first: Option<(Vec<f32>, Vec<f32>)> = None;
        for isa in crate::cpu::simd::Isa::available() {
            let mut s = vec![0.0; ROWS * padded];
            scores_with(isa, &q, &kt, dh, padded, &mut s);
            let mut ctx = vec![f32::NAN; ROWS * dh];
            context32_with(isa, &s, padded, 3, &v, 64, 40, &mut ctx[..]);
            // Three rows written; the general kernel must agree on them.
            let mut any = vec![f32::NAN; ROWS * dh];
            context_any_with(isa, &s, padded, 3, &v, 64, 40, dh, &mut any);
            assert_eq!(&ctx[..3 * dh], &any[..3 * dh], "{isa:?} context32 vs any");
            match &first {
                None => first = Some((s, ctx)),
                Some((fs, fc)) => {
                    assert_eq!(&s, fs, "{isa:?} scores");
                    assert_eq!(&ctx[..3 * dh], &fc[..3 * dh], "{isa:?} context");
                }
            }
        }
    }
}
