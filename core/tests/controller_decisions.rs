//! The controller's decisions applied to its metadata image, over random
//! sequences of broker registrations, fencing, unfencing and topic
//! creation. Every decision must apply cleanly, and after every step:
//! leaders are live, in the ISR, and the ISR is within the replicas; leader
//! epochs never go back and change exactly when the leader does; a
//! partition with a live in-sync replica has a leader; and a partition's
//! leader is never someone outside the ISR it had (no unclean election).

use std::collections::BTreeMap;

use millrace_core::controller::decide::{assign_replicas, fence, unclean_elections, unfence};
use millrace_core::controller::*;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Register(BrokerId),
    Fence(BrokerId),
    Unfence(BrokerId),
    CreateTopic { partitions: i32, rf: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..5i32).prop_map(Op::Register),
        (0..5i32).prop_map(Op::Fence),
        (0..5i32).prop_map(Op::Unfence),
        (1..6i32, 1..4usize).prop_map(|(partitions, rf)| Op::CreateTopic { partitions, rf }),
    ]
}

fn apply_all(image: &mut MetadataImage, records: &[MetadataRecord]) {
    for r in records {
        image.apply(r).unwrap_or_else(|e| panic!("the controller's own record was refused: {e} ({r:?})"));
    }
}

fn check(before: &MetadataImage, after: &MetadataImage) {
    for (name, t) in &after.topics {
        for (i, p) in t.partitions.iter().enumerate() {
            assert!(p.isr.iter().all(|b| p.replicas.contains(b)), "{name}-{i}: ISR {:?} outside replicas {:?}", p.isr, p.replicas);
            assert!(!p.isr.is_empty(), "{name}-{i}: empty ISR");
            if let Some(l) = p.leader {
                assert!(p.isr.contains(&l), "{name}-{i}: leader {l} not in ISR {:?}", p.isr);
                assert!(!after.brokers[&l].fenced, "{name}-{i}: fenced broker {l} leads");
            } else {
                assert!(p.isr.iter().all(|b| after.brokers[b].fenced), "{name}-{i}: offline although ISR member is live");
            }
            if let Some(old) = before.partition(name, i as i32) {
                assert!(p.leader_epoch >= old.leader_epoch, "{name}-{i}: leader epoch went back");
                assert_eq!(p.leader != old.leader, p.leader_epoch > old.leader_epoch, "{name}-{i}: epoch must change with the leader");
                if let Some(l) = p.leader
                    && old.leader != Some(l)
                {
                    assert!(old.isr.contains(&l), "{name}-{i}: unclean election of {l} (ISR was {:?})", old.isr);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn decisions_keep_the_image_consistent(ops in prop::collection::vec(op(), 1..60)) {
        let mut image = MetadataImage::default();
        let mut epochs: BTreeMap<BrokerId, u64> = BTreeMap::new();
        let mut topics = 0;
        for op in ops {
            let before = image.clone();
            let records = match op {
                Op::Register(b) => {
                    // A restart: a new incarnation, fenced until it catches up.
                    let e = epochs.entry(b).or_insert(0);
                    *e += 1;
                    let mut rs = fence(&image, b);
                    rs.push(MetadataRecord::RegisterBroker { broker: b, epoch: *e, host: "h".into(), port: 9092 });
                    rs
                }
                Op::Fence(b) => fence(&image, b),
                Op::Unfence(b) => unfence(&image, b),
                Op::CreateTopic { partitions, rf } => match assign_replicas(&image.live_brokers(), partitions, rf, topics) {
                    Ok(replicas) => {
                        topics += 1;
                        vec![MetadataRecord::CreateTopic { name: format!("t{topics}"), topic_id: [topics as u8; 16], replicas, configs: vec![] }]
                    }
                    Err(_) => {
                        prop_assert!(rf > image.live_brokers().len());
                        Vec::new()
                    }
                },
            };
            apply_all(&mut image, &records);
            check(&before, &image);
        }
    }
}

#[test]
fn a_fenced_leader_hands_over_to_the_isr_and_returns_to_an_offline_partition() {
    let mut image = MetadataImage::default();
    for b in 0..3 {
        apply_all(&mut image, &[MetadataRecord::RegisterBroker { broker: b, epoch: 1, host: "h".into(), port: 1 }]);
        let rs = unfence(&image, b);
        apply_all(&mut image, &rs);
    }
    let replicas = assign_replicas(&image.live_brokers(), 3, 3, 0).unwrap();
    assert_eq!(replicas, vec![vec![0, 1, 2], vec![1, 2, 0], vec![2, 0, 1]]);
    apply_all(&mut image, &[MetadataRecord::CreateTopic { name: "t".into(), topic_id: [1; 16], replicas, configs: vec![] }]);
    assert_eq!(image.partition("t", 0).unwrap().leader, Some(0));
    // Broker 0 dies: 1 leads t-0 in epoch 1, and 0 leaves every ISR.
    let rs = fence(&image, 0);
    apply_all(&mut image, &rs);
    let p = image.partition("t", 0).unwrap();
    assert_eq!((p.leader, p.leader_epoch, p.isr.clone()), (Some(1), 1, vec![1, 2]));
    assert!(image.topics["t"].partitions.iter().all(|p| !p.isr.contains(&0)));
    // 1 and 2 die too: 2 is the last in-sync replica of t-0; it stays in
    // the ISR and the partition goes offline (no unclean election).
    for b in [1, 2] {
        let rs = fence(&image, b);
        apply_all(&mut image, &rs);
    }
    let p = image.partition("t", 0).unwrap();
    assert_eq!((p.leader, p.isr.clone()), (None, vec![2]));
    // 0 returns but was out of sync: still offline. 2 returns: it leads.
    let rs = unfence(&image, 0);
    apply_all(&mut image, &rs);
    assert_eq!(image.partition("t", 0).unwrap().leader, None);
    assert!(unclean_elections(&image, false).is_empty(), "unclean election is off unless asked for");
    // With it on (cluster-wide here), the live out-of-sync replica 0 leads.
    let mut unclean = image.clone();
    let rs = unclean_elections(&unclean, true);
    apply_all(&mut unclean, &rs);
    let p = unclean.partition("t", 0).unwrap();
    assert_eq!((p.leader, p.isr.clone(), p.leader_epoch), (Some(0), vec![0], 4));
    // A topic that says false overrides the cluster default.
    unclean = image.clone();
    unclean.topics.get_mut("t").unwrap().configs = vec![("unclean.leader.election.enable".into(), "false".into())];
    assert!(unclean_elections(&unclean, true).is_empty());
    let rs = unfence(&image, 2);
    apply_all(&mut image, &rs);
    assert_eq!(image.partition("t", 0).unwrap().leader, Some(2));
}

#[test]
fn bad_records_are_refused_with_a_reason() {
    let mut image = MetadataImage::default();
    let unknown = image.apply(&MetadataRecord::FenceBroker { broker: 9, epoch: 1 }).unwrap_err();
    assert_eq!(unknown, ImageError::UnknownBroker(9));
    image.apply(&MetadataRecord::RegisterBroker { broker: 1, epoch: 2, host: "h".into(), port: 1 }).unwrap();
    let stale = image.apply(&MetadataRecord::RegisterBroker { broker: 1, epoch: 2, host: "h".into(), port: 1 }).unwrap_err();
    assert!(matches!(stale, ImageError::StaleBrokerEpoch { .. }), "{stale}");
    let e = image.apply(&MetadataRecord::CreateTopic { name: "t".into(), topic_id: [0; 16], replicas: vec![vec![1, 1]], configs: vec![] }).unwrap_err();
    assert!(e.to_string().contains("replicas [1, 1]"), "{e}");
    image.apply(&MetadataRecord::CreateTopic { name: "t".into(), topic_id: [0; 16], replicas: vec![vec![1]], configs: vec![] }).unwrap();
    let e = image
        .apply(&MetadataRecord::PartitionChange { topic: "t".into(), partition: 0, leader: Some(1), leader_epoch: 5, isr: vec![1] })
        .unwrap_err();
    assert!(e.to_string().contains("leader epoch 5, expected 1"), "{e}");
    let e = image
        .apply(&MetadataRecord::PartitionChange { topic: "t".into(), partition: 3, leader: None, leader_epoch: 0, isr: vec![1] })
        .unwrap_err();
    assert_eq!(e, ImageError::UnknownPartition { topic: "t".into(), partition: 3 });
}
