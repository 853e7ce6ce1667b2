//! Summaries over seeds: mean and a 95 % confidence interval from Student's t, and the rule the
//! report uses to call a difference: two cells whose intervals overlap are a tie.

use serde::Serialize;

/// Mean ± half-width of the 95 % interval of `n` values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    /// Mean.
    pub mean: f64,
    /// Half-width of the 95 % interval (0 with one value: no interval).
    pub half_width: f64,
    /// Values summarised.
    pub n: usize,
}

/// Two-sided 97.5 % quantile of Student's t with `df` degrees of freedom (table to 30, then
/// the normal quantile).
fn t975(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
        2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
    ];
    TABLE.get(df.wrapping_sub(1)).copied().unwrap_or(1.960)
}

impl Interval {
    /// The interval of `values` (empty: NaN mean).
    pub fn of(values: &[f64]) -> Self {
        let n = values.len();
        if n == 0 {
            return Self { mean: f64::NAN, half_width: f64::NAN, n };
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        if n == 1 {
            return Self { mean, half_width: 0.0, n };
        }
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        Self { mean, half_width: t975(n - 1) * (var / n as f64).sqrt(), n }
    }

    /// Lower and upper bounds.
    pub fn bounds(&self) -> (f64, f64) {
        (self.mean - self.half_width, self.mean + self.half_width)
    }

    /// Whether the two intervals share a point (the report then calls it a tie).
    pub fn overlaps(&self, other: &Self) -> bool {
        let ((a0, a1), (b0, b1)) = (self.bounds(), other.bounds());
        a0 <= b1 && b0 <= a1
    }

    /// `0.412 ± 0.031 (n = 3)`, or `0.412 (1 seed)`.
    pub fn cell(&self) -> String {
        match self.n {
            0 => "-".into(),
            1 => format!("{:.3} (1 seed)", self.mean),
            n => format!("{:.3} ± {:.3} (n = {n})", self.mean, self.half_width),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_uses_students_t_and_overlap_is_symmetric() {
        let i = Interval::of(&[1.0, 2.0, 3.0]);
        assert_eq!(i.mean, 2.0);
        // s = 1, n = 3: 4.303 / √3.
        assert!((i.half_width - 4.303 / 3f64.sqrt()).abs() < 1e-12);
        assert_eq!(Interval::of(&[0.5]).half_width, 0.0);
        assert!(Interval::of(&[]).mean.is_nan());
        let far = Interval::of(&[10.0, 10.5, 11.0]);
        assert!(!i.overlaps(&far) && !far.overlaps(&i));
        let near = Interval::of(&[3.0, 4.0, 5.0]);
        assert!(i.overlaps(&near) && near.overlaps(&i));
        assert_eq!(Interval::of(&[0.25]).cell(), "0.250 (1 seed)");
        assert!(i.cell().contains("± 2.484 (n = 3)"), "{}", i.cell());
    }
}
