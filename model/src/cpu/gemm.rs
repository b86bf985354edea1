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
        assert!(start + cols <= self.cols, "column block out of range");
        Self {
            data: &self.data[start..],
            cols,
            ..self
        }
    }

    fn fits(&self) -> bool {
        self.rows == 0 || (self.rows - 1) * self.stride + self.cols <= self.data.len()
    }
}

/// `out = a · b`, or `out += a · b` when `accumulate`; `out` is row-major `a.rows` ×
/// `b.cols` with row stride `out_stride`. Large products are split over the rayon pool
/// by the gemm crate itself.
pub fn matmul(out: &mut [f32], out_stride: usize, a: View<'_>, b: View<'_>, accumulate: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "inner dimensions differ");
    assert!(a.fits() && b.fits(), "matrix view exceeds its slice");
    assert!(
        m == 0 || (m - 1) * out_stride + n <= out.len(),
        "output exceeds its slice"
    );
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: the asserts above keep every index gemm derives from these shapes and
    // strides inside the three slices; `out` is borrowed mutably, so nothing aliases it.
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
