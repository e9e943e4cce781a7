//! Page headers checked before the parquet crate reads them. The crate reserves a page's declared
//! uncompressed size before it decompresses the page (`Vec::with_capacity` in its
//! `serialized_reader.rs`; apache/arrow-rs#10734), so a few bytes claiming 2 GiB make it reserve
//! 2 GiB (found by fuzzing, `fuzz/` target `log_parquet`). This walks every column chunk's pages and
//! refuses a file where a page declares more than its chunk's total uncompressed size (the format's
//! own invariant, the bound arrow-rs#10821 proposes) or expands more than [`MAX_EXPANSION`] times
//! beyond [`MIN_ALLOWANCE`].
//!
//! A page header is Thrift compact protocol. Only fields 2 (`uncompressed_page_size`) and 3
//! (`compressed_page_size`) are needed; everything else is skipped generically, nesting bounded.

use parquet::errors::ParquetError;
use parquet::file::metadata::ParquetMetaData;
use parquet::file::reader::ChunkReader;

use super::check_chunk_ranges;

/// Most a page may expand on decompression, beyond [`MIN_ALLOWANCE`]. Real data stays far below
/// (dictionary and RLE encoding already take out runs before the codec sees them).
pub const MAX_EXPANSION: u64 = 1024;
/// What any page may decompress to, whatever its compressed size.
pub const MIN_ALLOWANCE: u64 = 1 << 20;
/// Nesting of Thrift structs, lists and maps skipped inside a header.
const MAX_DEPTH: usize = 16;

/// Checks every column chunk's place in the file ([`check_chunk_ranges`]), then every page of it.
pub fn check_pages<R: ChunkReader>(
    metadata: &ParquetMetaData,
    reader: &R,
) -> Result<(), ParquetError> {
    check_chunk_ranges(metadata, reader.len())?;
    for (g, group) in metadata.row_groups().iter().enumerate() {
        for (c, chunk) in group.columns().iter().enumerate() {
            let start = chunk
                .dictionary_page_offset()
                .unwrap_or(chunk.data_page_offset()) as u64;
            let end = start + chunk.compressed_size() as u64;
            let total = chunk.uncompressed_size().max(0) as u64;
            let fail = |at: u64, what: String| {
                ParquetError::General(format!(
                    "row group {g}, column {c}: the page header at offset {at} {what}"
                ))
            };
            let mut at = start;
            while at < end {
                let (len, page) = read_header(reader, at, end).map_err(|e| fail(at, e))?;
                let body_end = (at + len)
                    .checked_add(page.compressed)
                    .filter(|&e| e <= end);
                let Some(body_end) = body_end else {
                    return Err(fail(
                        at,
                        format!(
                            "declares {} compressed bytes, past the chunk's end at {end}",
                            page.compressed
                        ),
                    ));
                };
                let allowed = MIN_ALLOWANCE + page.compressed.saturating_mul(MAX_EXPANSION);
                if page.uncompressed > total.min(allowed) {
                    return Err(fail(
                        at,
                        format!(
                            "declares {} uncompressed bytes from {} compressed (the chunk declares \
                         {total} in all; at most {allowed} are accepted)",
                            page.uncompressed, page.compressed
                        ),
                    ));
                }
                at = body_end;
            }
        }
    }
    Ok(())
}

#[derive(Debug, PartialEq)]
struct PageSizes {
    uncompressed: u64,
    compressed: u64,
}

/// Reads the header at `at` (never past `end`): its length and sizes. Headers are usually tens of
/// bytes but carry statistics, so the window grows until the header fits.
fn read_header<R: ChunkReader>(reader: &R, at: u64, end: u64) -> Result<(u64, PageSizes), String> {
    let mut window = 256u64;
    loop {
        let len = window.min(end - at);
        let bytes = reader
            .get_bytes(at, len as usize)
            .map_err(|e| format!("could not be read: {e}"))?;
        match parse_header(&bytes) {
            Ok((used, sizes)) => return Ok((used as u64, sizes)),
            Err(Parse::Short) if len < end - at => window *= 4,
            Err(Parse::Short) => return Err("is cut off by the chunk's end".into()),
            Err(Parse::Bad(why)) => return Err(format!("is malformed: {why}")),
        }
    }
}

#[derive(Debug, PartialEq)]
enum Parse {
    /// More bytes are needed.
    Short,
    Bad(&'static str),
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn byte(&mut self) -> Result<u8, Parse> {
        let b = *self.bytes.get(self.at).ok_or(Parse::Short)?;
        self.at += 1;
        Ok(b)
    }

    fn skip(&mut self, n: u64) -> Result<(), Parse> {
        let n = usize::try_from(n).map_err(|_| Parse::Short)?;
        if self.bytes.len() - self.at < n {
            return Err(Parse::Short);
        }
        self.at += n;
        Ok(())
    }

    fn varint(&mut self) -> Result<u64, Parse> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f).checked_shl(shift).unwrap_or(0);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Parse::Bad("a varint longer than 10 bytes"))
    }

    fn zigzag(&mut self) -> Result<i64, Parse> {
        let v = self.varint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    /// Skips one value of compact type `t`.
    fn skip_value(&mut self, t: u8, depth: usize) -> Result<(), Parse> {
        if depth > MAX_DEPTH {
            return Err(Parse::Bad("nested too deep"));
        }
        match t {
            1 | 2 => Ok(()), // a boolean field: the value is in the type
            3 => self.skip(1),
            4..=6 => self.varint().map(drop),
            7 => self.skip(8),
            8 => {
                let n = self.varint()?;
                self.skip(n)
            }
            9 | 10 => {
                let h = self.byte()?;
                let n = match h >> 4 {
                    15 => self.varint()?,
                    n => u64::from(n),
                };
                let et = h & 0x0f;
                for _ in 0..n {
                    // Booleans in a list take a byte each.
                    if et == 1 || et == 2 {
                        self.skip(1)?
                    } else {
                        self.skip_value(et, depth + 1)?
                    }
                }
                Ok(())
            }
            11 => {
                let n = self.varint()?;
                if n > 0 {
                    let kv = self.byte()?;
                    for _ in 0..n {
                        self.skip_value(kv >> 4, depth + 1)?;
                        self.skip_value(kv & 0x0f, depth + 1)?;
                    }
                }
                Ok(())
            }
            12 => self.skip_struct(depth + 1, |_, _, _| Ok(false)),
            13 => self.skip(16), // UUID
            _ => Err(Parse::Bad("an unknown Thrift type")),
        }
    }

    /// Walks a struct's fields; `take(cursor, id, type)` reads a field itself and says so (true),
    /// or leaves it to be skipped.
    fn skip_struct(
        &mut self,
        depth: usize,
        mut take: impl FnMut(&mut Self, i16, u8) -> Result<bool, Parse>,
    ) -> Result<(), Parse> {
        let mut id: i16 = 0;
        loop {
            let h = self.byte()?;
            if h == 0 {
                return Ok(());
            }
            let t = h & 0x0f;
            id = match h >> 4 {
                0 => i16::try_from(self.zigzag()?)
                    .map_err(|_| Parse::Bad("a field id out of range"))?,
                delta => id
                    .checked_add(i16::from(delta))
                    .ok_or(Parse::Bad("a field id out of range"))?,
            };
            if !take(self, id, t)? {
                self.skip_value(t, depth)?;
            }
        }
    }
}

/// Parses a `PageHeader` at the start of `bytes`: the bytes it takes and the two sizes.
fn parse_header(bytes: &[u8]) -> Result<(usize, PageSizes), Parse> {
    let mut cur = Cursor { bytes, at: 0 };
    let (mut uncompressed, mut compressed) = (None, None);
    cur.skip_struct(0, |cur, id, t| {
        if t != 5 || !(id == 2 || id == 3) {
            return Ok(false);
        }
        let v = cur.zigzag()?;
        let v = u64::try_from(v).map_err(|_| Parse::Bad("a negative page size"))?;
        if id == 2 {
            uncompressed = Some(v)
        } else {
            compressed = Some(v)
        }
        Ok(true)
    })?;
    match (uncompressed, compressed) {
        (Some(uncompressed), Some(compressed)) => Ok((
            cur.at,
            PageSizes {
                uncompressed,
                compressed,
            },
        )),
        _ => Err(Parse::Bad("no page sizes")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zigzag(v: i64) -> Vec<u8> {
        let mut n = ((v << 1) ^ (v >> 63)) as u64;
        let mut out = Vec::new();
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                return out;
            }
            out.push(b | 0x80);
        }
    }

    /// type = DATA_PAGE, sizes, a nested data_page_header {num_values, encodings list}, stop.
    fn header(uncompressed: i64, compressed: i64) -> Vec<u8> {
        let mut h = minimal_header(uncompressed, compressed);
        h.pop(); // the stop: the nested struct comes first
        h.push(0x2c); // field 5 (delta 2), a struct
        h.push(0x15);
        h.extend(zigzag(3)); // num_values
        h.extend([0x19, 0x25, 0x00, 0x06]); // field 2: a list of two i32 (0 and 3)
        h.extend([0x11, 0x00, 0x00]); // field 3: true; then the inner and the outer struct's stops
        h
    }

    #[test]
    fn reads_the_sizes_and_skips_the_rest() {
        let h = header(100, 40);
        assert_eq!(
            parse_header(&h),
            Ok((
                h.len(),
                PageSizes {
                    uncompressed: 100,
                    compressed: 40
                }
            ))
        );
        for cut in 0..h.len() {
            assert_eq!(
                parse_header(&h[..cut]).unwrap_err(),
                Parse::Short,
                "cut at {cut}"
            );
        }
    }

    /// Only the three first fields and the stop.
    fn minimal_header(uncompressed: i64, compressed: i64) -> Vec<u8> {
        let mut h = vec![0x15];
        h.extend(zigzag(0));
        h.push(0x15);
        h.extend(zigzag(uncompressed));
        h.push(0x15);
        h.extend(zigzag(compressed));
        h.push(0x00);
        h
    }

    #[test]
    fn real_files_pass_and_a_page_claiming_too_much_is_refused() {
        let events: Vec<super::super::ArchivedEvent> = (0..50u64)
            .map(|i| super::super::ArchivedEvent {
                position: i + 1,
                session_id: format!("s{}", i % 7),
                item_id: format!("item-{}", i % 11),
                timestamp_ms: 1_700_000_000_000 + i as i64,
                received_ms: 1_700_000_000_000 + i as i64,
                client_seq: Some(i),
                model_version: "v1".into(),
            })
            .collect();
        let file = bytes::Bytes::from(super::super::encode(&events, "test").unwrap());
        let meta = parquet::file::metadata::ParquetMetaDataReader::new()
            .parse_and_finish(&file)
            .unwrap();
        check_pages(&meta, &file).unwrap();

        // The first page's header replaced by a shorter one claiming 1.4 GB, padded to the old
        // length so that nothing after it moves.
        let chunk = meta.row_group(0).column(0);
        let start = chunk
            .dictionary_page_offset()
            .unwrap_or(chunk.data_page_offset()) as usize;
        let (len, sizes) = parse_header(&file[start..]).unwrap();
        let h = minimal_header(1_400_000_000, sizes.compressed as i64);
        assert!(h.len() <= len, "{} > {len}", h.len());
        let mut forged = file[..start].to_vec();
        forged.extend(&h);
        forged.resize(start + len, 0);
        forged.extend(&file[start + len..]);
        let err = check_pages(&meta, &bytes::Bytes::from(forged)).unwrap_err();
        assert!(
            err.to_string().contains("1400000000 uncompressed bytes"),
            "{err}"
        );
    }

    #[test]
    fn refuses_negative_sizes_and_runaway_nesting() {
        assert_eq!(
            parse_header(&header(-1, 4)).unwrap_err(),
            Parse::Bad("a negative page size")
        );
        let mut deep = vec![0x1c; 40]; // struct in struct in struct …
        deep.extend([0; 41]);
        assert_eq!(
            parse_header(&deep).unwrap_err(),
            Parse::Bad("nested too deep")
        );
        assert_eq!(
            parse_header(&[0x00]).unwrap_err(),
            Parse::Bad("no page sizes")
        );
    }
}
