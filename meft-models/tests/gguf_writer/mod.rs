//! A tiny GGUF writer for tests: builds valid (or deliberately broken) files in memory.
//!
//! `tiny_llama()` describes a complete one-layer LLaMA (hidden 8, 2 heads, 1 KV head, FFN 16,
//! vocabulary of 8 byte-level BPE tokens including three ChatML control tokens) that the loader,
//! the config reader and the tokenizer accept; tests then break one thing at a time.

#![allow(dead_code)] // each test binary uses a different part of this helper

use std::path::{Path, PathBuf};

/// A metadata value as the writer emits it.
#[derive(Debug, Clone)]
pub enum Value {
    /// type 4
    U32(u32),
    /// type 6
    F32(f32),
    /// type 7
    Bool(bool),
    /// type 8
    Str(String),
    /// type 9 of type 8
    StrArray(Vec<String>),
    /// type 9 of type 5
    I32Array(Vec<i32>),
}

/// One tensor: GGUF name, GGUF dims (fastest first), raw type id and raw bytes.
#[derive(Debug, Clone)]
pub struct RawTensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    pub data: Vec<u8>,
}

/// An in-memory GGUF file description.
#[derive(Debug, Clone)]
pub struct GgufWriter {
    pub magic: [u8; 4],
    pub version: u32,
    pub kv: Vec<(String, Value)>,
    pub tensors: Vec<RawTensor>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    let ty: u32 = match v {
        Value::U32(_) => 4,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::Str(_) => 8,
        Value::StrArray(_) | Value::I32Array(_) => 9,
    };
    out.extend_from_slice(&ty.to_le_bytes());
    match v {
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::Str(s) => put_str(out, s),
        Value::StrArray(items) => {
            out.extend_from_slice(&8u32.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            items.iter().for_each(|s| put_str(out, s));
        }
        Value::I32Array(items) => {
            out.extend_from_slice(&5u32.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            items.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
        }
    }
}

impl GgufWriter {
    /// Replaces (or adds) metadata `key`.
    pub fn set(mut self, key: &str, value: Value) -> Self {
        self.kv.retain(|(k, _)| k != key);
        self.kv.push((key.to_string(), value));
        self
    }

    /// Removes metadata `key`.
    pub fn without(mut self, key: &str) -> Self {
        self.kv.retain(|(k, _)| k != key);
        self
    }

    /// Serialises with 32-byte alignment.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.magic);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kv.len() as u64).to_le_bytes());
        for (k, v) in &self.kv {
            put_str(&mut out, k);
            put_value(&mut out, v);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            t.dims.iter().for_each(|d| out.extend_from_slice(&d.to_le_bytes()));
            out.extend_from_slice(&t.ggml_type.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offset += (t.data.len() as u64).div_ceil(32) * 32;
        }
        for t in &self.tensors {
            out.resize(out.len().div_ceil(32) * 32, 0);
            out.extend_from_slice(&t.data);
        }
        out
    }

    /// Writes the file into `dir` and returns its path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, self.to_bytes()).expect("write test GGUF");
        path
    }
}

/// Deterministic pseudo-random f32 values in [-0.5, 0.5).
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

fn f32_tensor(name: &str, dims: &[u64], seed: u64) -> RawTensor {
    let n = dims.iter().product::<u64>() as usize;
    let data = values(n, seed).iter().flat_map(|v| v.to_le_bytes()).collect();
    RawTensor { name: name.into(), dims: dims.to_vec(), ggml_type: 0, data }
}

/// Q8_0 encoding of `v` (length a multiple of 32).
pub fn q8_0(v: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    for block in v.chunks(32) {
        let amax = block.iter().fold(0f32, |m, x| m.max(x.abs()));
        let d = amax / 127.0;
        out.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
        let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
        out.extend(block.iter().map(|x| (x * inv).round() as i8 as u8));
    }
    out
}

/// Vocabulary of the tiny model: three control tokens, then byte-level pieces.
pub const TOKENS: [&str; 8] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b", "c", "Ġ", "ab"];

/// A complete tiny LLaMA GGUF (see the module doc). The embedding is Q8_0, the rest F32.
pub fn tiny_llama() -> GgufWriter {
    let (d, ffn, vocab, kv_dim) = (8u64, 16u64, TOKENS.len() as u64, 4u64);
    let s = |x: &str| Value::Str(x.into());
    let kv = vec![
        ("general.architecture".into(), s("llama")),
        ("llama.block_count".into(), Value::U32(1)),
        ("llama.context_length".into(), Value::U32(64)),
        ("llama.embedding_length".into(), Value::U32(d as u32)),
        ("llama.feed_forward_length".into(), Value::U32(ffn as u32)),
        ("llama.attention.head_count".into(), Value::U32(2)),
        ("llama.attention.head_count_kv".into(), Value::U32(1)),
        ("llama.rope.freq_base".into(), Value::F32(10000.0)),
        ("llama.attention.layer_norm_rms_epsilon".into(), Value::F32(1e-5)),
        ("llama.vocab_size".into(), Value::U32(vocab as u32)),
        ("tokenizer.ggml.model".into(), s("gpt2")),
        ("tokenizer.ggml.pre".into(), s("smollm")),
        ("tokenizer.ggml.tokens".into(), Value::StrArray(TOKENS.iter().map(|t| t.to_string()).collect())),
        ("tokenizer.ggml.token_type".into(), Value::I32Array(vec![3, 3, 3, 1, 1, 1, 1, 1])),
        ("tokenizer.ggml.merges".into(), Value::StrArray(vec!["a b".into()])),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        ("tokenizer.chat_template".into(), s("{{'<|im_start|>' + message['role']}}")),
    ];
    let embd = RawTensor { name: "token_embd.weight".into(), dims: vec![d, vocab], ggml_type: 8, data: q8_0(&values((d * vocab) as usize, 1)) };
    let tensors = vec![
        embd,
        f32_tensor("blk.0.attn_norm.weight", &[d], 2),
        f32_tensor("blk.0.attn_q.weight", &[d, d], 3),
        f32_tensor("blk.0.attn_k.weight", &[d, kv_dim], 4),
        f32_tensor("blk.0.attn_v.weight", &[d, kv_dim], 5),
        f32_tensor("blk.0.attn_output.weight", &[d, d], 6),
        f32_tensor("blk.0.ffn_norm.weight", &[d], 7),
        f32_tensor("blk.0.ffn_gate.weight", &[d, ffn], 8),
        f32_tensor("blk.0.ffn_up.weight", &[d, ffn], 9),
        f32_tensor("blk.0.ffn_down.weight", &[ffn, d], 10),
        f32_tensor("output_norm.weight", &[d], 11),
    ];
    GgufWriter { magic: *b"GGUF", version: 3, kv, tensors }
}

/// A fresh directory under the system temp dir, unique per test and process.
pub fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("meft-gguf-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}
