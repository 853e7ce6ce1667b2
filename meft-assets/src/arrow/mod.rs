//! A minimal Arrow IPC *stream* reader that turns record batches into JSON rows.
//!
//! Supports what the pinned Hugging Face shards use: utf8 / large_utf8, (large_)list, struct,
//! signed/unsigned ints, float32/64, bool and null columns, uncompressed little-endian buffers,
//! with validity bitmaps. Dictionaries, compression and other types give a clear error.
//! Format reference: the Arrow columnar spec, "Serialization and Interprocess Communication".

mod flatbuf;

use std::io::Read;

use flatbuf::Table;
use serde_json::{Map, Value};

use crate::error::{AssetError, Result};

/// A column type this reader understands.
#[derive(Debug, Clone, PartialEq)]
enum DataType {
    Null,
    Int { bits: i32, signed: bool },
    Float { bits: i32 },
    Bool,
    Utf8 { large: bool },
    List { large: bool, item: Box<Field> },
    Struct(Vec<Field>),
}

/// A named column (or child) with its type.
#[derive(Debug, Clone, PartialEq)]
struct Field {
    name: String,
    dtype: DataType,
}

/// Parses an `org.apache.arrow.flatbuf.Field` table.
fn parse_field(t: Table<'_>) -> std::result::Result<Field, String> {
    let name = t.string(0)?.unwrap_or_default().to_string();
    if t.table(4)?.is_some() {
        return Err(format!("column `{name}`: dictionary encoding is not supported"));
    }
    let children = t.tables(5)?.into_iter().map(parse_field).collect::<std::result::Result<Vec<_>, _>>()?;
    let ty = t.table(3)?;
    let dtype = match t.u8(2, 0)? {
        1 => DataType::Null,
        2 => {
            let ty = ty.ok_or("Int type without parameters")?;
            DataType::Int { bits: ty.i32(0, 0)?, signed: ty.u8(1, 0)? != 0 }
        }
        3 => match ty.map(|ty| ty.i16(0, 0)).transpose()?.unwrap_or(0) {
            1 => DataType::Float { bits: 32 },
            2 => DataType::Float { bits: 64 },
            _ => {
                return Err(format!("column `{name}`: half-precision floats are not supported"));
            }
        },
        5 => DataType::Utf8 { large: false },
        6 => DataType::Bool,
        20 => DataType::Utf8 { large: true },
        code @ (12 | 21) => {
            let [item]: [Field; 1] = children.try_into().map_err(|_| format!("column `{name}`: list needs exactly one child"))?;
            DataType::List { large: code == 21, item: Box::new(item) }
        }
        13 => DataType::Struct(children),
        code => {
            return Err(format!("column `{name}`: Arrow type code {code} is not supported"));
        }
    };
    if let DataType::Int { bits, .. } = dtype
        && ![8, 16, 32, 64].contains(&bits)
    {
        return Err(format!("column `{name}`: integer width {bits} is not supported"));
    }
    Ok(Field { name, dtype })
}

/// Parses a Schema message header into its top-level fields.
fn parse_schema(t: Table<'_>) -> std::result::Result<Vec<Field>, String> {
    if t.i16(0, 0)? != 0 {
        return Err("big-endian Arrow data is not supported".into());
    }
    t.tables(1)?.into_iter().map(parse_field).collect()
}

/// Walks the flattened field nodes and buffers of one record batch.
struct Cursor<'a> {
    nodes: &'a [u8],
    buffers: &'a [u8],
    body: &'a [u8],
    node: usize,
    buffer: usize,
}

fn le_i64(b: &[u8], i: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i * 8..i * 8 + 8]);
    i64::from_le_bytes(a)
}

impl<'a> Cursor<'a> {
    /// `(length, null_count)` of the next field node.
    fn next_node(&mut self) -> std::result::Result<(usize, usize), String> {
        if (self.node + 1) * 16 > self.nodes.len() {
            return Err("record batch has fewer field nodes than the schema needs".into());
        }
        let len = le_i64(self.nodes, self.node * 2);
        let nulls = le_i64(self.nodes, self.node * 2 + 1);
        self.node += 1;
        let len = usize::try_from(len).map_err(|_| format!("negative field length {len}"))?;
        let nulls = usize::try_from(nulls).map_err(|_| format!("negative null count {nulls}"))?;
        // Every array with rows needs buffer bytes for them (at least a bit each); this bound
        // stops a corrupted length from allocating before the buffers are checked.
        if len > self.body.len().saturating_mul(8).saturating_add(64) || nulls > len {
            return Err(format!("field length {len} (nulls {nulls}) does not fit a {}-byte body", self.body.len()));
        }
        Ok((len, nulls))
    }

    /// The bytes of the next buffer, checked against the body.
    fn next_buffer(&mut self) -> std::result::Result<&'a [u8], String> {
        if (self.buffer + 1) * 16 > self.buffers.len() {
            return Err("record batch has fewer buffers than the schema needs".into());
        }
        let off = le_i64(self.buffers, self.buffer * 2);
        let len = le_i64(self.buffers, self.buffer * 2 + 1);
        self.buffer += 1;
        usize::try_from(off)
            .ok()
            .zip(usize::try_from(len).ok())
            .and_then(|(o, l)| self.body.get(o..o.checked_add(l)?))
            .ok_or_else(|| format!("buffer [{off}, +{len}) lies outside the {}-byte body", self.body.len()))
    }

    /// Decodes the next array of type `field` into one JSON value per slot.
    fn decode(&mut self, field: &Field) -> std::result::Result<Vec<Value>, String> {
        let (len, nulls) = self.next_node()?;
        // The null type has no buffers at all, not even a validity bitmap.
        let validity = match field.dtype {
            DataType::Null => Validity { bits: None },
            _ => Validity::new(self.next_buffer()?, len, nulls, &field.name)?,
        };
        let values = match &field.dtype {
            DataType::Null => vec![Value::Null; len],
            DataType::Int { bits, signed } => ints(self.next_buffer()?, len, *bits, *signed, &field.name)?,
            DataType::Float { bits } => floats(self.next_buffer()?, len, *bits, &field.name)?,
            DataType::Bool => bools(self.next_buffer()?, len, &field.name)?,
            DataType::Utf8 { large } => {
                let offsets = offsets(self.next_buffer()?, len, *large, &field.name)?;
                strings(&offsets, self.next_buffer()?, &field.name)?
            }
            DataType::List { large, item } => {
                let offsets = offsets(self.next_buffer()?, len, *large, &field.name)?;
                lists(&offsets, self.decode(item)?, &field.name)?
            }
            DataType::Struct(children) => self.structs(children, len, &field.name)?,
        };
        Ok(validity.apply(values))
    }

    fn structs(&mut self, children: &[Field], len: usize, name: &str) -> std::result::Result<Vec<Value>, String> {
        let mut rows = vec![Map::new(); len];
        for child in children {
            let col = self.decode(child)?;
            if col.len() != len {
                return Err(format!("struct `{name}`: child `{}` has {} rows, not {len}", child.name, col.len()));
            }
            for (row, v) in rows.iter_mut().zip(col) {
                row.insert(child.name.clone(), v);
            }
        }
        Ok(rows.into_iter().map(Value::Object).collect())
    }
}

/// The validity bitmap of one array (absent when there are no nulls).
struct Validity<'a> {
    bits: Option<&'a [u8]>,
}

impl<'a> Validity<'a> {
    fn new(buf: &'a [u8], len: usize, nulls: usize, name: &str) -> std::result::Result<Self, String> {
        if nulls == 0 {
            return Ok(Validity { bits: None });
        }
        if buf.len() * 8 < len {
            return Err(format!("column `{name}`: validity bitmap too short for {len} rows"));
        }
        Ok(Validity { bits: Some(buf) })
    }

    fn apply(&self, mut values: Vec<Value>) -> Vec<Value> {
        if let Some(bits) = self.bits {
            for (i, v) in values.iter_mut().enumerate() {
                if bits[i / 8] & (1 << (i % 8)) == 0 {
                    *v = Value::Null;
                }
            }
        }
        values
    }
}

fn need(buf: &[u8], bytes: usize, name: &str) -> std::result::Result<(), String> {
    if buf.len() < bytes {
        return Err(format!("column `{name}`: buffer has {} bytes, needs {bytes}", buf.len()));
    }
    Ok(())
}

fn ints(buf: &[u8], len: usize, bits: i32, signed: bool, name: &str) -> std::result::Result<Vec<Value>, String> {
    let w = (bits / 8) as usize;
    need(buf, len * w, name)?;
    let out = buf[..len * w].chunks_exact(w).map(|c| {
        let mut a = [0u8; 8];
        a[..w].copy_from_slice(c);
        if signed && c[w - 1] & 0x80 != 0 {
            a[w..].fill(0xff);
        }
        if signed { Value::from(i64::from_le_bytes(a)) } else { Value::from(u64::from_le_bytes(a)) }
    });
    Ok(out.collect())
}

fn floats(buf: &[u8], len: usize, bits: i32, name: &str) -> std::result::Result<Vec<Value>, String> {
    let w = (bits / 8) as usize;
    need(buf, len * w, name)?;
    let out = buf[..len * w].chunks_exact(w).map(|c| {
        let mut a = [0u8; 8];
        a[..w].copy_from_slice(c);
        let x = if w == 4 { f64::from(f32::from_le_bytes([a[0], a[1], a[2], a[3]])) } else { f64::from_le_bytes(a) };
        serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
    });
    Ok(out.collect())
}

fn bools(buf: &[u8], len: usize, name: &str) -> std::result::Result<Vec<Value>, String> {
    need(buf, len.div_ceil(8), name)?;
    Ok((0..len).map(|i| Value::Bool(buf[i / 8] & (1 << (i % 8)) != 0)).collect())
}

/// The `len + 1` offsets of a variable-size array, checked to be non-decreasing.
fn offsets(buf: &[u8], len: usize, large: bool, name: &str) -> std::result::Result<Vec<usize>, String> {
    let w = if large { 8 } else { 4 };
    need(buf, (len + 1) * w, name)?;
    let raw: Vec<i64> = buf[..(len + 1) * w]
        .chunks_exact(w)
        .map(|c| {
            let mut a = [0u8; 8];
            a[..w].copy_from_slice(c);
            if large { i64::from_le_bytes(a) } else { i64::from(i32::from_le_bytes([a[0], a[1], a[2], a[3]])) }
        })
        .collect();
    if raw.first().is_some_and(|&o| o < 0) || raw.windows(2).any(|w| w[1] < w[0]) {
        return Err(format!("column `{name}`: offsets are negative or decreasing"));
    }
    Ok(raw.into_iter().map(|o| o as usize).collect())
}

fn strings(offsets: &[usize], data: &[u8], name: &str) -> std::result::Result<Vec<Value>, String> {
    offsets
        .windows(2)
        .map(|w| {
            let raw = data.get(w[0]..w[1]).ok_or_else(|| format!("column `{name}`: string data too short"))?;
            let s = std::str::from_utf8(raw).map_err(|e| format!("column `{name}`: invalid UTF-8: {e}"))?;
            Ok(Value::String(s.to_string()))
        })
        .collect()
}

fn lists(offsets: &[usize], items: Vec<Value>, name: &str) -> std::result::Result<Vec<Value>, String> {
    let (first, last) = (offsets[0], offsets[offsets.len() - 1]);
    if last > items.len() {
        return Err(format!("column `{name}`: list offsets point past the {} child values", items.len()));
    }
    let mut it = items.into_iter().skip(first);
    Ok(offsets.windows(2).map(|w| Value::Array(it.by_ref().take(w[1] - w[0]).collect())).collect())
}

/// Reads `n` bytes, or `None` at a clean end of stream (no bytes at all). The buffer grows as
/// data arrives, so a corrupted huge length cannot force a huge allocation up front.
fn read_exact_or_eof(r: &mut impl Read, n: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    r.take(n as u64).read_to_end(&mut buf)?;
    match buf.len() {
        0 if n > 0 => Ok(None),
        got if got < n => Err(std::io::ErrorKind::UnexpectedEof.into()),
        _ => Ok(Some(buf)),
    }
}

/// One IPC message: flatbuffer metadata and body bytes.
type Message = (Vec<u8>, Vec<u8>);

/// Reads one message, or `None` at the end-of-stream marker.
fn read_message(r: &mut impl Read) -> std::result::Result<Option<Message>, String> {
    let io = |e: std::io::Error| format!("truncated stream: {e}");
    let Some(word) = read_exact_or_eof(r, 4).map_err(io)? else {
        return Ok(None);
    };
    let mut len = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
    if len == 0xFFFF_FFFF {
        let w = read_exact_or_eof(r, 4).map_err(io)?.ok_or("truncated stream: length missing")?;
        len = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
    }
    if len == 0 {
        return Ok(None);
    }
    let meta = read_exact_or_eof(r, len as usize).map_err(io)?.ok_or("truncated stream: metadata missing")?;
    let body_len = Table::root(&meta)?.i64(3, 0)?;
    let body_len = usize::try_from(body_len).map_err(|_| format!("negative body length {body_len}"))?;
    let body = if body_len == 0 { Vec::new() } else { read_exact_or_eof(r, body_len).map_err(io)?.ok_or("truncated stream: body missing")? };
    Ok(Some((meta, body)))
}

/// Decodes one RecordBatch message into its rows.
fn decode_batch(header: Table<'_>, body: &[u8], schema: &[Field]) -> std::result::Result<Vec<Value>, String> {
    if header.table(3)?.is_some() {
        return Err("compressed record batches are not supported".into());
    }
    let len = usize::try_from(header.i64(0, 0)?).map_err(|_| "negative batch length")?;
    if len > body.len().saturating_mul(8).saturating_add(64) {
        return Err(format!("batch length {len} does not fit a {}-byte body", body.len()));
    }
    let mut cur = Cursor { nodes: header.structs(1, 16)?, buffers: header.structs(2, 16)?, body, node: 0, buffer: 0 };
    cur.structs(schema, len, "<record batch>")
}

/// Reads an Arrow IPC stream and calls `f` with each row as a JSON object (columns by name).
/// Returns the number of rows. `file` names the source in errors.
pub fn for_each_row(mut r: impl Read, file: &str, mut f: impl FnMut(Value) -> Result<()>) -> Result<usize> {
    let fmt = |msg: String| AssetError::format(file, msg);
    let mut schema: Option<Vec<Field>> = None;
    let mut rows = 0;
    while let Some((meta, body)) = read_message(&mut r).map_err(fmt)? {
        let msg = Table::root(&meta).map_err(fmt)?;
        let header = msg.table(2).map_err(fmt)?.ok_or_else(|| fmt("message without header".into()))?;
        match (msg.u8(1, 0).map_err(fmt)?, &schema) {
            (1, None) => schema = Some(parse_schema(header).map_err(fmt)?),
            (3, Some(fields)) => {
                for row in decode_batch(header, &body, fields).map_err(fmt)? {
                    f(row)?;
                    rows += 1;
                }
            }
            (2, _) => return Err(fmt("dictionary batches are not supported".into())),
            (3, None) => return Err(fmt("record batch before the schema".into())),
            (kind, _) => return Err(fmt(format!("unexpected message type {kind}"))),
        }
    }
    if schema.is_none() {
        return Err(fmt("empty stream: no schema message (is this an Arrow IPC *stream* file?)".into()));
    }
    Ok(rows)
}
