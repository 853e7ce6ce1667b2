//! Decoding rules over any next-token scorer: greedy, seeded temperature sampling, beam search,
//! and an exhaustive reference; [`decode_streaming`] hands each token over as it is chosen.
//!
//! A [`Stepper`] turns a prompt into next-token logits and extends its state one token at a time
//! (for a model: the KV cache). The rules here never look inside the state.
//!
//! Repetition penalty (the rule of Keskar et al. 2019 as HF `RepetitionPenaltyLogitsProcessor`
//! writes it): for every distinct token already in the sequence, a positive logit is divided by
//! the penalty and a negative one multiplied by it. [`PenaltyScope::Sequence`] (the default, as
//! HF) counts the prompt's tokens too; [`PenaltyScope::Generated`] only the new ones. We apply it
//! to the raw logits before the log-softmax for both greedy and beam search; HF's beam search
//! applies it to the log-probabilities instead (a difference in the beam scores, stated here).
//!
//! Beam search ([`beam_search`]) is HF's with `early_stopping = True`: at every step the candidates
//! `(beam, token)` of all live beams are ranked by `sum of log-probs`; walking the ranking, a stop
//! token at rank `< width` finishes a hypothesis, any other candidate refills the live beams until
//! there are `width`; search ends once `width` hypotheses have finished, or at `max_new_tokens`
//! (live beams then finish as they are). The answer is the finished hypothesis with the best
//! `sum / len^length_penalty` (`len` = generated tokens, stop token included; `length_penalty` 0
//! = raw sums, 1 = per-token mean, HF's default). Two properties pin this down and are tested:
//! width 1 is greedy decoding, and a width at least `vocab^max_new_tokens` finds the same answer as
//! [`exhaustive_search`]. Ties rank the lower beam, then the lower token id, first.

use std::ops::ControlFlow;

use serde::{Deserialize, Serialize};

use super::sample::Sampler;
use crate::error::{EvalError, Result};

/// A next-token scorer with a state that grows one token at a time.
pub trait Stepper {
    /// What is remembered about the tokens fed so far (a KV cache, or the tokens themselves).
    type State: Clone;
    /// Feeds `prompt` (non-empty); returns the state and the logits of the next token.
    fn start(&self, prompt: &[u32]) -> Result<(Self::State, Vec<f32>)>;
    /// Feeds `token` after `state`; returns the logits of the token after it.
    fn step(&self, state: &mut Self::State, token: u32) -> Result<Vec<f32>>;
    /// Feeds `tokens[i]` after `states[i]` for every `i`; returns each one's next logits, as
    /// [`Stepper::step`] of each alone would. The default steps them one at a time; a model
    /// overrides it to run the rows as one batch.
    fn step_many(&self, states: &mut [&mut Self::State], tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        states.iter_mut().zip(tokens).map(|(s, &t)| self.step(s, t)).collect()
    }
}

/// Which tokens the repetition penalty counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PenaltyScope {
    /// The prompt and the generated tokens (HF's rule).
    #[default]
    Sequence,
    /// The generated tokens only.
    Generated,
}

/// The repetition penalty; `penalty = 1` leaves the logits unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RepetitionPenalty {
    /// Divides positive and multiplies negative logits of repeated tokens; must be > 0.
    pub penalty: f32,
    /// Which tokens count as repeated.
    pub scope: PenaltyScope,
}

impl Default for RepetitionPenalty {
    fn default() -> Self {
        Self { penalty: 1.0, scope: PenaltyScope::Sequence }
    }
}

impl RepetitionPenalty {
    /// Penalises in place the logits of the tokens of `prompt` (per the scope) and `generated`.
    pub fn apply(&self, logits: &mut [f32], prompt: &[u32], generated: &[u32]) {
        if self.penalty == 1.0 {
            return;
        }
        let seen = match self.scope {
            PenaltyScope::Sequence => prompt.iter().chain(generated),
            PenaltyScope::Generated => [].iter().chain(generated),
        };
        let mut done = vec![false; logits.len()];
        for &t in seen {
            let Some(z) = logits.get_mut(t as usize) else {
                continue;
            };
            if !std::mem::replace(&mut done[t as usize], true) {
                *z = if *z > 0.0 { *z / self.penalty } else { *z * self.penalty };
            }
        }
    }
}

/// The search rule.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Decoding {
    /// The most likely token at every step (ties: lowest id).
    #[default]
    Greedy,
    /// A draw from `softmax(log p / temperature)` of the penalised logits at every step, from a
    /// seeded generator (the same seed gives the same tokens).
    Sample {
        /// Softmax temperature, > 0.
        temperature: f64,
        /// Seed of the generator.
        seed: u64,
    },
    /// Beam search (see the module doc).
    Beam {
        /// Beams kept, ≥ 1.
        width: usize,
        /// Exponent of the length normalisation: 0 = none, 1 = per-token mean.
        length_penalty: f64,
    },
}

/// Settings of one decoding call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecodeConfig {
    /// The search rule.
    pub decoding: Decoding,
    /// Most tokens generated (stop token included).
    pub max_new_tokens: usize,
    /// Repetition penalty (1 = off).
    pub repetition_penalty: RepetitionPenalty,
}

impl DecodeConfig {
    /// Checks the ranges, naming the setting to fix.
    pub fn validate(&self) -> Result<()> {
        let bad = |problem: String| Err(EvalError::Decode { problem });
        let p = self.repetition_penalty.penalty;
        if !(p.is_finite() && p > 0.0) {
            return bad(format!("repetition penalty must be a finite number > 0, got {p}"));
        }
        if self.max_new_tokens == 0 {
            return bad("max_new_tokens must be at least 1".into());
        }
        match self.decoding {
            Decoding::Beam { width: 0, .. } => bad("beam width must be at least 1".into()),
            Decoding::Sample { temperature, .. } if !(temperature.is_finite() && temperature > 0.0) => {
                bad(format!("temperature must be a finite number > 0 (greedy decoding for 0), got {temperature}"))
            }
            Decoding::Beam { length_penalty, .. } if !length_penalty.is_finite() => {
                bad(format!("length_penalty must be finite, got {length_penalty}"))
            }
            _ => Ok(()),
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// A stop token was generated (it is the last token).
    StopToken,
    /// `max_new_tokens` were generated.
    MaxNewTokens,
    /// The caller's callback stopped decoding ([`decode_streaming`]); its last token is kept.
    Caller,
}

/// A decoded continuation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decoded {
    /// New tokens; the last is the stop token when `stop` is [`StopReason::StopToken`].
    pub tokens: Vec<u32>,
    /// Why it ended.
    pub stop: StopReason,
    /// Sum of the (penalised) log-probabilities of the new tokens, in nats.
    pub log_prob: f64,
}

impl Decoded {
    /// The tokens without the final stop token.
    pub fn content(&self) -> &[u32] {
        match self.stop {
            StopReason::StopToken => &self.tokens[..self.tokens.len() - 1],
            StopReason::MaxNewTokens | StopReason::Caller => &self.tokens,
        }
    }
}

/// Decodes after `prompt` with `config`, stopping at any of `stop_tokens`.
pub fn decode<S: Stepper>(stepper: &S, prompt: &[u32], config: &DecodeConfig, stop_tokens: &[u32]) -> Result<Decoded> {
    decode_streaming(stepper, prompt, config, stop_tokens, &mut |_| ControlFlow::Continue(()))
}

/// [`decode`], handing every new token to `on_token` as soon as it is chosen (beam search, which
/// chooses only at the end, hands its answer over token by token then). `ControlFlow::Break`
/// ends decoding after that token, with [`StopReason::Caller`].
pub fn decode_streaming<S: Stepper>(
    stepper: &S,
    prompt: &[u32],
    config: &DecodeConfig,
    stop_tokens: &[u32],
    on_token: &mut dyn FnMut(u32) -> ControlFlow<()>,
) -> Result<Decoded> {
    config.validate()?;
    match config.decoding {
        Decoding::Greedy => token_by_token(stepper, prompt, config, stop_tokens, &mut argmax, on_token),
        Decoding::Sample { temperature, seed } => {
            let mut sampler = Sampler::new(temperature, seed);
            token_by_token(stepper, prompt, config, stop_tokens, &mut |lp| sampler.draw(lp), on_token)
        }
        Decoding::Beam { width, length_penalty } => {
            let mut best = beam_search(stepper, prompt, config, stop_tokens, width, length_penalty)?;
            if let Some(i) = best.tokens.iter().position(|&t| on_token(t).is_break()) {
                if i + 1 < best.tokens.len() {
                    best.tokens.truncate(i + 1);
                    best.stop = StopReason::Caller;
                }
            }
            Ok(best)
        }
    }
}

/// `log_softmax` of the penalised logits, in f64; fails on NaN or empty logits.
fn log_probs(logits: &[f32], penalty: &RepetitionPenalty, prompt: &[u32], generated: &[u32]) -> Result<Vec<f64>> {
    if logits.is_empty() || logits.iter().any(|z| z.is_nan()) {
        return Err(EvalError::Decode { problem: "the model returned empty or NaN logits".into() });
    }
    let mut z = logits.to_vec();
    penalty.apply(&mut z, prompt, generated);
    let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max + z.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
    Ok(z.iter().map(|&v| v as f64 - lse).collect())
}

/// Greedy decoding: the highest penalised logit at each step (ties: lowest id).
pub fn greedy<S: Stepper>(stepper: &S, prompt: &[u32], config: &DecodeConfig, stop_tokens: &[u32]) -> Result<Decoded> {
    token_by_token(stepper, prompt, config, stop_tokens, &mut argmax, &mut |_| ControlFlow::Continue(()))
}

/// One token a step, `choose` picking it from the penalised log-probabilities.
fn token_by_token<S: Stepper>(
    stepper: &S,
    prompt: &[u32],
    config: &DecodeConfig,
    stop_tokens: &[u32],
    choose: &mut dyn FnMut(&[f64]) -> usize,
    on_token: &mut dyn FnMut(u32) -> ControlFlow<()>,
) -> Result<Decoded> {
    let (mut state, mut logits) = stepper.start(prompt)?;
    let mut out = Decoded { tokens: Vec::new(), stop: StopReason::MaxNewTokens, log_prob: 0.0 };
    while pick(&mut out, &logits, prompt, config, stop_tokens, choose)? {
        let token = *out.tokens.last().expect("a token was picked");
        if on_token(token).is_break() {
            out.stop = StopReason::Caller;
            return Ok(out);
        }
        logits = stepper.step(&mut state, token)?;
    }
    if let Some(&last) = out.tokens.last() {
        // The last token needs no step; the caller still sees it.
        let _ = on_token(last);
    }
    Ok(out)
}

/// The first highest entry.
fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// Appends `choose`'s pick from `logits` to `out`; returns whether decoding goes on (no stop
/// token and fewer than `max_new_tokens` so far), in which case the pick must be fed next.
fn pick(
    out: &mut Decoded,
    logits: &[f32],
    prompt: &[u32],
    config: &DecodeConfig,
    stop_tokens: &[u32],
    choose: &mut dyn FnMut(&[f64]) -> usize,
) -> Result<bool> {
    let lp = log_probs(logits, &config.repetition_penalty, prompt, &out.tokens)?;
    let best = choose(&lp);
    let token = best as u32;
    out.tokens.push(token);
    out.log_prob += lp[best];
    if stop_tokens.contains(&token) {
        out.stop = StopReason::StopToken;
        return Ok(false);
    }
    Ok(out.tokens.len() < config.max_new_tokens)
}

/// [`greedy`] of every prompt, the unfinished ones stepped side by side with
/// [`Stepper::step_many`]; the answers are [`greedy`]'s of each prompt alone.
pub fn greedy_many<S: Stepper>(stepper: &S, prompts: &[Vec<u32>], config: &DecodeConfig, stop_tokens: &[u32]) -> Result<Vec<Decoded>> {
    config.validate()?;
    let mut states = Vec::with_capacity(prompts.len());
    let mut logits = Vec::with_capacity(prompts.len());
    for prompt in prompts {
        let (state, first) = stepper.start(prompt)?;
        states.push(state);
        logits.push(first);
    }
    let mut outs: Vec<Decoded> = prompts.iter().map(|_| Decoded { tokens: Vec::new(), stop: StopReason::MaxNewTokens, log_prob: 0.0 }).collect();
    let mut live: Vec<usize> = (0..prompts.len()).collect();
    while !live.is_empty() {
        let mut going = Vec::with_capacity(live.len());
        for &i in &live {
            if pick(&mut outs[i], &logits[i], &prompts[i], config, stop_tokens, &mut argmax)? {
                going.push(i);
            }
        }
        live = going;
        if live.is_empty() {
            break;
        }
        let fed: Vec<u32> = live.iter().map(|&i| *outs[i].tokens.last().expect("picked")).collect();
        let mut refs: Vec<&mut S::State> = states.iter_mut().enumerate().filter(|(i, _)| live.binary_search(i).is_ok()).map(|(_, s)| s).collect();
        for (&i, next) in live.iter().zip(stepper.step_many(&mut refs, &fed)?) {
            logits[i] = next;
        }
    }
    Ok(outs)
}

/// `sum / len^alpha` (the ranking score of a finished hypothesis).
fn normalised(sum: f64, len: usize, alpha: f64) -> f64 {
    sum / (len.max(1) as f64).powf(alpha)
}

struct Beam<T> {
    tokens: Vec<u32>,
    sum: f64,
    state: T,
    logits: Vec<f32>,
}

/// A ranked candidate: `(sum, beam, token)`.
type Candidate = (f64, usize, u32);

/// Candidates of all beams in rank order, at most `keep` of them (the best).
fn ranked<T>(beams: &[Beam<T>], config: &DecodeConfig, prompt: &[u32], keep: usize) -> Result<Vec<Candidate>> {
    let mut all = Vec::new();
    for (b, beam) in beams.iter().enumerate() {
        let lp = log_probs(&beam.logits, &config.repetition_penalty, prompt, &beam.tokens)?;
        all.extend(lp.iter().enumerate().map(|(t, v)| (beam.sum + v, b, t as u32)));
    }
    let order = |a: &Candidate, b: &Candidate| b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2)));
    if all.len() > keep {
        all.select_nth_unstable_by(keep - 1, order);
        all.truncate(keep);
    }
    all.sort_unstable_by(order);
    Ok(all)
}

/// Beam search of `width` beams (see the module doc for the exact rule).
pub fn beam_search<S: Stepper>(
    stepper: &S,
    prompt: &[u32],
    config: &DecodeConfig,
    stop_tokens: &[u32],
    width: usize,
    length_penalty: f64,
) -> Result<Decoded> {
    let (state, logits) = stepper.start(prompt)?;
    let mut live = vec![Beam { tokens: Vec::new(), sum: 0.0, state, logits }];
    let mut finished: Vec<Decoded> = Vec::new();
    for step in 0..config.max_new_tokens {
        // A rank-`width` window holds `width` live beams plus every stop candidate before them.
        let keep = width.saturating_mul(stop_tokens.len() + 1);
        let mut chosen: Vec<Candidate> = Vec::new();
        for (rank, cand) in ranked(&live, config, prompt, keep)?.into_iter().enumerate() {
            let (sum, b, token) = cand;
            if stop_tokens.contains(&token) {
                if rank < width {
                    let mut tokens = live[b].tokens.clone();
                    tokens.push(token);
                    finished.push(Decoded { tokens, stop: StopReason::StopToken, log_prob: sum });
                }
            } else if chosen.len() < width {
                chosen.push(cand);
            }
        }
        if finished.len() >= width {
            break;
        }
        let last = step + 1 == config.max_new_tokens;
        let mut grown = Vec::with_capacity(chosen.len());
        for (sum, b, token) in chosen {
            let mut tokens = live[b].tokens.clone();
            tokens.push(token);
            if last {
                finished.push(Decoded { tokens, stop: StopReason::MaxNewTokens, log_prob: sum });
            } else {
                grown.push((tokens, sum, live[b].state.clone(), token));
            }
        }
        live = step_beams(stepper, grown)?;
        if live.is_empty() {
            break;
        }
    }
    best_of(finished, length_penalty)
}

/// The beams `(tokens, sum, state before the last token, last token)`, their last tokens fed
/// side by side with [`Stepper::step_many`].
fn step_beams<S: Stepper>(stepper: &S, grown: Vec<(Vec<u32>, f64, S::State, u32)>) -> Result<Vec<Beam<S::State>>> {
    if grown.is_empty() {
        return Ok(Vec::new());
    }
    let fed: Vec<u32> = grown.iter().map(|g| g.3).collect();
    let mut states: Vec<S::State> = Vec::with_capacity(grown.len());
    let mut heads = Vec::with_capacity(grown.len());
    for (tokens, sum, state, _) in grown {
        states.push(state);
        heads.push((tokens, sum));
    }
    let mut refs: Vec<&mut S::State> = states.iter_mut().collect();
    let logits = stepper.step_many(&mut refs, &fed)?;
    Ok(heads.into_iter().zip(states).zip(logits).map(|(((tokens, sum), state), logits)| Beam { tokens, sum, state, logits }).collect())
}

/// The hypothesis with the best normalised score (first one on ties).
fn best_of(hypotheses: Vec<Decoded>, length_penalty: f64) -> Result<Decoded> {
    let score = |d: &Decoded| normalised(d.log_prob, d.tokens.len(), length_penalty);
    let mut best: Option<Decoded> = None;
    for h in hypotheses {
        if best.as_ref().is_none_or(|b| score(&h) > score(b)) {
            best = Some(h);
        }
    }
    best.ok_or_else(|| EvalError::Decode { problem: "no hypothesis finished (the vocabulary has only stop tokens?)".into() })
}

/// Slow reference: scores every continuation (ending at the first stop token or after
/// `max_new_tokens`) and returns the best by `sum / len^length_penalty`, with the penalty of
/// `config`. Cost `vocab^max_new_tokens` steps: only for toy scorers.
pub fn exhaustive_search<S: Stepper>(
    stepper: &S,
    prompt: &[u32],
    config: &DecodeConfig,
    stop_tokens: &[u32],
    length_penalty: f64,
) -> Result<Decoded> {
    let (state, logits) = stepper.start(prompt)?;
    let mut frontier = vec![Beam { tokens: Vec::new(), sum: 0.0, state, logits }];
    let mut finished = Vec::new();
    while let Some(beam) = frontier.pop() {
        let lp = log_probs(&beam.logits, &config.repetition_penalty, prompt, &beam.tokens)?;
        for (t, v) in lp.iter().enumerate() {
            let mut tokens = beam.tokens.clone();
            tokens.push(t as u32);
            let sum = beam.sum + v;
            let stop = if stop_tokens.contains(&(t as u32)) {
                StopReason::StopToken
            } else if tokens.len() == config.max_new_tokens {
                StopReason::MaxNewTokens
            } else {
                let mut state = beam.state.clone();
                let logits = stepper.step(&mut state, t as u32)?;
                frontier.push(Beam { tokens, sum, state, logits });
                continue;
            };
            finished.push(Decoded { tokens, stop, log_prob: sum });
        }
    }
    best_of(finished, length_penalty)
}
