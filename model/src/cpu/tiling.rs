//! How the packed-weight products ([`super::qgemm`], [`super::bgemm`]) share their
//! output among threads: an `m × n` output cut into (column panel, row chunk) tasks on
//! the rayon pool, each a rectangle no other task touches, walked in register tiles.

use std::ops::Range;

use rayon::prelude::*;

/// A raw output pointer shared by the tasks of one product; each writes its own
/// rectangle of it.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: `for_each_tile` hands each task a rectangle no other task touches.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// One register tile of the output: rows `rows` (at most the `mr` asked for) and the
/// columns `cols` of panel `panel`.
pub(super) struct TileAt {
    pub rows: Range<usize>,
    pub panel: usize,
    pub cols: Range<usize>,
    dst: OutPtr,
    stride: usize,
}

impl TileAt {
    /// The tile's first output element. Writing `rows.len()` rows of `cols.len()` f32
    /// from there, [`stride`](Self::stride) apart, is sound for the duration of the
    /// callback: that rectangle lies inside the output, and no other tile overlaps it.
    pub fn dst(&self) -> *mut f32 {
        // In bounds: `for_each_tile` checked that the last row's end is inside the
        // output slice, and `cols` stays below `n <= stride`.
        self.dst
            .0
            .wrapping_add(self.rows.start * self.stride + self.cols.start)
    }

    pub fn stride(&self) -> usize {
        self.stride
    }
}

/// Calls `tile` for every tile of at most `mr` rows × one `nr`-column panel of the
/// row-major `m × n` output `out` (row stride `out_stride`), from the rayon pool.
///
/// Panics (before any call) on an output past its slice, or an output stride below
/// the row width (rows that overlap would be written by two tasks at once).
pub(super) fn for_each_tile(
    out: &mut [f32],
    out_stride: usize,
    (m, n): (usize, usize),
    (mr, nr): (usize, usize),
    tile: impl Fn(&TileAt) + Sync,
) {
    assert!(mr > 0 && nr > 0, "empty tiles");
    assert!(
        m <= 1 || out_stride >= n,
        "output stride {out_stride} is below the row width {n}: rows would overlap"
    );
    assert!(
        m == 0
            || (m - 1)
                .checked_mul(out_stride)
                .and_then(|e| e.checked_add(n))
                <= Some(out.len()),
        "output exceeds its slice"
    );
    if m == 0 || n == 0 {
        return;
    }
    let panels = n.div_ceil(nr);
    // Enough tasks to keep every thread busy; a chunk a whole number of tiles.
    let target = 4 * rayon::current_num_threads();
    let chunks_per_panel = target.div_ceil(panels).max(1);
    let chunk = m.div_ceil(chunks_per_panel).next_multiple_of(mr).max(mr);
    let chunks = m.div_ceil(chunk);
    let base = OutPtr(out.as_mut_ptr());
    // `out` stays borrowed mutably until every task has returned: nothing else
    // reads or writes it meanwhile.
    (0..panels * chunks).into_par_iter().for_each(|t| {
        let (p, c) = (t / chunks, t % chunks);
        let rows = c * chunk..((c + 1) * chunk).min(m);
        let cols = p * nr..((p + 1) * nr).min(n);
        for r0 in rows.clone().step_by(mr) {
            tile(&TileAt {
                rows: r0..(r0 + mr).min(rows.end),
                panel: p,
                cols: cols.clone(),
                dst: base,
                stride: out_stride,
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn tiles_cover_the_output_once() {
        for &(m, n) in &[(1, 1), (7, 70), (13, 129), (100, 64)] {
            let mut out = vec![0.0f32; m * n + 3];
            let seen = Mutex::new(vec![0u32; m * n]);
            for_each_tile(&mut out, n, (m, n), (6, 64), |t| {
                assert!(t.rows.len() <= 6 && t.cols.len() <= 64);
                assert_eq!(t.cols.start, 64 * t.panel);
                let mut seen = seen.lock().expect("lock");
                for r in t.rows.clone() {
                    for c in t.cols.clone() {
                        seen[r * n + c] += 1;
                    }
                }
            });
            assert!(seen.into_inner().expect("lock").iter().all(|&s| s == 1));
        }
    }

    #[test]
    #[should_panic(expected = "rows would overlap")]
    fn refuses_an_output_stride_below_the_row_width() {
        for_each_tile(&mut [0.0; 16], 2, (3, 4), (6, 64), |_| {});
    }

    #[test]
    #[should_panic(expected = "output exceeds its slice")]
    fn refuses_an_output_too_short() {
        for_each_tile(&mut [0.0; 11], 4, (3, 4), (6, 64), |_| {});
    }
}
