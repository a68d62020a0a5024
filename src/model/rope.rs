//! 2D rotary position tables ("pix2struct" layout, NOTES §5.5): the first half of each
//! head's dims rotates with the token row, the second half with the column.

use anyhow::{ensure, Result};

/// Per-axis angle tables for positions `0..table_size`, computed in f32 as the reference does.
#[derive(Debug, Clone)]
pub struct RopeTable {
    /// `[table_size, freqs]` cosines and sines of `p·φ_k`.
    cos: Vec<f32>,
    sin: Vec<f32>,
    freqs: usize,
    modulus: usize,
}

impl RopeTable {
    pub fn new(head_dim: usize, table_size: usize, modulus: usize, theta: f64) -> Self {
        let axis_dim = head_dim / 2;
        let freqs = axis_dim / 2;
        let phi: Vec<f32> = (0..freqs)
            .map(|k| 1.0 / (theta as f32).powf((2 * k) as f32 / axis_dim as f32))
            .collect();
        let mut cos = Vec::with_capacity(table_size * freqs);
        let mut sin = Vec::with_capacity(table_size * freqs);
        for p in 0..table_size {
            for f in &phi {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Self {
            cos,
            sin,
            freqs,
            modulus,
        }
    }

    /// Tables for tokens at the given `(row, col)` positions (wrapped by the modulus):
    /// `[positions.len(), head_dim/2]` each, in the layout `rope_interleaved` expects.
    /// A wrapped position past the table (a modulus larger than the table) is an error.
    pub fn lookup(&self, positions: &[(usize, usize)]) -> Result<(Vec<f32>, Vec<f32>)> {
        let f = self.freqs;
        let table = self.cos.len() / f.max(1);
        let mut cos = Vec::with_capacity(positions.len() * 2 * f);
        let mut sin = Vec::with_capacity(positions.len() * 2 * f);
        for &(r, c) in positions {
            let (r, c) = (r % self.modulus, c % self.modulus);
            ensure!(
                r.max(c) < table,
                "token position {} is past the model's RoPE table of {table} positions",
                r.max(c)
            );
            cos.extend_from_slice(&self.cos[r * f..(r + 1) * f]);
            cos.extend_from_slice(&self.cos[c * f..(c + 1) * f]);
            sin.extend_from_slice(&self.sin[r * f..(r + 1) * f]);
            sin.extend_from_slice(&self.sin[c * f..(c + 1) * f]);
        }
        Ok((cos, sin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_wrap_at_the_modulus_and_must_be_in_the_table() {
        let wrapping = RopeTable::new(16, 8, 4, 10000.0);
        assert_eq!(
            wrapping.lookup(&[(5, 6)]).unwrap(),
            wrapping.lookup(&[(1, 2)]).unwrap()
        );
        let short = RopeTable::new(16, 4, 6, 10000.0);
        assert!(short.lookup(&[(3, 9)]).is_ok());
        let e = short.lookup(&[(0, 5)]).unwrap_err().to_string();
        assert!(e.contains("position 5"), "{e}");
    }
}
