//! Learning-rate schedule: linear warm-up over a fraction of the steps, then linear decay to 0 at
//! the last step (spec §8) or a constant peak.

use super::plan::Decay;

/// The learning rate of optimizer step `step` (0-based) of `total`.
pub fn lr_at(step: u64, total: u64, peak: f64, warmup: f64, decay: Decay) -> f64 {
    let total = total.max(1) as f64;
    let warm = (warmup * total).ceil();
    let s = step as f64;
    if s < warm {
        return peak * (s + 1.0) / warm;
    }
    match decay {
        Decay::Constant => peak,
        Decay::Linear => {
            let rest = (total - warm).max(1.0);
            peak * (1.0 - (s - warm) / rest).max(0.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_then_linear_decay() {
        let lr = |s| lr_at(s, 100, 1.0, 0.1, Decay::Linear);
        assert_eq!(lr(0), 0.1);
        assert_eq!(lr(9), 1.0);
        assert_eq!(lr(10), 1.0);
        assert!((lr(55) - 0.5).abs() < 1e-12);
        assert!(lr(99) > 0.0 && lr(99) < 0.02);
        assert_eq!(lr_at(50, 100, 2.0, 0.0, Decay::Constant), 2.0);
    }
}
