//! Properties of the record batch codec: what is encoded decodes to the
//! same records, and no byte string makes a decoder panic.

use millrace_core::records::{self, BatchBuilder, BatchHeader, Compression, Header, Record};
use proptest::prelude::*;

fn arb_compression() -> impl Strategy<Value = Compression> {
    prop::sample::select(Compression::ALL.to_vec())
}

fn arb_bytes(max: usize) -> impl Strategy<Value = Option<Vec<u8>>> {
    prop::option::of(prop::collection::vec(any::<u8>(), 0..max))
}

fn arb_record() -> impl Strategy<Value = Record> {
    (
        0i64..1_000_000_000_000,
        arb_bytes(40),
        arb_bytes(300),
        prop::collection::vec((prop::collection::vec(any::<u8>(), 0..10), arb_bytes(20)), 0..4),
    )
        .prop_map(|(timestamp, key, value, headers)| Record {
            offset: 0,
            timestamp,
            key,
            value,
            headers: headers.into_iter().map(|(key, value)| Header { key, value }).collect(),
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn decode_of_encode_is_identity(
        recs in prop::collection::vec(arb_record(), 1..40),
        compression in arb_compression(),
        producer in prop::option::of((0i64..1 << 40, 0i16..100, 0i32..1 << 30)),
    ) {
        let mut b = BatchBuilder::new(compression);
        for r in &recs {
            b.push(r.clone());
        }
        if let Some((pid, epoch, seq)) = producer {
            b = b.idempotent(pid, epoch, seq);
        }
        let bytes = b.build();
        let (h, decoded) = records::decode_records(&bytes).unwrap();
        records::check_records(&bytes, &h).unwrap();
        prop_assert_eq!(h.compression().unwrap(), compression);
        prop_assert_eq!(h.record_count as usize, recs.len());
        prop_assert_eq!(h.total_len(), bytes.len());
        prop_assert_eq!(h.producer_id, producer.map_or(-1, |p| p.0));
        for (i, (want, got)) in recs.iter().zip(&decoded).enumerate() {
            prop_assert_eq!(got.offset, i as i64);
            prop_assert_eq!(got.timestamp, want.timestamp);
            prop_assert_eq!(&got.key, &want.key);
            prop_assert_eq!(&got.value, &want.value);
            prop_assert_eq!(&got.headers, &want.headers);
        }
        prop_assert_eq!(h.max_timestamp, recs.iter().map(|r| r.timestamp).max().unwrap());
    }

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = BatchHeader::parse(&bytes);
        let _ = records::validate_batch(&bytes);
        let _ = records::decode_records(&bytes);
        let _ = records::split_batches(&bytes).count();
        for c in Compression::ALL {
            let _ = c.decompress(&bytes, 1 << 16);
        }
    }

    /// Damage to a valid batch (a flipped byte, a cut, a forged header field
    /// with a recomputed CRC) yields an error or a value, never a panic.
    #[test]
    fn damaged_batches_never_panic(
        recs in prop::collection::vec(arb_record(), 1..10),
        compression in arb_compression(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<prop::sample::Index>(),
        forge_count in any::<i32>(),
    ) {
        let mut b = BatchBuilder::new(compression);
        for r in recs {
            b.push(r);
        }
        let good = b.build();
        let mut flipped = good.clone();
        let i = at.index(flipped.len());
        flipped[i] ^= byte | 1;
        // The produce path's non-copying check agrees with the full decoder.
        let full = records::decode_records(&flipped);
        let checked = records::validate_batch(&flipped).and_then(|h| records::check_records(&flipped, &h));
        prop_assert_eq!(full.is_ok(), checked.is_ok());
        let _ = records::decode_records(&good[..cut.index(good.len())]);
        // A forged record count with a valid CRC must not allocate wildly or panic.
        let mut forged = good.clone();
        forged[57..61].copy_from_slice(&forge_count.to_be_bytes());
        forged[23..27].copy_from_slice(&forge_count.wrapping_sub(1).to_be_bytes());
        let crc = crc32c::crc32c(&forged[21..]);
        forged[17..21].copy_from_slice(&crc.to_be_bytes());
        let _ = records::decode_records(&forged);
    }
}
