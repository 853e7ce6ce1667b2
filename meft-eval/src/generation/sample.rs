//! Seeded temperature sampling for [`super::decode`]: a draw from `softmax(log p / T)` with
//! SplitMix64, a tiny fully specified generator, so that a seed gives the same tokens across
//! versions and machines.

/// SplitMix64 (Steele, Lea and Flood 2014).
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Draws token ids at a temperature from a seeded generator.
#[derive(Debug, Clone)]
pub(crate) struct Sampler {
    temperature: f64,
    rng: SplitMix64,
}

impl Sampler {
    /// A sampler at `temperature` (> 0, checked by [`super::DecodeConfig::validate`]).
    pub(crate) fn new(temperature: f64, seed: u64) -> Self {
        Self { temperature, rng: SplitMix64(seed) }
    }

    /// A token id drawn from `softmax(log_probs / temperature)`; `-inf` entries are never drawn.
    pub(crate) fn draw(&mut self, log_probs: &[f64]) -> usize {
        let max = log_probs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = log_probs.iter().map(|&v| ((v - max) / self.temperature).exp()).collect();
        let mut target = self.rng.next_f64() * weights.iter().sum::<f64>();
        for (i, w) in weights.iter().enumerate() {
            if target < *w {
                return i;
            }
            target -= w;
        }
        // Rounding left a sliver: the last token with non-zero weight.
        weights.iter().rposition(|&w| w > 0.0).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_follow_the_tempered_distribution_and_never_pick_impossible_tokens() {
        let log_probs = [0.25f64.ln(), 0.75f64.ln(), f64::NEG_INFINITY];
        let mut s = Sampler::new(1.0, 11);
        let mut counts = [0usize; 3];
        for _ in 0..4000 {
            counts[s.draw(&log_probs)] += 1;
        }
        assert_eq!(counts[2], 0);
        let frac = counts[1] as f64 / 4000.0;
        assert!((frac - 0.75).abs() < 0.03, "P(token 1) = 0.75 at T = 1, drew {frac}");
        // T = 0.5 squares the odds: 3:1 becomes 9:1.
        let mut cold = Sampler::new(0.5, 11);
        let ones = (0..4000).filter(|_| cold.draw(&log_probs) == 1).count() as f64 / 4000.0;
        assert!((ones - 0.9).abs() < 0.03, "P(token 1) = 0.9 at T = 0.5, drew {ones}");
    }

    #[test]
    fn a_seed_fixes_the_draws() {
        let log_probs = [0.0f64, 0.0, 0.0, 0.0];
        let draws = |seed| {
            let mut s = Sampler::new(1.0, seed);
            (0..16).map(|_| s.draw(&log_probs)).collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7));
        assert_ne!(draws(7), draws(8));
    }
}
