//! Intel AMX tile products in bf16 with f32 accumulation: `C (=|+=) A·B` where `A` is f32 rows
//! converted to bf16 on the fly and `B` is a frozen matrix packed once into tile panels.
//!
//! An AMX tile register holds 16 rows of 64 bytes. `tdpbf16ps c, a, b` adds, for each of the
//! 16×16 f32 elements of `c`, the dot product of a 32-element bf16 row of `a` with a column of
//! `b`, where `b` stores pairs of consecutive k values next to each other ("VNNI" layout: tile
//! row r, column n holds `B[2r][n], B[2r+1][n]`). Each product here computes a 32×32 block of `C`
//! from two `A` tiles and two `B` tiles into four accumulator tiles (all eight tile registers).
//!
//! Layouts:
//! - [`Panels`] (`B`, `k × n`): column blocks of 16, each `kp / 2` lines of 64 bytes (one line =
//!   one tile row), `kp` = k rounded up to 32 and `n` rounded up to 32, zero-padded.
//! - packed `A`: rows of `kp` bf16 values (zero-padded), rows rounded up to 16.
//!
//! Use needs the CPU feature (CPUID leaf 7: AMX-TILE and AMX-BF16) and the kernel's permission
//! for the tile state (Linux `arch_prctl(ARCH_REQ_XCOMP_PERM)`), both checked once by
//! [`available`]; `MEFT_NO_AMX=1` turns it off (to test the portable path). The numerics are those
//! of [`super::bf16::round_bf16`] inputs with f32 accumulation; `super::bf16` holds the portable
//! path and the reference that tests compare against.

use std::sync::OnceLock;

use rayon::prelude::*;

use super::Dst;

/// One 64-byte tile row: 32 bf16 values.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[repr(C, align(64))]
pub(crate) struct Line(pub [u16; 32]);

/// Whether AMX-BF16 tiles can be used by this process (checked once).
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| std::env::var_os("MEFT_NO_AMX").is_none() && detect())
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    // CPUID leaf 7, sub-leaf 0: EDX bit 22 = AMX-BF16, bit 24 = AMX-TILE.
    #[allow(unused_unsafe)]
    // SAFETY: `cpuid` exists on every x86_64 CPU and has no side effects.
    let leaf7 = unsafe { std::arch::x86_64::__cpuid_count(7, 0) };
    let has = |bit: u32| leaf7.edx & (1 << bit) != 0;
    has(22) && has(24) && request_tile_permission()
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// Asks Linux for the AMX tile-data state (process-wide); false when refused.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_permission() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: the arch_prctl system call reads two integer arguments and touches no memory of
    // ours; `syscall` clobbers rcx and r11, which are declared.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    ret == 0
}

/// `n` rounded up to a multiple of `m`.
pub(crate) fn round_up(n: usize, m: usize) -> usize {
    n.div_ceil(m) * m
}

/// A frozen `k × n` matrix `B` packed into 16-column tile panels (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Panels {
    k: usize,
    n: usize,
    kp: usize,
    np: usize,
    lines: Vec<Line>,
}

impl Panels {
    /// Packs `Wᵀ` of a row-major f32 weight `w` `(out, in)`: `B = Wᵀ` is `in × out`, for `x·Wᵀ`.
    /// Each output row of `W` is one column of `B`: its consecutive pairs go to one tile column.
    pub fn transposed_of(w: &[f32], out: usize, inp: usize) -> Self {
        Self::pack(inp, out, |block, panel| {
            let mut row = vec![0u16; round_up(inp.max(1), 32)];
            for col in 0..16 {
                let o = block * 16 + col;
                if o >= out {
                    break;
                }
                super::round_into(&w[o * inp..(o + 1) * inp], &mut row[..inp]);
                for (pair, line) in panel.iter_mut().enumerate() {
                    line.0[2 * col] = row[2 * pair];
                    line.0[2 * col + 1] = row[2 * pair + 1];
                }
            }
        })
    }

    /// Packs a row-major f32 weight `w` `(out, in)` itself: `B = W` is `out × in`, for `g·W`.
    /// Rows `2r` and `2r + 1` of `W` interleave into the tile row `r` of each column block.
    pub fn of(w: &[f32], out: usize, inp: usize) -> Self {
        Self::pack(out, inp, |block, panel| {
            let (c0, cols) = (block * 16, inp.saturating_sub(block * 16).min(16));
            let mut pair_rows = [[0u16; 16]; 2];
            for (pair, line) in panel.iter_mut().enumerate() {
                for (half, dst) in pair_rows.iter_mut().enumerate() {
                    let r = 2 * pair + half;
                    dst.fill(0);
                    if r < out && cols > 0 {
                        super::round_into(&w[r * inp + c0..r * inp + c0 + cols], &mut dst[..cols]);
                    }
                }
                for col in 0..16 {
                    line.0[2 * col] = pair_rows[0][col];
                    line.0[2 * col + 1] = pair_rows[1][col];
                }
            }
        })
    }

    /// A `k × n` packing whose column block `b` (16 columns, `kp / 2` lines) `fill(b, lines)`
    /// writes; the blocks are filled in parallel.
    fn pack(k: usize, n: usize, fill: impl Fn(usize, &mut [Line]) + Sync) -> Self {
        let (kp, np) = (round_up(k.max(1), 32), round_up(n.max(1), 32));
        let per_block = kp / 2;
        let mut lines = vec![Line::default(); np / 16 * per_block];
        lines.par_chunks_mut(per_block).enumerate().for_each(|(block, panel)| fill(block, panel));
        Self { k, n, kp, np, lines }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.lines.len() * std::mem::size_of::<Line>()
    }
}

/// `m` f32 rows of width `k` as bf16 tile rows of width `kp` (zero-padded), rows rounded up to 16.
fn pack_rows(a: &[f32], m: usize, k: usize, kp: usize) -> Vec<Line> {
    let per_row = kp / 32;
    let mut lines = vec![Line::default(); round_up(m.max(1), 16) * per_row];
    lines.par_chunks_mut(per_row).take(m).enumerate().for_each(|(r, row)| {
        // SAFETY: `Line` is 32 `u16` with no padding, so the row's lines are `kp` contiguous u16.
        let flat = unsafe { std::slice::from_raw_parts_mut(row.as_mut_ptr().cast::<u16>(), kp) };
        super::round_into(&a[r * k..(r + 1) * k], &mut flat[..k]);
    });
    lines
}

/// The 64-byte tile configuration: palette 1, all eight tiles 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    fn full() -> Self {
        let mut c = Self { palette: 1, start_row: 0, reserved: [0; 14], colsb: [0; 16], rows: [0; 16] };
        c.colsb[..8].fill(64);
        c.rows[..8].fill(16);
        c
    }
}

/// The destination shared by the column ranges of one product (each writes its own columns).
#[derive(Clone, Copy)]
struct SharedDst(*mut f32);

// SAFETY: the tasks that share it write disjoint column ranges of the destination.
unsafe impl Send for SharedDst {}
// SAFETY: as for `Send`.
unsafe impl Sync for SharedDst {}

/// `dst (m × n, row-major) (=|+=) a·B` for f32 rows `a` (`m × k`) and packed `b` (`k × n`),
/// the output column pairs split across the rayon threads. Returns `false`, computing nothing,
/// when AMX is not [`available`] or the lengths disagree with the shapes.
pub(crate) fn matmul(dst: &mut [f32], mode: Dst, a: &[f32], m: usize, b: &Panels) -> bool {
    let (k, n) = (b.k, b.n);
    if !available() || a.len() != m * k || dst.len() != m * n {
        return false;
    }
    if m == 0 || n == 0 {
        return true;
    }
    let a_lines = pack_rows(a, m, k, b.kp);
    let pairs = b.np / 32;
    let chunk = pairs.div_ceil(rayon::current_num_threads().max(1) * 2).max(1);
    let out = SharedDst(dst.as_mut_ptr());
    (0..pairs).step_by(chunk).collect::<Vec<_>>().into_par_iter().for_each(|p0| {
        let out = out;
        // SAFETY: AMX is available (checked above); every pointer the column range touches lies
        // in `a_lines`, `b.lines` or the range's own columns of `dst` (see `column_range`).
        unsafe { column_range(out.0, mode, (&a_lines, m), b, p0..(p0 + chunk).min(pairs)) };
    });
    true
}

/// Column-block pairs `pairs` of the product: every 32×32 block of `C` in those columns.
///
/// # Safety
/// AMX must be available and `dst` must point to `m × b.n` floats of which this call alone
/// writes the columns of `pairs`; `a_lines` holds `m` rows packed by [`pack_rows`] for `b.kp`.
#[cfg(target_arch = "x86_64")]
unsafe fn column_range(dst: *mut f32, mode: Dst, (a_lines, m): (&[Line], usize), b: &Panels, pairs: std::ops::Range<usize>) {
    let cfg = TileConfig::full();
    let mut tmp = [Line::default(); 64]; // 32 rows × 32 f32 (128 bytes per row)
    let tmp_ptr = tmp.as_mut_ptr().cast::<f32>();
    let a_row_lines = b.kp / 32;
    let chunks = b.kp / 32;
    let per_block = b.kp / 2;
    // SAFETY: the configuration is a valid palette-1 layout; tiles are released below.
    unsafe { std::arch::asm!("ldtilecfg [{}]", in(reg) &cfg, options(nostack, readonly)) };
    for pair in pairs {
        let b0 = b.lines[2 * pair * per_block..].as_ptr();
        let b1 = b.lines[(2 * pair + 1) * per_block..].as_ptr();
        let mut r0 = 0;
        while r0 < m {
            let a0 = a_lines[r0 * a_row_lines..].as_ptr();
            let two = r0 + 16 < m;
            // SAFETY: `a0` starts 16 (or 32) packed rows of `kp` bf16 values and `b0`/`b1` two
            // panels of `kp / 2` lines each; the k loop reads exactly those and the stores write
            // the 32×32 `tmp` buffer.
            unsafe {
                if two {
                    tiles_2x2(a0, b.kp * 2, b0, b1, chunks, tmp_ptr);
                } else {
                    tiles_1x2(a0, b.kp * 2, b0, b1, chunks, tmp_ptr);
                }
            }
            let rows = (m - r0).min(if two { 32 } else { 16 });
            let (c0, cols) = (pair * 32, (b.n - (pair * 32).min(b.n)).min(32));
            for r in 0..rows {
                // SAFETY: row `r0 + r`, columns `c0..c0 + cols` lie inside `dst` (`m × n`) and
                // belong to this call's column range.
                let d = unsafe { std::slice::from_raw_parts_mut(dst.add((r0 + r) * b.n + c0), cols) };
                let s = &tmp[2 * r..2 * r + 2];
                // SAFETY: two 64-byte lines are 32 contiguous f32.
                let s = unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<f32>(), 32) };
                match mode {
                    Dst::Overwrite => d.copy_from_slice(&s[..cols]),
                    Dst::Accumulate => d.iter_mut().zip(s).for_each(|(x, y)| *x += y),
                }
            }
            r0 += 32;
        }
    }
    // SAFETY: releases the tile state configured above.
    unsafe { std::arch::asm!("tilerelease", options(nostack, nomem)) };
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn column_range(_: *mut f32, _: Dst, _: (&[Line], usize), _: &Panels, _: std::ops::Range<usize>) {
    unreachable!("AMX is never available off x86_64")
}

/// Two row tiles × two column tiles over `chunks` k-chunks of 32, stored into the 32×32 `c`.
///
/// # Safety
/// Tiles configured by [`TileConfig::full`]; `a` points to 32 rows of `a_stride` bytes with
/// `chunks · 64` readable bytes each; `b0`, `b1` to `chunks · 16` lines; `c` to 32×32 f32.
#[cfg(target_arch = "x86_64")]
unsafe fn tiles_2x2(a: *const Line, a_stride: usize, b0: *const Line, b1: *const Line, chunks: usize, c: *mut f32) {
    // SAFETY: the caller's contract; tile registers are not used by compiled code.
    unsafe {
        std::arch::asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "2:",
            "tileloadd tmm4, [{a0} + {sa}*1]",
            "tileloadd tmm6, [{b0} + {sb}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {sb}*1]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a1} + {sa}*1]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a0}, 64",
            "add {a1}, 64",
            "add {b0}, 1024",
            "add {b1}, 1024",
            "dec {n}",
            "jnz 2b",
            a0 = inout(reg) a => _,
            a1 = inout(reg) a.cast::<u8>().add(16 * a_stride) => _,
            b0 = inout(reg) b0 => _,
            b1 = inout(reg) b1 => _,
            n = inout(reg) chunks => _,
            sa = in(reg) a_stride,
            sb = in(reg) 64usize,
            options(nostack, readonly)
        );
        std::arch::asm!(
            "tilestored [{c} + {sc}*1], tmm0",
            "add {c}, 64",
            "tilestored [{c} + {sc}*1], tmm1",
            "add {c}, 1984",
            "tilestored [{c} + {sc}*1], tmm2",
            "add {c}, 64",
            "tilestored [{c} + {sc}*1], tmm3",
            c = inout(reg) c => _,
            sc = in(reg) 128usize,
            options(nostack)
        );
    }
}

/// One row tile × two column tiles (the last 16 rows of a product), stored into the top half
/// of the 32×32 `c`.
///
/// # Safety
/// As [`tiles_2x2`], with 16 rows behind `a`.
#[cfg(target_arch = "x86_64")]
unsafe fn tiles_1x2(a: *const Line, a_stride: usize, b0: *const Line, b1: *const Line, chunks: usize, c: *mut f32) {
    // SAFETY: the caller's contract; tile registers are not used by compiled code.
    unsafe {
        std::arch::asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "2:",
            "tileloadd tmm4, [{a0} + {sa}*1]",
            "tileloadd tmm6, [{b0} + {sb}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {sb}*1]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "add {a0}, 64",
            "add {b0}, 1024",
            "add {b1}, 1024",
            "dec {n}",
            "jnz 2b",
            a0 = inout(reg) a => _,
            b0 = inout(reg) b0 => _,
            b1 = inout(reg) b1 => _,
            n = inout(reg) chunks => _,
            sa = in(reg) a_stride,
            sb = in(reg) 64usize,
            options(nostack, readonly)
        );
        std::arch::asm!(
            "tilestored [{c} + {sc}*1], tmm0",
            "add {c}, 64",
            "tilestored [{c} + {sc}*1], tmm1",
            c = inout(reg) c => _,
            sc = in(reg) 128usize,
            options(nostack)
        );
    }
}
