//! The host-facing behaviour of the registry, with two tiny services: a counter that signs its
//! counts, and another that uses a table of the same name.

use fides_service::{
    Applied, Code, EpochStart, InstanceId, MemoryTables, Ordered, Outcome, QueryError, Refusal, Registry,
    RegistryError, Route, Service, ServiceId, StoreError, Tables, HOST_DECISION_NOTICE,
};
use fides_types::codec::DecodeError;

/// `CNT1`, then a kind byte: 1 = add (key byte, amount byte; a count above 200 is refused after
/// its write), 2 = the time the last epoch began at, 3 = write another service's table.
struct Counter;

enum CounterRequest {
    Add { key: u8, amount: u8 },
    Time,
    Trespass,
}

const COUNTS: &str = "counts";
const CLOCK: &str = "clock";

fn count(tables: &dyn Tables, key: u8) -> Result<u64, StoreError> {
    Ok(tables.get(COUNTS, &[key])?.map_or(0, |v| u64::from_le_bytes(v.try_into().unwrap_or_default())))
}

impl Service for Counter {
    const ID: ServiceId = ServiceId(*b"CNT1");
    const NAME: &'static str = "counter";
    const TABLES: &'static [&'static str] = &[COUNTS, CLOCK];
    const PAYLOAD_MAX: usize = 8;
    type Request = CounterRequest;
    type Query = u8;
    type View = u64;

    fn decode(&self, payload: &[u8]) -> Result<CounterRequest, DecodeError> {
        match payload.get(4..) {
            Some([1, key, amount]) => Ok(CounterRequest::Add { key: *key, amount: *amount }),
            Some([2]) => Ok(CounterRequest::Time),
            Some([3]) => Ok(CounterRequest::Trespass),
            _ => Err(DecodeError::Invalid { what: "counter request", value: payload.len() as u64 }),
        }
    }

    fn apply(
        &self,
        tables: &mut dyn Tables,
        at: &Applied,
        request: CounterRequest,
    ) -> Result<Vec<Outcome>, StoreError> {
        match request {
            CounterRequest::Add { key, amount } => {
                let new = count(tables, key)? + u64::from(amount);
                tables.put(COUNTS, &[key], &new.to_le_bytes())?;
                if new > 200 {
                    return Ok(vec![Outcome::refuse(Code::OutOfRange, format!("{new} is above 200"))]);
                }
                Ok(vec![Outcome::Sign([&[key][..], &new.to_le_bytes(), &at.epoch.to_le_bytes()].concat())])
            }
            CounterRequest::Time => Ok(vec![Outcome::Reply(tables.get(CLOCK, b"begun")?.unwrap_or_default())]),
            CounterRequest::Trespass => {
                tables.put("other_counts", &[0], b"mine now")?;
                Ok(vec![Outcome::Reply(Vec::new())])
            }
        }
    }

    fn begin_epoch(&self, tables: &mut dyn Tables, at: &EpochStart) -> Result<Vec<Outcome>, StoreError> {
        tables.put(CLOCK, b"begun", &at.time_ms.to_le_bytes())?;
        Ok(Vec::new())
    }

    /// A vote for 1 is valid with the justification `ok` and the instance's first byte.
    fn validate(&self, instance: InstanceId, justification: &[u8]) -> bool {
        justification == [&b"ok"[..], &instance.0[..1]].concat()
    }

    fn query(&self, tables: &dyn Tables, key: u8) -> Result<u64, QueryError> {
        Ok(count(tables, key)?)
    }
}

/// `OTH1` and one byte: writes that byte under key 0 of its own `counts`.
struct Other;

impl Service for Other {
    const ID: ServiceId = ServiceId(*b"OTH1");
    const NAME: &'static str = "other";
    const TABLES: &'static [&'static str] = &[COUNTS];
    const PAYLOAD_MAX: usize = 5;
    type Request = u8;
    type Query = ();
    type View = ();

    fn decode(&self, payload: &[u8]) -> Result<u8, DecodeError> {
        payload.get(4).copied().ok_or(DecodeError::Truncated { at: 4, needed: 1 })
    }

    fn apply(&self, tables: &mut dyn Tables, _: &Applied, value: u8) -> Result<Vec<Outcome>, StoreError> {
        tables.put(COUNTS, &[0], &[value])?;
        Ok(vec![Outcome::Reply(vec![value])])
    }

    fn query(&self, _: &dyn Tables, (): ()) -> Result<(), QueryError> {
        Ok(())
    }
}

fn registry() -> Registry {
    let mut registry = Registry::new();
    registry.register(Counter).expect("a free id and name");
    registry.register(Other).expect("a free id and name");
    registry
}

fn add(key: u8, amount: u8) -> Vec<u8> {
    [&b"CNT1"[..], &[1, key, amount]].concat()
}

fn batch(payloads: &[Vec<u8>]) -> Vec<Ordered<'_>> {
    payloads.iter().enumerate().map(|(i, p)| Ordered { client: 7, request: i as u64, payload: p }).collect()
}

fn refusal_code(outcomes: &[Outcome]) -> Option<Code> {
    match outcomes {
        [Outcome::Refuse(Refusal { code, .. })] => Some(*code),
        _ => None,
    }
}

#[test]
fn the_same_batches_give_the_same_outcomes_and_state_at_two_replicas() {
    let registry = registry();
    let payloads = vec![add(1, 5), add(2, 9), add(1, 250), b"OTH1\x04".to_vec(), add(1, 1), b"CNT1\x02".to_vec()];
    let mut runs = Vec::new();
    for _ in 0..2 {
        let mut store = MemoryTables::default();
        let first = registry.apply_batch(&mut store, 0, 1_000, batch(&payloads)).expect("memory");
        let second = registry.apply_batch(&mut store, 1, 2_000, batch(&payloads)).expect("memory");
        runs.push((format!("{:?}", first.requests), format!("{:?}", second.requests), store));
    }
    assert_eq!(runs[0], runs[1]);
}

#[test]
fn each_service_sees_only_its_own_tables() {
    let registry = registry();
    let mut store = MemoryTables::default();
    let payloads = vec![add(0, 3), b"OTH1\x09".to_vec()];
    let out = registry.apply_batch(&mut store, 0, 1_000, batch(&payloads)).expect("memory");
    assert_eq!(out.requests[1].2, vec![Outcome::Reply(vec![9])]);
    assert_eq!(store.get("counter_counts", &[0]).expect("memory"), Some(3u64.to_le_bytes().to_vec()));
    assert_eq!(store.get("other_counts", &[0]).expect("memory"), Some(vec![9]));
    assert_eq!(registry.query::<Counter>(&store, 0), Ok(3));
    // A service that names another's table fails as a bug, and writes nothing there.
    let trespass = registry.apply_batch(&mut store, 1, 2_000, batch(&[b"CNT1\x03".to_vec()]));
    assert!(matches!(trespass, Err(StoreError::UndeclaredTable { .. })), "{trespass:?}");
    assert_eq!(store.get("other_counts", &[0]).expect("memory"), Some(vec![9]));
}

#[test]
fn a_refused_request_leaves_no_write_behind() {
    let registry = registry();
    let mut store = MemoryTables::default();
    registry.apply_batch(&mut store, 0, 1_000, batch(&[add(1, 150)])).expect("memory");
    let before = store.clone();
    // The counter writes 300 before it refuses it; the store must not keep it.
    let out = registry.apply_batch(&mut store, 1, 1_000, batch(&[add(1, 150)])).expect("memory");
    assert_eq!(refusal_code(&out.requests[0].2), Some(Code::OutOfRange));
    assert_eq!(store, before);
    assert_eq!(registry.query::<Counter>(&store, 1), Ok(150));
}

#[test]
fn garbage_payloads_are_refused_or_unrouted_never_a_panic() {
    let registry = registry();
    let mut store = MemoryTables::default();
    let payloads = vec![
        b"CNT1".to_vec(),
        b"CNT1\x09\x09".to_vec(),
        [&b"CNT1"[..], &[1; 100]].concat(),
        Vec::new(),
        b"CN".to_vec(),
        b"XXXX\x01\x02\x03".to_vec(),
    ];
    let out = registry.apply_batch(&mut store, 0, 1_000, batch(&payloads)).expect("memory");
    let routes: Vec<_> = out.requests.iter().map(|(_, service, outcomes)| (*service, refusal_code(outcomes))).collect();
    let counter = Some(ServiceId(*b"CNT1"));
    let invalid = Some(Code::InvalidArgument);
    assert_eq!(
        routes,
        vec![(counter, invalid), (counter, invalid), (counter, invalid), (None, None), (None, None), (None, None)]
    );
    match &out.requests[2].2[..] {
        [Outcome::Refuse(refusal)] => assert!(refusal.reason.contains("above the bound of 8"), "{refusal:?}"),
        other => panic!("{other:?}"),
    }
    assert!(!store.tables().contains_key("counter_counts"), "garbage wrote nothing");
}

#[test]
fn the_registry_routes_by_the_first_four_bytes_and_refuses_a_second_id_or_name() {
    let mut registry = registry();
    assert!(matches!(registry.route(&add(1, 1)), Route::Request(d) if d.service() == ServiceId(*b"CNT1")));
    assert!(matches!(registry.route(b"OTH1\x01"), Route::Request(d) if d.service() == ServiceId(*b"OTH1")));
    assert!(matches!(registry.route(b"OTH2\x01"), Route::Unrouted));
    assert!(registry.register(Counter).is_err(), "a second CNT1");
    assert_eq!(registry.ids().collect::<Vec<_>>(), vec![ServiceId(*b"CNT1"), ServiceId(*b"OTH1")]);
    assert_eq!(registry.store_tables(), vec!["counter_counts", "counter_clock", "other_counts"]);
}

#[test]
fn an_epoch_begins_before_its_requests() {
    let registry = registry();
    let mut store = MemoryTables::default();
    let out = registry.apply_batch(&mut store, 3, 4_242, batch(&[b"CNT1\x02".to_vec()])).expect("memory");
    assert_eq!(out.requests[0].2, vec![Outcome::Reply(4_242u64.to_le_bytes().to_vec())]);
}

/// A service that tries to take the id the host keeps for decision notices.
struct Squatter;

impl Service for Squatter {
    const ID: ServiceId = HOST_DECISION_NOTICE;
    const NAME: &'static str = "squatter";
    const TABLES: &'static [&'static str] = &[];
    const PAYLOAD_MAX: usize = 8;
    type Request = ();
    type Query = ();
    type View = ();

    fn decode(&self, _: &[u8]) -> Result<(), DecodeError> {
        Ok(())
    }

    fn apply(&self, _: &mut dyn Tables, _: &Applied, (): ()) -> Result<Vec<Outcome>, StoreError> {
        Ok(Vec::new())
    }

    fn query(&self, _: &dyn Tables, (): ()) -> Result<(), QueryError> {
        Ok(())
    }
}

#[test]
fn the_hosts_own_id_is_refused_and_validation_goes_to_the_service_that_asked() {
    let mut registry = registry();
    assert_eq!(registry.register(Squatter), Err(RegistryError::IdReserved(HOST_DECISION_NOTICE)));
    assert!(matches!(registry.route(b"HDC1 notice"), Route::Unrouted), "no service sees the host's payloads");
    let instance = InstanceId([9; 32]);
    assert!(registry.validate(ServiceId(*b"CNT1"), instance, b"ok\x09"));
    assert!(!registry.validate(ServiceId(*b"CNT1"), instance, b"ok\x08"), "the service's own predicate");
    assert!(!registry.validate(ServiceId(*b"OTH1"), instance, b"ok\x09"), "the default accepts nothing");
    assert!(!registry.validate(ServiceId(*b"NONE"), instance, b"ok\x09"), "no such service");
}
