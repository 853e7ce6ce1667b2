//! Just enough of the FlatBuffers wire format to read Arrow IPC metadata.
//!
//! A table starts with a signed offset back to its vtable; the vtable lists, per field slot, the
//! field's offset inside the table (0 = absent). Offsets to sub-tables, strings and vectors are
//! unsigned and relative to where they are stored. Every read is bounds-checked.

/// A position in a flatbuffer that holds a table.
#[derive(Clone, Copy)]
pub(crate) struct Table<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// Error text for a read outside the buffer.
fn oob(what: &str, pos: usize, len: usize) -> String {
    format!("corrupt metadata: {what} at byte {pos} is outside the {len}-byte message")
}

fn bytes<'a>(buf: &'a [u8], pos: usize, n: usize, what: &str) -> Result<&'a [u8], String> {
    pos.checked_add(n).and_then(|end| buf.get(pos..end)).ok_or_else(|| oob(what, pos, buf.len()))
}

fn u16_at(buf: &[u8], pos: usize) -> Result<u16, String> {
    let b = bytes(buf, pos, 2, "u16")?;
    Ok(u16::from_le_bytes([b[0], b[1]]))
}

fn u32_at(buf: &[u8], pos: usize) -> Result<u32, String> {
    let b = bytes(buf, pos, 4, "u32")?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Follows the unsigned offset stored at `pos`.
fn follow(buf: &[u8], pos: usize) -> Result<usize, String> {
    let off = u32_at(buf, pos)? as usize;
    pos.checked_add(off).ok_or_else(|| oob("offset", pos, buf.len()))
}

impl<'a> Table<'a> {
    /// The root table of a finished flatbuffer.
    pub(crate) fn root(buf: &'a [u8]) -> Result<Self, String> {
        Ok(Table { buf, pos: follow(buf, 0)? })
    }

    /// Position of field `slot` inside the buffer, if present.
    fn field(&self, slot: usize) -> Result<Option<usize>, String> {
        let soff = i64::from(u32_at(self.buf, self.pos)? as i32);
        let vt = usize::try_from(self.pos as i64 - soff).map_err(|_| oob("vtable", self.pos, self.buf.len()))?;
        let vt_len = usize::from(u16_at(self.buf, vt)?);
        let entry = 4 + 2 * slot;
        if entry + 2 > vt_len {
            return Ok(None);
        }
        match u16_at(self.buf, vt + entry)? {
            0 => Ok(None),
            off => Ok(Some(self.pos + usize::from(off))),
        }
    }

    /// A scalar field of `N` little-endian bytes, or `None` when absent.
    fn scalar<const N: usize>(&self, slot: usize) -> Result<Option<[u8; N]>, String> {
        match self.field(slot)? {
            None => Ok(None),
            Some(p) => {
                let mut out = [0u8; N];
                out.copy_from_slice(bytes(self.buf, p, N, "scalar")?);
                Ok(Some(out))
            }
        }
    }

    /// A `ubyte`/`bool` field.
    pub(crate) fn u8(&self, slot: usize, default: u8) -> Result<u8, String> {
        Ok(self.scalar::<1>(slot)?.map_or(default, |b| b[0]))
    }

    /// A `short` field.
    pub(crate) fn i16(&self, slot: usize, default: i16) -> Result<i16, String> {
        Ok(self.scalar::<2>(slot)?.map_or(default, i16::from_le_bytes))
    }

    /// An `int` field.
    pub(crate) fn i32(&self, slot: usize, default: i32) -> Result<i32, String> {
        Ok(self.scalar::<4>(slot)?.map_or(default, i32::from_le_bytes))
    }

    /// A `long` field.
    pub(crate) fn i64(&self, slot: usize, default: i64) -> Result<i64, String> {
        Ok(self.scalar::<8>(slot)?.map_or(default, i64::from_le_bytes))
    }

    /// A sub-table field.
    pub(crate) fn table(&self, slot: usize) -> Result<Option<Table<'a>>, String> {
        match self.field(slot)? {
            None => Ok(None),
            Some(p) => Ok(Some(Table { buf: self.buf, pos: follow(self.buf, p)? })),
        }
    }

    /// A string field (UTF-8 checked).
    pub(crate) fn string(&self, slot: usize) -> Result<Option<&'a str>, String> {
        let Some((start, len)) = self.vector(slot)? else {
            return Ok(None);
        };
        let raw = bytes(self.buf, start, len, "string")?;
        std::str::from_utf8(raw).map(Some).map_err(|e| format!("corrupt metadata: string is not UTF-8: {e}"))
    }

    /// `(first element position, element count)` of a vector field.
    fn vector(&self, slot: usize) -> Result<Option<(usize, usize)>, String> {
        match self.field(slot)? {
            None => Ok(None),
            Some(p) => {
                let v = follow(self.buf, p)?;
                Ok(Some((v + 4, u32_at(self.buf, v)? as usize)))
            }
        }
    }

    /// A vector-of-tables field (empty when absent).
    pub(crate) fn tables(&self, slot: usize) -> Result<Vec<Table<'a>>, String> {
        let Some((start, len)) = self.vector(slot)? else {
            return Ok(Vec::new());
        };
        (0..len).map(|i| Ok(Table { buf: self.buf, pos: follow(self.buf, start + 4 * i)? })).collect()
    }

    /// The raw bytes of a vector of fixed-size structs (`size` bytes each; empty when absent).
    pub(crate) fn structs(&self, slot: usize, size: usize) -> Result<&'a [u8], String> {
        let Some((start, len)) = self.vector(slot)? else {
            return Ok(&[]);
        };
        let n = len.checked_mul(size).ok_or_else(|| oob("struct vector", start, self.buf.len()))?;
        bytes(self.buf, start, n, "struct vector")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-assembled buffer: root table with an int (slot 0), absent slot 1 and a string (slot 2).
    fn sample() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(16u32.to_le_bytes()); // root offset -> table at 16
        // vtable at 4: len 10, table size 12, slot0 @4, slot1 absent, slot2 @8
        b.extend([10u16, 12, 4, 0, 8].iter().flat_map(|x| x.to_le_bytes()));
        b.extend([0u8; 2]); // pad to 16
        b.extend(12i32.to_le_bytes()); // table at 16: soffset 16-4
        b.extend(42i32.to_le_bytes()); // slot 0 at 20
        b.extend(4u32.to_le_bytes()); // slot 2 at 24 -> string at 28
        b.extend(3u32.to_le_bytes());
        b.extend(b"abc\0");
        b
    }

    #[test]
    fn reads_fields_and_defaults() {
        let buf = sample();
        let t = Table::root(&buf).unwrap();
        assert_eq!(t.i32(0, -1).unwrap(), 42);
        assert_eq!(t.i32(1, -1).unwrap(), -1);
        assert_eq!(t.string(2).unwrap(), Some("abc"));
        assert_eq!(t.string(7).unwrap(), None);
    }

    #[test]
    fn truncated_buffer_is_an_error_not_a_panic() {
        let buf = sample();
        for cut in 0..buf.len() {
            let short = &buf[..cut];
            let r = Table::root(short).and_then(|t| t.string(2).map(|_| ()));
            assert!(r.is_err() || cut >= 35, "cut {cut} should fail");
        }
    }
}
