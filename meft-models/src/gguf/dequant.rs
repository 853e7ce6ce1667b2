//! GGML tensor types and their dequantisation to f32.
//!
//! Block formats (little-endian; `d`, `m`, `dmin` are f16):
//! - `Q8_0`: 32 values = `d | i8 q[32]`, `x = d·q`.
//! - `Q4_0`: 32 values = `d | u8 qs[16]`; element `j < 16` is the low nibble of `qs[j]`, element
//!   `j + 16` the high nibble; `x = d·(q − 8)`.
//! - `Q4_1`: 32 values = `d | m | u8 qs[16]` (nibbles as `Q4_0`); `x = d·q + m`.
//! - `Q4_K`: 256 values = `d | dmin | u8 scales[12] | u8 qs[128]`; eight sub-blocks of 32 with 6-bit
//!   scale/min pairs packed in `scales`; `x = d·sc·q − dmin·mn`.
//! - `Q6_K`: 256 values = `u8 ql[128] | u8 qh[64] | i8 scales[16] | d`; 6-bit `q` = 4 low bits from
//!   `ql` and 2 high bits from `qh`; `x = d·scale·(q − 32)`.
//!
//! [`dequantize`] decodes whole blocks in parallel (rayon); [`dequantize_slow`] is the reference: it
//! computes every element independently from its index, with no block loop to share state.

use half::{bf16, f16};
use rayon::prelude::*;

/// The GGML tensor types meft can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
    /// 4-bit, symmetric, 32 per block.
    Q4_0,
    /// 4-bit with offset, 32 per block.
    Q4_1,
    /// 8-bit, 32 per block.
    Q8_0,
    /// 4-bit k-quant, 256 per super-block.
    Q4K,
    /// 6-bit k-quant, 256 per super-block.
    Q6K,
}

impl GgmlType {
    /// Maps a raw GGML type id; `None` for types meft cannot dequantise.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            12 => Self::Q4K,
            14 => Self::Q6K,
            30 => Self::Bf16,
            _ => return None,
        })
    }

    /// Human name of a raw id, for messages (`Q5_0 (6)`).
    pub fn describe_id(id: u32) -> String {
        const NAMES: [&str; 31] = [
            "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS",
            "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16",
        ];
        match NAMES.get(id as usize) {
            Some(name) => format!("{name} ({id})"),
            None => format!("unknown ({id})"),
        }
    }

    /// Values per block.
    pub fn block_len(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::Bf16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q8_0 => 32,
            Self::Q4K | Self::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::Bf16 => 2,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
            Self::Q4K => 144,
            Self::Q6K => 210,
        }
    }

    /// Bytes taken by `n` values, or `None` when `n` is not a whole number of blocks (or overflows).
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        if !n.is_multiple_of(self.block_len()) {
            return None;
        }
        (n / self.block_len()).checked_mul(self.block_bytes())
    }
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Decodes one block of `ty` from `src` into `dst` (`dst.len() == ty.block_len()`).
fn decode_block(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    match ty {
        GgmlType::F32 => dst[0] = f32::from_le_bytes([src[0], src[1], src[2], src[3]]),
        GgmlType::F16 => dst[0] = f16_at(src, 0),
        GgmlType::Bf16 => dst[0] = bf16::from_le_bytes([src[0], src[1]]).to_f32(),
        GgmlType::Q8_0 => {
            let d = f16_at(src, 0);
            for (out, &q) in dst.iter_mut().zip(&src[2..34]) {
                *out = d * f32::from(q as i8);
            }
        }
        GgmlType::Q4_0 => {
            let d = f16_at(src, 0);
            let (lo, hi) = dst.split_at_mut(16);
            for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&src[2..18]) {
                *l = d * (f32::from(q & 0x0F) - 8.0);
                *h = d * (f32::from(q >> 4) - 8.0);
            }
        }
        GgmlType::Q4_1 => {
            let (d, m) = (f16_at(src, 0), f16_at(src, 2));
            let (lo, hi) = dst.split_at_mut(16);
            for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&src[4..20]) {
                *l = d * f32::from(q & 0x0F) + m;
                *h = d * f32::from(q >> 4) + m;
            }
        }
        GgmlType::Q4K => decode_q4k(src, dst),
        GgmlType::Q6K => decode_q6k(src, dst),
    }
}

/// The 6-bit (scale, min) pair of sub-block `j` (0..8) of a Q4_K block.
fn q4k_scale_min(scales: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        let sc = (scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4);
        let mn = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
        (sc, mn)
    }
}

fn decode_q4k(src: &[u8], dst: &mut [f32]) {
    let (d, dmin) = (f16_at(src, 0), f16_at(src, 2));
    let scales = &src[4..16];
    for (group, chunk) in dst.chunks_exact_mut(64).enumerate() {
        let qs = &src[16 + 32 * group..16 + 32 * (group + 1)];
        let (sc_lo, mn_lo) = q4k_scale_min(scales, 2 * group);
        let (sc_hi, mn_hi) = q4k_scale_min(scales, 2 * group + 1);
        let (lo, hi) = chunk.split_at_mut(32);
        for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(qs) {
            *l = d * f32::from(sc_lo) * f32::from(q & 0x0F) - dmin * f32::from(mn_lo);
            *h = d * f32::from(sc_hi) * f32::from(q >> 4) - dmin * f32::from(mn_hi);
        }
    }
}

fn decode_q6k(src: &[u8], dst: &mut [f32]) {
    let d = f16_at(src, 208);
    for (half, chunk) in dst.chunks_exact_mut(128).enumerate() {
        let ql = &src[64 * half..64 * (half + 1)];
        let qh = &src[128 + 32 * half..128 + 32 * (half + 1)];
        let sc = &src[192 + 8 * half..192 + 8 * (half + 1)];
        for l in 0..32 {
            let is = l / 16;
            let quads = [
                (ql[l] & 0x0F) | ((qh[l] & 3) << 4),
                (ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4),
                (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
            ];
            for (k, &q) in quads.iter().enumerate() {
                let scale = f32::from(sc[is + 2 * k] as i8);
                chunk[l + 32 * k] = d * scale * (f32::from(q) - 32.0);
            }
        }
    }
}

/// Dequantises `n` values of type `ty` from `bytes` (exactly `ty.bytes_for(n)` long), in parallel.
///
/// The caller checks the length (the loader turns a mismatch into a typed error).
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
    let (bl, bb) = (ty.block_len(), ty.block_bytes());
    debug_assert_eq!(ty.bytes_for(n), Some(bytes.len()));
    let mut out = vec![0f32; n];
    const BLOCKS_PER_TASK: usize = 1024;
    out.par_chunks_mut(bl * BLOCKS_PER_TASK).zip(bytes.par_chunks(bb * BLOCKS_PER_TASK)).for_each(|(dst, src)| {
        for (d, s) in dst.chunks_exact_mut(bl).zip(src.chunks_exact(bb)) {
            decode_block(ty, s, d);
        }
    });
    out
}

/// Reference dequantiser: each element from its own index, sequentially.
pub fn dequantize_slow(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
    (0..n).map(|i| value_at(ty, bytes, i)).collect()
}

/// Element `i` of a tensor of type `ty` stored in `bytes`.
fn value_at(ty: GgmlType, bytes: &[u8], i: usize) -> f32 {
    let block = &bytes[i / ty.block_len() * ty.block_bytes()..][..ty.block_bytes()];
    let j = i % ty.block_len();
    let nibble = |qs: &[u8], j: usize| {
        if j < 16 { qs[j] & 0x0F } else { qs[j - 16] >> 4 }
    };
    match ty {
        GgmlType::F32 => f32::from_le_bytes([block[0], block[1], block[2], block[3]]),
        GgmlType::F16 => f16::from_bits(u16::from_le_bytes([block[0], block[1]])).to_f32(),
        GgmlType::Bf16 => bf16::from_bits(u16::from_le_bytes([block[0], block[1]])).to_f32(),
        GgmlType::Q8_0 => f16_at(block, 0) * f32::from(block[2 + j] as i8),
        GgmlType::Q4_0 => f16_at(block, 0) * (f32::from(nibble(&block[2..], j)) - 8.0),
        GgmlType::Q4_1 => f16_at(block, 0) * f32::from(nibble(&block[4..], j)) + f16_at(block, 2),
        GgmlType::Q4K => {
            let (sub, k) = (j / 32, j % 32);
            let byte = block[16 + 32 * (sub / 2) + k];
            let q = if sub % 2 == 0 { byte & 0x0F } else { byte >> 4 };
            let (sc, mn) = q4k_scale_min(&block[4..16], sub);
            f16_at(block, 0) * f32::from(sc) * f32::from(q) - f16_at(block, 2) * f32::from(mn)
        }
        GgmlType::Q6K => {
            let (half, r) = (j / 128, j % 128);
            let (quad, l) = (r / 32, r % 32);
            let ql = block[64 * half + l + 32 * (quad % 2)];
            let low = if quad < 2 { ql & 0x0F } else { ql >> 4 };
            let high = (block[128 + 32 * half + l] >> (2 * quad)) & 3;
            let scale = block[192 + 8 * half + l / 16 + 2 * quad] as i8;
            let q = f32::from(low | (high << 4)) - 32.0;
            f16_at(block, 208) * f32::from(scale) * q
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: [GgmlType; 8] =
        [GgmlType::F32, GgmlType::F16, GgmlType::Bf16, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q6K];

    /// Random bytes with every f16 scale field replaced by a finite value, so NaN/inf cannot hide
    /// a mismatch.
    fn sane_blocks(ty: GgmlType, raw: &[u8]) -> Vec<u8> {
        let mut bytes = raw.to_vec();
        let scale_fields: &[usize] = match ty {
            GgmlType::Q4_0 | GgmlType::Q8_0 => &[0],
            GgmlType::Q4_1 | GgmlType::Q4K => &[0, 2],
            GgmlType::Q6K => &[208],
            GgmlType::F16 | GgmlType::Bf16 | GgmlType::F32 => &[],
        };
        for block in bytes.chunks_exact_mut(ty.block_bytes()) {
            for &at in scale_fields {
                let v = f16::from_f32(f32::from(block[at]) / 97.0 - 1.3);
                block[at..at + 2].copy_from_slice(&v.to_le_bytes());
            }
        }
        bytes
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Fast (block, parallel) and slow (per element) dequantisers agree exactly up to
        /// f32 rounding: tolerance 1e-6·(1 + |ref|).
        #[test]
        fn fast_matches_slow(type_index in 0usize..8, blocks in 1usize..2100, seed in any::<u64>()) {
            let ty = ALL[type_index];
            let n = blocks * ty.block_len();
            let mut state = seed | 1;
            let raw: Vec<u8> = (0..ty.bytes_for(n).unwrap()).map(|_| {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17; (state >> 24) as u8
            }).collect();
            let bytes = sane_blocks(ty, &raw);
            let fast = dequantize(ty, &bytes, n);
            let slow = dequantize_slow(ty, &bytes, n);
            for (i, (f, s)) in fast.iter().zip(&slow).enumerate() {
                let same = f == s || (f.is_nan() && s.is_nan()) || (f - s).abs() <= 1e-6 * (1.0 + s.abs());
                prop_assert!(same, "{ty:?} element {i}: fast {f} slow {s}");
            }
        }
    }

    #[test]
    fn q4_1_block_by_hand() {
        let mut block = Vec::new();
        block.extend_from_slice(&f16::from_f32(0.5).to_le_bytes());
        block.extend_from_slice(&f16::from_f32(-1.0).to_le_bytes());
        block.extend((0..16u8).map(|k| k | ((15 - k) << 4)));
        let x = dequantize(GgmlType::Q4_1, &block, 32);
        assert_eq!(x[0], -1.0);
        assert_eq!(x[3], 0.5);
        assert_eq!(x[16], 6.5);
        assert_eq!(x[31], -1.0);
    }

    #[test]
    fn type_ids_and_sizes() {
        assert_eq!(GgmlType::from_id(3), Some(GgmlType::Q4_1));
        assert_eq!(GgmlType::from_id(6), None);
        assert_eq!(GgmlType::describe_id(6), "Q5_0 (6)");
        assert_eq!(GgmlType::Q8_0.bytes_for(64), Some(68));
        assert_eq!(GgmlType::Q8_0.bytes_for(33), None);
    }
}
