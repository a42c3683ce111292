//! The generator source: deterministic records from a seed, for demos and
//! benchmarks. Record `i` is a function of the seed and `i` alone (and of
//! the chunk's time, for page views' `ts`), so a chunk re-read after a
//! crash is the same chunk. Its rate is the runner's (`--rate`), as for
//! any source.

use super::api::{ConnectError, Source, SourceRead, SourceRecord};
use super::config::GeneratorKind;
use crate::Millis;
use crate::rng::Rng;

const PAGES: [&str; 8] = ["/", "/search", "/products", "/products/1", "/products/2", "/cart", "/checkout", "/help"];
const USERS: u64 = 1_000;

#[derive(Debug, Clone)]
pub struct Generator {
    pub seed: u64,
    pub kind: GeneratorKind,
    /// Records in all; none: endless.
    pub count: Option<u64>,
}

impl Generator {
    /// Record `i`'s value, made at time `at`.
    pub fn value(&self, i: u64, at: Millis) -> Vec<u8> {
        match self.kind {
            GeneratorKind::Sequence => i.to_string().into_bytes(),
            GeneratorKind::PageViews => {
                // One SplitMix64 step from a point that depends on seed and
                // i only: record i does not depend on the records before.
                let mut rng = Rng::new(self.seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
                let user = rng.next_u64() % USERS;
                let page = PAGES[(rng.next_u64() % PAGES.len() as u64) as usize];
                format!(r#"{{"seq":{i},"user":"user-{user}","page":"{page}","ts":{at}}}"#).into_bytes()
            }
        }
    }
}

impl Source for Generator {
    /// Records generated so far.
    type Position = u64;

    fn read(&mut self, at: Millis, from: &u64, max: usize) -> Result<SourceRead<u64>, ConnectError> {
        let end = from.saturating_add(max as u64).min(self.count.unwrap_or(u64::MAX));
        let records = (*from..end.max(*from)).map(|i| SourceRecord { key: None, value: self.value(i, at) }).collect();
        Ok(SourceRead { records, to: end.max(*from), ..SourceRead::nothing(*from) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_depend_on_seed_index_and_time_only() {
        let mut g = Generator { seed: 7, kind: GeneratorKind::PageViews, count: Some(5) };
        let a = g.read(100, &0, 3).unwrap();
        let b = g.read(100, &1, 2).unwrap();
        assert_eq!(a.records[1..], b.records[..]);
        assert_eq!(a.to, 3);
        let v = String::from_utf8(a.records[0].value.clone()).unwrap();
        assert!(v.starts_with(r#"{"seq":0,"user":"user-"#) && v.ends_with(r#","ts":100}"#), "{v}");
        serde_json::from_str::<serde_json::Value>(&v).unwrap();
        let other = Generator { seed: 8, ..g.clone() };
        assert_ne!((0..20).map(|i| g.value(i, 0)).collect::<Vec<_>>(), (0..20).map(|i| other.value(i, 0)).collect::<Vec<_>>());
        // The count ends it.
        let end = g.read(100, &3, 10).unwrap();
        assert_eq!((end.records.len(), end.to), (2, 5));
        assert!(g.read(100, &5, 10).unwrap().records.is_empty());
    }

    #[test]
    fn sequences_count_up() {
        let mut g = Generator { seed: 0, kind: GeneratorKind::Sequence, count: None };
        let r = g.read(0, &10, 3).unwrap();
        assert_eq!(r.records.iter().map(|r| r.value.clone()).collect::<Vec<_>>(), vec![b"10".to_vec(), b"11".to_vec(), b"12".to_vec()]);
    }
}
