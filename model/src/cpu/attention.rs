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
// SAFETY: the pointer is only written through `write`, whose callers in `attend` each
// own a disjoint (rows × head columns) block of the output, as `attend`'s asserts
// establish; sending it to another thread shares nothing else.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// Copies `values` to `self + at`.
    ///
    /// # Safety
    /// `at..at + values.len()` lies inside the slice the pointer was taken from, and
    /// no other thread reads or writes that range meanwhile.
    unsafe fn write(self, at: usize, values: &[f32]) {
        // SAFETY: bounds and exclusivity are this fn's contract above.
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), self.0.add(at), values.len()) }
    }
}

/// One past the last element of `rows` rows, `stride` apart from row `first`, whose
/// last element read is at column `end_col - 1`; `None` where that overflows.
fn rows_end(first: usize, rows: usize, stride: usize, end_col: usize) -> Option<usize> {
    match rows {
        0 => Some(0),
        _ => first
            .checked_add(rows - 1)?
            .checked_mul(stride)?
            .checked_add(end_col),
    }
}

/// Panics unless every write `attend` makes is in bounds and made by one job only:
/// the conditions its `unsafe` write relies on, checked once per call.
fn check(inp: &Inputs<'_>, seqs: &[Seq], out_len: usize, out_stride: usize) {
    let width = inp
        .heads
        .checked_mul(inp.head_dim)
        .expect("heads × head_dim overflows");
    // Head h of row r writes `r * out_stride + h * head_dim..` for head_dim: below the
    // row width, row r's last heads would land on row r + 1's first ones.
    assert!(
        out_stride >= width,
        "output stride {out_stride} is below the row width {width}: rows would overlap"
    );
    let kv_cols = inp.k_col.max(inp.v_col).checked_add(width);
    for s in seqs {
        assert!(s.len > 0, "empty sequence");
        let kv_end = kv_cols.and_then(|c| rows_end(s.kv_start, s.len, inp.kv_stride, c));
        assert!(
            kv_end.is_some_and(|e| e <= inp.kv.len()),
            "keys/values out of range"
        );
        let q_end = rows_end(s.q_start, s.q_len, inp.q_stride, width);
        assert!(
            q_end.is_some_and(|e| e <= inp.q.len()),
            "queries out of range"
        );
        let o_end = rows_end(s.q_start, s.q_len, out_stride, width);
        assert!(o_end.is_some_and(|e| e <= out_len), "output out of range");
    }
    // Each sequence's jobs write its query rows: two sequences sharing a row would have
    // two threads write it at once. (`q_start + q_len` cannot overflow: checked above.)
    let mut rows: Vec<(usize, usize)> = seqs
        .iter()
        .filter(|s| s.q_len > 0)
        .map(|s| (s.q_start, s.q_start + s.q_len))
        .collect();
    rows.sort_unstable();
    assert!(
        rows.windows(2).all(|w| w[0].1 <= w[1].0),
        "sequences' query rows overlap: their outputs would be written twice at once"
    );
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
///
/// Panics (before any write) on an empty sequence, rows past their slices, an output
/// stride below the row width, or two sequences whose query rows overlap: the jobs
/// write the output in parallel and rely on each owning its block.
pub fn attend(inp: &Inputs<'_>, seqs: &[Seq], out: &mut [f32], out_stride: usize) {
    check(inp, seqs, out.len(), out_stride);
    let ptr = OutPtr(out.as_mut_ptr());
    let jobs: Vec<(usize, usize)> = (0..seqs.len())
        .flat_map(|s| (0..inp.heads).map(move |h| (s, h)))
        .collect();
    jobs.into_par_iter()
        .for_each_init(Scratch::default, |scratch, (s, h)| {
            let seq = seqs[s];
            one_head(inp, seq, h, scratch, |row, values| {
                // `one_head` hands over a row of `seq`'s queries and `head_dim` values.
                debug_assert!(values.len() == inp.head_dim && row >= seq.q_start);
                let at = row * out_stride + h * inp.head_dim;
                // SAFETY: `check`'s "output out of range" assert keeps `at..at + head_dim`
                // inside `out` for every row of `seq`; no other job writes this block:
                // other heads' columns lie elsewhere in the row ("rows would overlap"
                // assert: stride >= width), other sequences' rows are other rows
                // ("query rows overlap" assert), and `out` is borrowed mutably for the
                // whole call, so nothing outside the jobs sees it either.
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
    fn scores / scores_with<A>(q: &[f32], kt: &[f32], dh: usize, padded: usize, scores: &mut [f32]) {
        for j0 in (0..padded).step_by(CHUNK) {
            let mut acc = [[0.0f32; CHUNK]; ROWS];
            for d in 0..dh {
                let k: &[f32; CHUNK] = kt[d * padded + j0..][..CHUNK].try_into().unwrap_or(&[0.0; CHUNK]);
                for (r, a) in acc.iter_mut().enumerate() {
                    let qv = q[r * dh + d];
                    for i in 0..CHUNK {
                        a[i] = A::mul_add(qv, k[i], a[i]);
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
    fn context32 / context32_with<A>(
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
                    a[i] = A::mul_add(w, vj[i], a[i]);
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
    fn context_any / context_any_with<A>(
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
                    *c = A::mul_add(w, x, *c);
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

    /// Two heads of 4 over one packed matrix of `tokens` rows (q | k | v side by side).
    fn violation(seqs: &[Seq], out_len: usize, out_stride: usize) {
        let (heads, dh, tokens) = (2, 4, 6);
        let width = heads * dh;
        let qkv = data(tokens * 3 * width, 5);
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
        attend(&inp, seqs, &mut vec![0.0; out_len], out_stride);
    }

    fn seq(start: usize, len: usize) -> Seq {
        Seq {
            kv_start: start,
            len,
            q_start: start,
            q_len: len,
        }
    }

    #[test]
    fn the_checks_pass_a_well_formed_call() {
        violation(&[seq(0, 2), seq(2, 4)], 6 * 8, 8);
    }

    #[test]
    #[should_panic(expected = "rows would overlap")]
    fn an_output_stride_below_the_row_width_panics() {
        // Stride 6 < 8: row 0's second head would write into row 1's first.
        violation(&[seq(0, 2), seq(2, 4)], 6 * 8, 6);
    }

    #[test]
    #[should_panic(expected = "query rows overlap")]
    fn sequences_sharing_query_rows_panic() {
        // Rows 2..4 belong to both: two jobs would write them at once.
        violation(&[seq(0, 4), seq(2, 4)], 6 * 8, 8);
    }

    #[test]
    #[should_panic(expected = "output out of range")]
    fn an_output_too_short_panics() {
        violation(&[seq(0, 2), seq(2, 4)], 6 * 8 - 1, 8);
    }

    #[test]
    #[should_panic(expected = "output out of range")]
    fn offsets_that_overflow_panic() {
        // (q_start + q_len - 1) * stride wraps around usize: it must not pass as small.
        violation(&[seq(0, 3)], 6 * 8, usize::MAX / 2 + 1);
    }

    #[test]
    #[should_panic(expected = "keys/values out of range")]
    fn keys_past_the_matrix_panic() {
        violation(&[seq(4, 3)], 7 * 8, 8);
    }

    /// `|got - Σ terms| <= n·ε·Σ|terms|`: the textbook bound on a sum of `n` products
    /// rounded in f32 (fused or not), against the sum in f64.
    fn assert_sum(got: f32, terms: impl Iterator<Item = f64> + Clone, what: &str) {
        let n = terms.clone().count() as f64;
        let exact: f64 = terms.clone().sum();
        let magnitude: f64 = terms.map(f64::abs).sum();
        let bound = n * f32::EPSILON as f64 * magnitude;
        assert!(
            (got as f64 - exact).abs() <= bound,
            "{what}: {got} vs {exact} (bound {bound})"
        );
    }

    #[test]
    fn every_instruction_set_scores_alike_and_as_f64() {
        let (dh, padded, len, stride) = (32, 48, 40, 64);
        let q = data(ROWS * dh, 1);
        let kt = data(dh * padded, 2);
        let v = data(len * stride, 3);
        let mut first_fused: Option<(Vec<f32>, Vec<f32>)> = None;
        for isa in crate::cpu::simd::Isa::available() {
            let mut s = vec![0.0; ROWS * padded];
            scores_with(isa, &q, &kt, dh, padded, &mut s);
            let mut ctx = vec![f32::NAN; ROWS * dh];
            context32_with(isa, &s, padded, 3, &v, stride, len, &mut ctx[..]);
            // Three rows written; the general kernel must agree on them.
            let mut any = vec![f32::NAN; ROWS * dh];
            context_any_with(isa, &s, padded, 3, &v, stride, len, dh, &mut any);
            assert_eq!(&ctx[..3 * dh], &any[..3 * dh], "{isa:?} context32 vs any");
            for r in 0..ROWS {
                for j in 0..padded {
                    let terms = (0..dh).map(|d| q[r * dh + d] as f64 * kt[d * padded + j] as f64);
                    assert_sum(s[r * padded + j], terms, &format!("{isa:?} score {r},{j}"));
                }
            }
            for r in 0..3 {
                for i in 0..dh {
                    let terms =
                        (0..len).map(|j| s[r * padded + j] as f64 * v[j * stride + i] as f64);
                    assert_sum(ctx[r * dh + i], terms, &format!("{isa:?} context {r},{i}"));
                }
            }
            // Variants with the same arithmetic round alike: the same bits.
            if isa.fused() {
                match &first_fused {
                    None => first_fused = Some((s, ctx)),
                    Some((fs, fc)) => {
                        assert_eq!(&s, fs, "{isa:?} scores");
                        assert_eq!(&ctx[..3 * dh], &fc[..3 * dh], "{isa:?} context");
                    }
                }
            }
        }
    }
}
