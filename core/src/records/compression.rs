//! The codecs a Kafka client may use inside a v2 batch. Each one comes from
//! a maintained crate; this file only adds Kafka's framing conventions and a
//! bound on decompressed size (a small batch must not inflate without limit).

use std::io::{Read, Write};

use super::RecordError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

/// The xerial snappy-java stream header Kafka's Java client writes.
const XERIAL_MAGIC: [u8; 8] = [0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];

impl Compression {
    pub const ALL: [Compression; 5] = [Self::None, Self::Gzip, Self::Snappy, Self::Lz4, Self::Zstd];

    pub fn from_attributes(attributes: i16) -> Result<Self, RecordError> {
        Ok(match attributes & 0x07 {
            0 => Self::None,
            1 => Self::Gzip,
            2 => Self::Snappy,
            3 => Self::Lz4,
            4 => Self::Zstd,
            other => return Err(RecordError::UnknownCodec(other)),
        })
    }

    pub fn attribute_bits(self) -> i16 {
        match self {
            Self::None => 0,
            Self::Gzip => 1,
            Self::Snappy => 2,
            Self::Lz4 => 3,
            Self::Zstd => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gzip => "gzip",
            Self::Snappy => "snappy",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    pub fn compress(self, data: &[u8]) -> Vec<u8> {
        match self {
            Self::None => data.to_vec(),
            Self::Gzip => {
                let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(data).expect("writing to a Vec cannot fail");
                enc.finish().expect("writing to a Vec cannot fail")
            }
            Self::Snappy => xerial_compress(data),
            Self::Lz4 => {
                let mut enc = lz4_flex::frame::FrameEncoder::new(Vec::new());
                enc.write_all(data).expect("writing to a Vec cannot fail");
                enc.finish().expect("writing to a Vec cannot fail")
            }
            Self::Zstd => zstd::bulk::compress(data, 1).expect("zstd compression of a buffer"),
        }
    }

    /// Decompresses at most `limit` bytes; more is an error, not an OOM.
    pub fn decompress(self, data: &[u8], limit: usize) -> Result<Vec<u8>, RecordError> {
        let fail = |reason: String| RecordError::Decompression { codec: self.name(), reason };
        match self {
            Self::None => Ok(data.to_vec()),
            Self::Gzip => read_bounded(flate2::read::GzDecoder::new(data), limit).map_err(|e| e.or(fail)),
            Self::Lz4 => read_bounded(lz4_flex::frame::FrameDecoder::new(data), limit).map_err(|e| e.or(fail)),
            Self::Zstd => {
                let dec = zstd::stream::read::Decoder::new(data).map_err(|e| fail(e.to_string()))?;
                read_bounded(dec, limit).map_err(|e| e.or(fail))
            }
            Self::Snappy => {
                if data.starts_with(&XERIAL_MAGIC) {
                    xerial_decompress(data, limit).map_err(|e| e.or(fail))
                } else {
                    // librdkafka sends raw (unframed) snappy.
                    raw_snappy(data, limit).map_err(|e| e.or(fail))
                }
            }
        }
    }
}

/// A failure that is either already a typed error or a message to wrap.
enum Failure {
    Typed(RecordError),
    Message(String),
}

impl Failure {
    fn or(self, wrap: impl Fn(String) -> RecordError) -> RecordError {
        match self {
            Failure::Typed(e) => e,
            Failure::Message(m) => wrap(m),
        }
    }
}

fn read_bounded(reader: impl Read, limit: usize) -> Result<Vec<u8>, Failure> {
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| Failure::Message(e.to_string()))?;
    if out.len() > limit {
        return Err(Failure::Typed(RecordError::DecompressedTooLarge { limit }));
    }
    Ok(out)
}

fn raw_snappy(data: &[u8], limit: usize) -> Result<Vec<u8>, Failure> {
    let len = snap::raw::decompress_len(data).map_err(|e| Failure::Message(e.to_string()))?;
    if len > limit {
        return Err(Failure::Typed(RecordError::DecompressedTooLarge { limit }));
    }
    snap::raw::Decoder::new()
        .decompress_vec(data)
        .map_err(|e| Failure::Message(e.to_string()))
}

/// xerial framing: magic, version i32, compatible-version i32, then blocks of
/// (length i32, raw snappy bytes).
fn xerial_decompress(data: &[u8], limit: usize) -> Result<Vec<u8>, Failure> {
    let mut rest = data.get(16..).ok_or(Failure::Typed(RecordError::Truncated))?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let len_bytes: [u8; 4] = rest
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or(Failure::Typed(RecordError::Truncated))?;
        let len = u32::from_be_bytes(len_bytes) as usize;
        let block = rest.get(4..4 + len).ok_or(Failure::Typed(RecordError::Truncated))?;
        let mut chunk = raw_snappy(block, limit.saturating_sub(out.len()))?;
        out.append(&mut chunk);
        rest = &rest[4 + len..];
    }
    Ok(out)
}

fn xerial_compress(data: &[u8]) -> Vec<u8> {
    const BLOCK: usize = 32 * 1024;
    let mut out = Vec::with_capacity(data.len() / 2 + 16);
    out.extend_from_slice(&XERIAL_MAGIC);
    out.extend_from_slice(&1i32.to_be_bytes());
    out.extend_from_slice(&1i32.to_be_bytes());
    let mut enc = snap::raw::Encoder::new();
    for chunk in data.chunks(BLOCK) {
        let compressed = enc.compress_vec(chunk).expect("snappy compression of a block");
        out.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
        out.extend_from_slice(&compressed);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_roundtrips() {
        let data: Vec<u8> = (0..100_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        for c in Compression::ALL {
            let packed = c.compress(&data);
            assert_eq!(c.decompress(&packed, data.len()).unwrap(), data, "{}", c.name());
            if c != Compression::None {
                assert!(matches!(
                    c.decompress(&packed, data.len() - 1),
                    Err(RecordError::DecompressedTooLarge { .. })
                ));
            }
        }
    }

    #[test]
    fn raw_snappy_as_librdkafka_sends_it() {
        let data = b"hello hello hello hello".repeat(10);
        let raw = snap::raw::Encoder::new().compress_vec(&data).unwrap();
        assert_eq!(Compression::Snappy.decompress(&raw, 1 << 20).unwrap(), data);
    }

    #[test]
    fn garbage_is_an_error_for_every_codec() {
        for c in [Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd] {
            assert!(c.decompress(b"\x82SNAPPY\0garbage-garbage", 1 << 20).is_err(), "{}", c.name());
            assert!(c.decompress(&[1, 2, 3, 4, 5], 1 << 20).is_err(), "{}", c.name());
        }
    }
}
