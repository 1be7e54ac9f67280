//! Symmetric INT8 quantization of matrix rows, in the layout the loader reads: values `[rows, cols]`
//! in `[-127, 127]` and F32 scales `[rows, cols / group]`, `w ≈ q · scale`.

use crate::error::{Error, Result};

/// Rows quantized to INT8 with one scale per `group` consecutive values.
#[derive(Clone, Debug)]
pub struct Quantized {
    pub values: Vec<i8>,
    pub scales: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
    pub group: usize,
}

impl Quantized {
    /// Scales per row.
    pub fn groups(&self) -> usize {
        self.cols / self.group
    }

    /// The dequantized matrix (for measurements and tests; never used on the inference path).
    pub fn dequantize(&self) -> Vec<f32> {
        let g = self.groups();
        self.values
            .iter()
            .enumerate()
            .map(|(k, &q)| {
                let (r, c) = (k / self.cols, k % self.cols);
                q as f32 * self.scales[r * g + c / self.group]
            })
            .collect()
    }
}

/// Quantizes one group: `scale = max|x| / 127`, `q = round(x / scale)` (all zero: scale 0).
pub fn quantize_group(x: &[f32], q: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    if amax == 0.0 || !amax.is_finite() {
        q.fill(0);
        return 0.0;
    }
    let scale = amax / 127.0;
    for (qi, &xi) in q.iter_mut().zip(x) {
        *qi = (xi / scale).round().clamp(-127.0, 127.0) as i8;
    }
    scale
}

/// Quantizes the row-major `rows × cols` matrix `w` with `group` values per scale (`None`: whole rows).
pub fn quantize_rows(
    w: &[f32],
    rows: usize,
    cols: usize,
    group: Option<usize>,
) -> Result<Quantized> {
    let group = group.unwrap_or(cols);
    if group == 0 || cols % group != 0 {
        return Err(Error::Plan(format!(
            "INT8 group size {group} does not divide the {cols} columns of a {rows}×{cols} matrix"
        )));
    }
    if w.len() != rows * cols {
        return Err(Error::input(format!(
            "quantize_rows: {} values for a {rows}×{cols} matrix",
            w.len()
        )));
    }
    if let Some(bad) = w.iter().find(|v| !v.is_finite()) {
        return Err(Error::input(format!(
            "cannot quantize a matrix holding {bad}"
        )));
    }
    let mut values = vec![0i8; rows * cols];
    let scales = w
        .chunks_exact(group)
        .zip(values.chunks_exact_mut(group))
        .map(|(x, q)| quantize_group(x, q))
        .collect();
    Ok(Quantized {
        values,
        scales,
        rows,
        cols,
        group,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_error_is_within_half_a_step() {
        let w: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 29) as f32 - 14.0) / 7.0)
            .collect();
        let q = quantize_rows(&w, 4, 16, Some(8)).unwrap();
        assert_eq!(q.scales.len(), 8);
        assert!(q.values.iter().all(|&v| v != -128));
        for (k, (a, b)) in w.iter().zip(q.dequantize()).enumerate() {
            let s = q.scales[k / 8];
            assert!((a - b).abs() <= 0.5 * s + 1e-6);
        }
        assert!(quantize_rows(&w, 4, 16, Some(5)).is_err());
        assert!(quantize_rows(&[0.0; 4], 1, 4, None).unwrap().scales == vec![0.0]);
    }
}
