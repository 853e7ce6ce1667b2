//! Decoding properties on toy scorers: width 1 is greedy, a full-width beam equals exhaustive
//! search, any beam is no better than exhaustive search, greedy side by side equals greedy one
//! by one, and the repetition penalty rule.

use std::cell::Cell;

use proptest::prelude::*;

use super::decode::{beam_search, exhaustive_search, greedy, greedy_many};
use super::*;

/// Logits as a pseudo-random function of the whole sequence (hash of the tokens), so the best
/// continuation depends on history the way a language model's does.
struct Toy {
    vocab: usize,
    seed: u64,
}

impl Toy {
    fn logits(&self, tokens: &[u32]) -> Vec<f32> {
        let mut h = self.seed ^ 0x9E37_79B9_7F4A_7C15;
        for &t in tokens {
            h = (h ^ u64::from(t)).wrapping_mul(0x100_0000_01B3).rotate_left(17);
        }
        (0..self.vocab)
            .map(|i| {
                let mut z = h ^ (i as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 31)).wrapping_mul(0x94D0_49BB_1331_11EB);
                ((z >> 40) as f32 / (1u64 << 24) as f32) * 8.0 - 4.0
            })
            .collect()
    }
}

impl Stepper for Toy {
    type State = Vec<u32>;

    fn start(&self, prompt: &[u32]) -> Result<(Vec<u32>, Vec<f32>)> {
        Ok((prompt.to_vec(), self.logits(prompt)))
    }

    fn step(&self, state: &mut Vec<u32>, token: u32) -> Result<Vec<f32>> {
        state.push(token);
        Ok(self.logits(state))
    }
}

/// [`Toy`] whose `step_many` steps its rows in reverse order (a wrong row mapping shows) and
/// remembers the widest batch it was given.
struct Batching {
    toy: Toy,
    widest: Cell<usize>,
}

impl Stepper for Batching {
    type State = Vec<u32>;

    fn start(&self, prompt: &[u32]) -> Result<(Vec<u32>, Vec<f32>)> {
        self.toy.start(prompt)
    }

    fn step(&self, state: &mut Vec<u32>, token: u32) -> Result<Vec<f32>> {
        self.toy.step(state, token)
    }

    fn step_many(&self, states: &mut [&mut Vec<u32>], tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        self.widest.set(self.widest.get().max(tokens.len()));
        let mut out: Vec<Vec<f32>> = Vec::with_capacity(tokens.len());
        for (state, &t) in states.iter_mut().zip(tokens).rev() {
            out.push(self.toy.step(state, t)?);
        }
        out.reverse();
        Ok(out)
    }
}

fn config(max_new_tokens: usize, penalty: f32, scope: PenaltyScope) -> DecodeConfig {
    DecodeConfig { decoding: Decoding::Greedy, max_new_tokens, repetition_penalty: RepetitionPenalty { penalty, scope } }
}

fn scope() -> impl Strategy<Value = PenaltyScope> {
    prop_oneof![Just(PenaltyScope::Sequence), Just(PenaltyScope::Generated)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn greedy_side_by_side_equals_greedy_one_by_one(seed in any::<u64>(), vocab in 2usize..12, max_new in 1usize..8,
                           penalty in 0.5f32..3.0, scope in scope(), stops in 0usize..3,
                           prompts in prop::collection::vec(prop::collection::vec(0u32..12, 1..5), 1..6)) {
        let prompts: Vec<Vec<u32>> = prompts.into_iter().map(|p| p.into_iter().map(|t| t % vocab as u32).collect()).collect();
        let cfg = config(max_new, penalty, scope);
        let stop_tokens: Vec<u32> = (0..stops as u32).collect();
        let batching = Batching { toy: Toy { vocab, seed }, widest: Cell::new(0) };
        let together = greedy_many(&batching, &prompts, &cfg, &stop_tokens).unwrap();
        prop_assert_eq!(together.len(), prompts.len());
        for (prompt, got) in prompts.iter().zip(&together) {
            let alone = greedy(&batching.toy, prompt, &cfg, &stop_tokens).unwrap();
            prop_assert_eq!(got, &alone);
        }
        if stops == 0 && max_new > 1 {
            prop_assert_eq!(batching.widest.get(), prompts.len(), "every prompt is stepped in one batch");
        }
    }

    #[test]
    fn width_one_is_greedy(seed in any::<u64>(), vocab in 2usize..12, max_new in 1usize..8,
                           penalty in 0.5f32..3.0, scope in scope(), stops in 0usize..2) {
        let toy = Toy { vocab, seed };
        let cfg = config(max_new, penalty, scope);
        let stop_tokens: Vec<u32> = (0..stops as u32).collect();
        let g = greedy(&toy, &[1, 0], &cfg, &stop_tokens).unwrap();
        let b = beam_search(&toy, &[1, 0], &cfg, &stop_tokens, 1, 1.0).unwrap();
        prop_assert_eq!(&g.tokens, &b.tokens);
        prop_assert_eq!(g.stop, b.stop);
        prop_assert!((g.log_prob - b.log_prob).abs() <= 1e-12 * g.log_prob.abs().max(1.0));
    }

    #[test]
    fn full_width_beam_is_exhaustive(seed in any::<u64>(), vocab in 2usize..4, max_new in 1usize..4,
                                     penalty in 0.5f32..3.0, scope in scope(),
                                     alpha in prop_oneof![Just(0.0), Just(1.0), 0.0f64..2.0]) {
        let toy = Toy { vocab, seed };
        let cfg = config(max_new, penalty, scope);
        let width = vocab.pow(max_new as u32);
        let e = exhaustive_search(&toy, &[2], &cfg, &[0], alpha).unwrap();
        let b = beam_search(&toy, &[2], &cfg, &[0], width, alpha).unwrap();
        prop_assert_eq!(&e.tokens, &b.tokens);
        prop_assert!((e.log_prob - b.log_prob).abs() <= 1e-12 * e.log_prob.abs().max(1.0));
    }

    #[test]
    fn beam_never_beats_exhaustive(seed in any::<u64>(), vocab in 2usize..5, max_new in 1usize..4,
                                   width in 1usize..6, alpha in 0.0f64..2.0) {
        let toy = Toy { vocab, seed };
        let cfg = config(max_new, 2.0, PenaltyScope::Sequence);
        let score = |d: &Decoded| d.log_prob / (d.tokens.len() as f64).powf(alpha);
        let e = exhaustive_search(&toy, &[3], &cfg, &[1], alpha).unwrap();
        let b = beam_search(&toy, &[3], &cfg, &[1], width, alpha).unwrap();
        prop_assert!(score(&b) <= score(&e) + 1e-12);
        prop_assert!(b.tokens.len() <= max_new);
        let ends_in_stop = b.tokens.last() == Some(&1);
        prop_assert_eq!(ends_in_stop, b.stop == StopReason::StopToken);
    }
}

#[test]
fn repetition_penalty_divides_positive_and_multiplies_negative_logits_once() {
    let penalty = RepetitionPenalty { penalty: 2.0, scope: PenaltyScope::Sequence };
    let mut z = vec![4.0, -1.0, 3.0, 0.5];
    penalty.apply(&mut z, &[0, 0], &[1, 1, 9]);
    assert_eq!(z, vec![2.0, -2.0, 3.0, 0.5]);
    let generated_only = RepetitionPenalty { scope: PenaltyScope::Generated, ..penalty };
    let mut z = vec![4.0, -1.0];
    generated_only.apply(&mut z, &[0], &[1]);
    assert_eq!(z, vec![4.0, -2.0]);
}

#[test]
fn greedy_stops_at_a_stop_token_and_content_drops_it() {
    // Token 2 always wins; it is a stop token.
    struct Fixed;
    impl Stepper for Fixed {
        type State = ();
        fn start(&self, _: &[u32]) -> Result<((), Vec<f32>)> {
            Ok(((), vec![0.0, 1.0, 5.0]))
        }
        fn step(&self, _: &mut (), _: u32) -> Result<Vec<f32>> {
            Ok(vec![0.0, 1.0, 5.0])
        }
    }
    let cfg = config(10, 1.0, PenaltyScope::Sequence);
    let d = decode::decode(&Fixed, &[0], &cfg, &[2]).unwrap();
    assert_eq!((d.tokens.as_slice(), d.stop), (&[2][..], StopReason::StopToken));
    assert!(d.content().is_empty());
    let d = decode::decode(&Fixed, &[0], &cfg, &[]).unwrap();
    assert_eq!((d.tokens.len(), d.stop), (10, StopReason::MaxNewTokens));
    assert_eq!(d.content().len(), 10);
}

#[test]
fn bad_settings_are_typed_errors() {
    let toy = Toy { vocab: 3, seed: 1 };
    let mut cfg = config(4, 0.0, PenaltyScope::Sequence);
    let err = decode::decode(&toy, &[0], &cfg, &[]).unwrap_err();
    assert!(err.to_string().contains("repetition penalty"), "{err}");
    cfg.repetition_penalty.penalty = 1.0;
    cfg.decoding = Decoding::Beam { width: 0, length_penalty: 1.0 };
    let err = decode::decode(&toy, &[0], &cfg, &[]).unwrap_err();
    assert!(err.to_string().contains("beam width"), "{err}");
    cfg.decoding = Decoding::Greedy;
    cfg.max_new_tokens = 0;
    assert!(decode::decode(&toy, &[0], &cfg, &[]).is_err());
}

#[test]
fn nan_logits_are_a_typed_error() {
    struct Nan;
    impl Stepper for Nan {
        type State = ();
        fn start(&self, _: &[u32]) -> Result<((), Vec<f32>)> {
            Ok(((), vec![0.0, f32::NAN]))
        }
        fn step(&self, _: &mut (), _: u32) -> Result<Vec<f32>> {
            Ok(vec![0.0, f32::NAN])
        }
    }
    let cfg = config(3, 1.0, PenaltyScope::Sequence);
    let err = decode::decode(&Nan, &[0], &cfg, &[]).unwrap_err();
    assert!(err.to_string().contains("NaN"), "{err}");
}
