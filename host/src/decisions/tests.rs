//! The notice logic alone, over tables in memory: what decides an instance, and what never does.

use super::*;
use crate::asker::Asker;
use fides_service::{MemoryTables, Ordered};

fn justification(key: &[u8; 32]) -> Vec<u8> {
    Asker::justification(key)
}

const CLUSTER: [u8; 32] = [42; 32];

/// `n` replicas tolerating `t`, with their identities, and host tables in memory.
struct Setup {
    agreements: Agreements,
    keys: Vec<SigningKey>,
    host: MemoryTables,
}

fn setup(n: u32, t: u32) -> Setup {
    let keys: Vec<SigningKey> = (0..n).map(|i| SigningKey::from_bytes(&[i as u8 + 1; 32])).collect();
    let mut registry = Registry::new();
    registry.register(Asker).expect("a free id");
    let agreements = Agreements {
        registry: Arc::new(registry),
        cluster: CLUSTER,
        quorum: Quorum::new(n, t).expect("a valid quorum"),
        identities: keys.iter().map(|k| k.verifying_key().to_bytes()).collect(),
    };
    Setup { agreements, keys, host: MemoryTables::default() }
}

fn instance(k: u8) -> CoreInstance {
    CoreInstance { service: *b"AGT1", key: [k; 32] }
}

/// Replica `replica`'s notice that its core decided `value` on instance `k`.
fn notice(setup: &Setup, replica: u32, k: u8, value: bool) -> Vec<u8> {
    let justification = value.then(|| justification(&[k; 32]));
    let decided = Decided { instance: instance(k), value, justification };
    Notice::sign(&setup.keys[replica as usize], &CLUSTER, replica, &decided).to_payload()
}

impl Setup {
    fn ask(&mut self, k: u8) {
        let asked = self.agreements.ask(&mut self.host, instance(k), Some((1, 0)));
        assert_eq!(asked, Ok(Asked::New));
    }

    fn take(&mut self, payload: &[u8]) -> Taken {
        self.agreements.take_notice(&mut self.host, 9, 9_000, payload).expect("memory tables do not fail")
    }
}

fn decided(value: bool, k: u8) -> Taken {
    let justification = if value { justification(&[k; 32]) } else { Vec::new() };
    Taken::Decided {
        service: ServiceId(*b"AGT1"),
        asker: Some((1, 0)),
        decision: Decision { instance: InstanceId([k; 32]), value, justification, epoch: 9, time_ms: 9_000 },
    }
}

#[test]
fn t_notices_of_a_value_never_decide_and_t_plus_one_do() {
    // n = 7, t = 2: two Byzantine replicas say 0, the honest ones say 1.
    let mut s = setup(7, 2);
    s.ask(1);
    for replica in [5, 6] {
        let payload = notice(&s, replica, 1, false);
        assert_eq!(s.take(&payload), Taken::Counted, "t notices for 0 do not decide");
    }
    for replica in [0, 1] {
        let payload = notice(&s, replica, 1, true);
        assert_eq!(s.take(&payload), Taken::Counted, "t notices for 1 do not decide");
    }
    let payload = notice(&s, 2, 1, true);
    assert_eq!(s.take(&payload), decided(true, 1), "the t + 1-th notice for 1 decides 1");
    // The instance is decided: later notices change nothing, whoever sends them.
    let payload = notice(&s, 3, 1, true);
    assert_eq!(s.take(&payload), Taken::Ignored(Ignored::NotPending));
    assert_eq!(s.host.get(DECIDED, &instance(1).to_bytes()), Ok(Some([&[1u8][..], &9u64.to_le_bytes()].concat())));
    assert_eq!(s.host.get(PENDING, &instance(1).to_bytes()), Ok(None));
}

#[test]
fn a_replicas_second_notice_counts_once_even_with_the_other_value() {
    let mut s = setup(4, 1);
    s.ask(2);
    let first = notice(&s, 3, 2, false);
    assert_eq!(s.take(&first), Taken::Counted);
    assert_eq!(s.take(&first), Taken::Ignored(Ignored::Again), "the same notice ordered twice");
    let other = notice(&s, 3, 2, true);
    assert_eq!(s.take(&other), Taken::Ignored(Ignored::Again), "a replica that changes its mind");
    let payload = notice(&s, 0, 2, true);
    assert_eq!(s.take(&payload), Taken::Counted, "replica 3's notice for 1 was not counted");
    let payload = notice(&s, 1, 2, true);
    assert_eq!(s.take(&payload), decided(true, 2));
}

#[test]
fn forged_and_foreign_notices_are_ignored() {
    let mut s = setup(4, 1);
    s.ask(3);
    // Replica 3 signs a notice in replica 0's name.
    let decided0 = Decided { instance: instance(3), value: false, justification: None };
    let forged = Notice::sign(&s.keys[3], &CLUSTER, 0, &decided0).to_payload();
    assert_eq!(s.take(&forged), Taken::Ignored(Ignored::BadSignature));
    // A notice of another cluster.
    let foreign = Notice::sign(&s.keys[0], &[7; 32], 0, &decided0).to_payload();
    assert_eq!(s.take(&foreign), Taken::Ignored(Ignored::BadSignature));
    // A flipped bit anywhere in the signed part.
    let good = notice(&s, 0, 3, false);
    for at in 4..good.len() - 64 {
        let mut bad = good.clone();
        bad[at] ^= 1;
        assert!(matches!(s.take(&bad), Taken::Ignored(_)), "a notice with byte {at} flipped is taken");
    }
    // No such replica, and bytes that are no notice.
    let decided7 = Decided { instance: instance(3), value: false, justification: None };
    let stranger = Notice::sign(&s.keys[0], &CLUSTER, 7, &decided7).to_payload();
    assert_eq!(s.take(&stranger), Taken::Ignored(Ignored::UnknownReplica));
    for cut in 0..good.len() {
        assert_eq!(s.take(&good[..cut]), Taken::Ignored(Ignored::Undecodable));
    }
    // None of that counted: replica 0's real notice and one more decide.
    assert_eq!(s.take(&good), Taken::Counted);
    let payload = notice(&s, 1, 3, false);
    assert_eq!(s.take(&payload), decided(false, 3));
}

#[test]
fn a_notice_for_one_with_a_justification_the_service_refuses_does_not_count() {
    let mut s = setup(4, 1);
    s.ask(4);
    for replica in [2, 3] {
        let decided = Decided { instance: instance(4), value: true, justification: Some(b"trust me".to_vec()) };
        let payload = Notice::sign(&s.keys[replica as usize], &CLUSTER, replica, &decided).to_payload();
        assert_eq!(s.take(&payload), Taken::Ignored(Ignored::Unjustified));
    }
    let payload = notice(&s, 0, 4, true);
    assert_eq!(s.take(&payload), Taken::Counted, "two unjustified notices and one good one are not t + 1");
    let payload = notice(&s, 1, 4, true);
    assert_eq!(s.take(&payload), decided(true, 4));
}

#[test]
fn notices_for_instances_nobody_asked_for_are_ignored_and_an_instance_is_asked_for_once() {
    let mut s = setup(4, 1);
    let payload = notice(&s, 0, 5, true);
    assert_eq!(s.take(&payload), Taken::Ignored(Ignored::NotPending));
    assert_eq!(s.host.get(PENDING, &instance(5).to_bytes()), Ok(None), "nothing kept for it");
    s.ask(5);
    assert_eq!(s.agreements.ask(&mut s.host, instance(5), Some((2, 0))), Ok(Asked::Again), "pending");
    assert_eq!(s.agreements.reserve(&mut s.host, instance(5), Some((2, 0))), Ok(false), "pending");
    for replica in [0, 1] {
        let payload = notice(&s, replica, 5, true);
        s.take(&payload);
    }
    assert_eq!(s.agreements.ask(&mut s.host, instance(5), Some((2, 0))), Ok(Asked::Again), "decided");
    assert_eq!(s.agreements.reserve(&mut s.host, instance(5), Some((2, 0))), Ok(false), "decided");
}

#[test]
fn notices_decode_only_whole_and_within_bounds() {
    let s = setup(4, 1);
    let payload = notice(&s, 2, 6, true);
    let parsed = Notice::from_payload(&payload).expect("a notice");
    assert_eq!((parsed.replica, parsed.instance, parsed.value), (2, instance(6), true));
    assert_eq!(parsed.to_payload(), payload);
    assert!(Notice::from_payload(&[payload.as_slice(), &[0]].concat()).is_err(), "a trailing byte");
    // A notice for 0 carries no justification.
    let mut zero = Notice::from_payload(&notice(&s, 2, 6, false)).expect("a notice");
    zero.justification = vec![1];
    assert!(Notice::from_payload(&zero.to_payload()).is_err());
    // The bound is the agreement instances' own.
    let config = fides_atomic_broadcast::instances::Config::new(b"x".to_vec());
    assert_eq!(JUSTIFICATION_MAX, config.justification_len_max);
    let long = Notice { justification: vec![0; JUSTIFICATION_MAX + 1], ..parsed };
    assert!(Notice::from_payload(&long.to_payload()).is_err());
}

/// A whole epoch: a request asks, two epochs later the notices come in one batch (a Byzantine one
/// first), and the decision runs the service's `decided` there.
#[test]
fn an_epoch_records_its_asks_and_applies_the_decision_its_notices_reach() {
    let mut s = setup(4, 1);
    let registry = Arc::clone(&s.agreements.registry);
    let ask = [&b"AGT1"[..], &[8; 32], &[1]].concat();
    let batch = [Ordered { client: 1, request: 1, payload: &ask }];
    let outcomes = registry.apply_batch(&mut s.host, 3, 1_000, batch).expect("memory");
    let agreed = s.agreements.apply_epoch(&mut s.host, (3, 3_000), [ask.as_slice()], &outcomes).expect("mem");
    assert_eq!(agreed.votes, vec![(instance(8), Vote::One(justification(&[8; 32])))]);
    assert_eq!(agreed.asked, vec![(3, 0)]);
    assert!(agreed.decided.is_empty());

    let notices = [notice(&s, 3, 8, false), notice(&s, 0, 8, true), notice(&s, 2, 8, true), notice(&s, 1, 8, true)];
    let batch: Vec<Ordered<'_>> =
        notices.iter().map(|n| Ordered { client: 2, request: n.len() as u64, payload: n }).collect();
    let outcomes = registry.apply_batch(&mut s.host, 5, 2_000, batch).expect("memory");
    let payloads = notices.iter().map(Vec::as_slice);
    let agreed = s.agreements.apply_epoch(&mut s.host, (5, 5_000), payloads, &outcomes).expect("memory");
    assert!(agreed.votes.is_empty() && agreed.asked.is_empty());
    assert_eq!(agreed.decided.len(), 1, "decided once, by the third notice; the fourth is ignored");
    let applied = &agreed.decided[0];
    assert_eq!((applied.service, applied.asker), (ServiceId(*b"AGT1"), Some((3, 0))));
    assert_eq!(applied.outcomes, vec![Outcome::Sign([&[8u8; 32][..], &[1]].concat())]);
    assert_eq!(s.host.get("asker_decided", &[8; 32]), Ok(Some(vec![1])), "decided wrote in its tables");
}

/// The same two epochs through the host's whole per-epoch application (`crate::apply`): the
/// asking request's stored answer awaits the decision, then holds the decision's signed record
/// with the later epoch and its leaf there, which comes after the ordering leaves and before the
/// state leaf; the state leaf commits to the tables as written.
#[test]
fn the_epoch_application_stores_the_answer_of_a_request_whose_instance_is_decided_later() {
    use crate::apply::{apply_epoch, StateTables, OUTCOMES};
    use crate::epochs::{outcome_key, StoredAnswer};
    use fides_atomic_broadcast::epoch::{Batch, Request};
    use fides_service::certificate::Leaf;

    let mut s = setup(4, 1);
    let mut no_index = |_: &mut dyn Tables, _: &Batch, _: &[(u32, StoredAnswer)]| -> Result<(), StoreError> { Ok(()) };
    let stored = |s: &Setup| {
        let bytes = s.host.get(OUTCOMES, &outcome_key(3, 0)).expect("memory").expect("the asking request's answer");
        StoredAnswer::from_bytes(&bytes).expect("a stored answer decodes")
    };
    let ask = Request { client: 1, id: 1, payload: [&b"AGT1"[..], &[8; 32], &[1]].concat() };
    let batch = Batch { epoch: 3, time: 1_000, requests: vec![ask] };
    let epoch = apply_epoch(&s.agreements, &mut s.host, &batch, &mut no_index).expect("memory");
    assert_eq!(epoch.agreed.votes, vec![(instance(8), Vote::One(justification(&[8; 32])))]);
    assert_eq!(epoch.leaves.len(), 2, "the ordering leaf, then the state leaf");
    assert_eq!(stored(&s).awaiting, 1);

    let notices = [notice(&s, 0, 8, true), notice(&s, 2, 8, true)];
    let requests = notices.iter().map(|n| Request { client: 2, id: n.len() as u64, payload: n.clone() }).collect();
    let batch = Batch { epoch: 5, time: 2_000, requests };
    let epoch = apply_epoch(&s.agreements, &mut s.host, &batch, &mut no_index).expect("memory");
    let record = [&[8u8; 32][..], &[1]].concat();
    assert_eq!(epoch.decided, vec![vec![(Outcome::Sign(record.clone()), 2)]], "after the two ordering leaves");
    assert_eq!(epoch.leaves[2], Leaf::Service { service: ServiceId(*b"AGT1"), record: record.clone() }.hash());
    assert_eq!(epoch.leaves[3], Leaf::state(5, &s.host.state_digest()).hash());
    assert_eq!(epoch.leaves.len(), 4);
    let answer = stored(&s);
    assert_eq!((answer.awaiting, answer.decided), (0, vec![(Outcome::Sign(record), 5, 2)]));
}

/// An instance reserved by one request (`Await`) and started by a later one: notices before the
/// start change nothing, the start hands over a vote without counting the second request as
/// awaiting, and the decision answers the request that reserved it.
#[test]
fn a_reserved_instance_is_started_by_a_later_ask_and_answers_the_request_that_reserved_it() {
    use crate::apply::{apply_epoch, OUTCOMES};
    use crate::epochs::{outcome_key, StoredAnswer};
    use fides_atomic_broadcast::epoch::{Batch, Request};

    let mut s = setup(4, 1);
    let mut no_index = |_: &mut dyn Tables, _: &Batch, _: &[(u32, StoredAnswer)]| -> Result<(), StoreError> { Ok(()) };
    let stored = |s: &Setup, epoch: u64| {
        let bytes = s.host.get(OUTCOMES, &outcome_key(epoch, 0)).expect("memory").expect("a stored answer");
        StoredAnswer::from_bytes(&bytes).expect("a stored answer decodes")
    };
    let reserve = Request { client: 1, id: 1, payload: Asker::reserve_payload([7; 32]) };
    let epoch = apply_epoch(
        &s.agreements,
        &mut s.host,
        &Batch { epoch: 3, time: 1_000, requests: vec![reserve] },
        &mut no_index,
    )
    .expect("memory");
    assert!(epoch.agreed.votes.is_empty(), "reserved, not started");
    assert_eq!(epoch.agreed.asked, vec![(3, 0)]);
    assert_eq!(stored(&s, 3).awaiting, 1);
    // A (Byzantine) notice for the reserved instance: no honest core can have decided it.
    let early = notice(&s, 0, 7, true);
    assert_eq!(s.take(&early), Taken::Ignored(Ignored::NotStarted));

    let start = Request { client: 1, id: 2, payload: Asker::payload([7; 32], true) };
    let epoch =
        apply_epoch(&s.agreements, &mut s.host, &Batch { epoch: 4, time: 1_500, requests: vec![start] }, &mut no_index)
            .expect("memory");
    assert_eq!(epoch.agreed.votes, vec![(instance(7), Vote::One(justification(&[7; 32])))], "started now");
    assert!(epoch.agreed.asked.is_empty(), "the starting request does not await it");
    assert_eq!(stored(&s, 4).awaiting, 0);

    let notices = [notice(&s, 0, 7, true), notice(&s, 1, 7, true)];
    let requests = notices.iter().map(|n| Request { client: 2, id: n.len() as u64, payload: n.clone() }).collect();
    let epoch = apply_epoch(&s.agreements, &mut s.host, &Batch { epoch: 6, time: 2_000, requests }, &mut no_index)
        .expect("memory");
    assert_eq!(epoch.agreed.decided.len(), 1);
    assert_eq!(epoch.agreed.decided[0].asker, Some((3, 0)), "the reserving request");
    let answer = stored(&s, 3);
    assert_eq!(answer.awaiting, 0);
    assert_eq!(answer.decided.len(), 1);
    assert!(stored(&s, 4).decided.is_empty());
}

/// Two replicas that vote differently on the same request hold the same state: the vote is the
/// replica's own and stays out of the covered tables (stored answers, pending instances).
#[test]
fn replicas_voting_differently_hold_the_same_state() {
    use crate::apply::{apply_epoch, StateTables};
    use crate::epochs::StoredAnswer;
    use fides_atomic_broadcast::epoch::{Batch, Request};

    let mut no_index = |_: &mut dyn Tables, _: &Batch, _: &[(u32, StoredAnswer)]| -> Result<(), StoreError> { Ok(()) };
    let mut states = Vec::new();
    for vote in [false, true] {
        let mut s = setup(4, 1);
        // The request as this replica's service would answer it with its own vote (the payload
        // stands in for what only the replica knows, so the ordering leaves differ; nothing else may).
        let ask = Request { client: 1, id: 1, payload: Asker::payload([9; 32], vote) };
        let epoch = apply_epoch(
            &s.agreements,
            &mut s.host,
            &Batch { epoch: 3, time: 1_000, requests: vec![ask] },
            &mut no_index,
        )
        .expect("memory");
        let expected = if vote { Vote::One(justification(&[9; 32])) } else { Vote::Zero };
        assert_eq!(epoch.agreed.votes, vec![(instance(9), expected)]);
        states.push((s.host.state_digest().commitment(), epoch.leaves.last().copied()));
    }
    assert_eq!(states[0], states[1], "the votes differ, the state and the state leaf do not");
}
