//! Matrix products of the CPU forward through the `gemm` crate (the one burn-flex's
//! matmul calls, with its AVX-512 kernels enabled).

/// A row-major matrix view: `rows` × `cols`, rows `stride` apart (a column block of a
/// wider matrix has `stride` > `cols`).
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub stride: usize,
}

impl<'a> View<'a> {
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            stride: cols,
        }
    }

    /// Columns `start..start + cols` of every row.
    pub fn columns(self, start: usize, cols: usize) -> Self {
        assert!(
            start.checked_add(cols).is_some_and(|end| end <= self.cols),
            "column block out of range"
        );
        Self {
            data: &self.data[start..],
            cols,
            ..self
        }
    }

    /// Every element the view names lies inside `data` (no arithmetic overflow either).
    fn fits(&self) -> bool {
        span_end(self.rows, self.stride, self.cols).is_some_and(|end| end <= self.data.len())
    }
}

/// One past the last element of `rows` rows of `cols`, `stride` apart from index 0;
/// `None` where that overflows.
fn span_end(rows: usize, stride: usize, cols: usize) -> Option<usize> {
    match rows {
        0 => Some(0),
        _ => (rows - 1).checked_mul(stride)?.checked_add(cols),
    }
}

/// `out = a · b`, or `out += a · b` when `accumulate`; `out` is row-major `a.rows` ×
/// `b.cols` with row stride `out_stride`. Large products are split over the rayon pool
/// by the gemm crate itself, whose threads write disjoint blocks of `out`.
///
/// Panics (before any write) on mismatched shapes, a view or output past its slice,
/// or an output stride below its row width (rows that overlap would be written by
/// two threads at once).
pub fn matmul(out: &mut [f32], out_stride: usize, a: View<'_>, b: View<'_>, accumulate: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "inner dimensions differ");
    assert!(a.fits() && b.fits(), "matrix view exceeds its slice");
    assert!(
        m <= 1 || out_stride >= n,
        "output stride {out_stride} is below the row width {n}: rows would overlap"
    );
    assert!(
        span_end(m, out_stride, n).is_some_and(|end| end <= out.len()),
        "output exceeds its slice"
    );
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: gemm reads `a` and `b` and writes `out` at the indices their shapes and
    // strides name. The "exceeds its slice" asserts keep every one of those in bounds
    // (and every stride within isize, since a slice's length is); the stride assert
    // makes `out`'s rows disjoint, so gemm's threads never write one element together;
    // `out` is borrowed mutably, so no other reference sees the writes.
    unsafe {
        ::gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            out_stride as isize,
            accumulate,
            a.data.as_ptr(),
            1,
            a.stride as isize,
            b.data.as_ptr(),
            1,
            b.stride as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            ::gemm::Parallelism::Rayon(0),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accumulates_a_product_of_column_blocks() {
        // a = [[1, 2], [3, 4]], b = columns 1..3 of [[0, 1, 2], [0, 3, 4]].
        let a = [1.0, 2.0, 3.0, 4.0];
        let b = [0.0, 1.0, 2.0, 0.0, 3.0, 4.0];
        let mut out = [10.0, 20.0, 30.0, 40.0];
        let (va, vb) = (View::new(&a, 2, 2), View::new(&b, 2, 3).columns(1, 2));
        matmul(&mut out, 2, va, vb, true);
        assert_eq!(out, [10.0 + 7.0, 20.0 + 10.0, 30.0 + 15.0, 40.0 + 22.0]);
        matmul(&mut out, 2, va, vb, false);
        assert_eq!(out, [7.0, 10.0, 15.0, 22.0]);
    }

    #[test]
    #[should_panic(expected = "rows would overlap")]
    fn refuses_an_output_stride_below_the_row_width() {
        // Three rows of 2 at stride 1 would share elements: a race, not a product.
        let mut out = [0.0; 8];
        matmul(
            &mut out,
            1,
            View::new(&[1.0; 6], 3, 2),
            View::new(&[1.0; 4], 2, 2),
            false,
        );
    }

    #[test]
    #[should_panic(expected = "output exceeds its slice")]
    fn refuses_an_output_too_short() {
        let mut out = [0.0; 5];
        matmul(
            &mut out,
            2,
            View::new(&[1.0; 6], 3, 2),
            View::new(&[1.0; 4], 2, 2),
            false,
        );
    }

    #[test]
    #[should_panic(expected = "output exceeds its slice")]
    fn refuses_a_stride_whose_offsets_overflow() {
        // (rows - 1) * stride wraps around usize: it must not pass as a small offset.
        let mut out = [0.0; 4];
        matmul(
            &mut out,
            usize::MAX / 2 + 1,
            View::new(&[1.0; 6], 3, 2),
            View::new(&[1.0; 4], 2, 2),
            false,
        );
    }

    #[test]
    #[should_panic(expected = "matrix view exceeds its slice")]
    fn refuses_a_view_past_its_slice() {
        let a = View {
            data: &[1.0; 6],
            rows: 3,
            cols: 2,
            stride: 3,
        };
        matmul(&mut [0.0; 6], 2, a, View::new(&[1.0; 4], 2, 2), false);
    }

    #[test]
    #[should_panic(expected = "inner dimensions")]
    fn refuses_mismatched_shapes() {
        let mut out = [0.0; 4];
        matmul(
            &mut out,
            2,
            View::new(&[0.0; 6], 2, 3),
            View::new(&[0.0; 4], 2, 2),
            false,
        );
    }
}
