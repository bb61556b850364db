//! A small service that asks for agreement, for the tests of the host and the simulator's whole
//! replicas (not registered by any replica): `AGT1 ‖ key [32] ‖ vote u8` asks for instance `key`
//! with that vote (for 1, the justification `yes ‖ key[0]`, the only one it accepts); `vote` 2
//! only reserves it (`Outcome::Await`: a later ask starts it for this request); a decision is
//! recorded and signed as `key ‖ value`. Requests that ask for an instance ask alike at every
//! replica, so the instances' votes differ only where the requests' do.

use fides_service::{Applied, Decision, InstanceId, Outcome, QueryError, Service, ServiceId, StoreError, Tables};
use fides_types::codec::{DecodeError, Reader};

/// The service.
pub struct Asker;

impl Asker {
    /// The justification of a vote for 1 in instance `key`.
    pub fn justification(key: &[u8; 32]) -> Vec<u8> {
        [&b"yes"[..], &key[..1]].concat()
    }

    /// The payload that asks for instance `key` with `vote`.
    pub fn payload(key: [u8; 32], vote: bool) -> Vec<u8> {
        [&Asker::ID.0[..], &key, &[u8::from(vote)]].concat()
    }

    /// The payload that reserves instance `key` for itself without starting it.
    pub fn reserve_payload(key: [u8; 32]) -> Vec<u8> {
        [&Asker::ID.0[..], &key, &[2]].concat()
    }
}

impl Service for Asker {
    const ID: ServiceId = ServiceId(*b"AGT1");
    const NAME: &'static str = "asker";
    const TABLES: &'static [&'static str] = &["decided"];
    const PAYLOAD_MAX: usize = 37;
    /// The key, and the vote (`None`: reserve only).
    type Request = ([u8; 32], Option<bool>);
    type Query = ();
    type View = ();

    fn decode(&self, payload: &[u8]) -> Result<([u8; 32], Option<bool>), DecodeError> {
        let mut reader = Reader::new(payload.get(4..).unwrap_or_default());
        let key = reader.array()?;
        let vote = match reader.u8()? {
            0 => Some(false),
            1 => Some(true),
            2 => None,
            other => return Err(DecodeError::Invalid { what: "vote", value: other.into() }),
        };
        let request = (key, vote);
        reader.finish()?;
        Ok(request)
    }

    fn apply(
        &self,
        _: &mut dyn Tables,
        _: &Applied,
        (key, vote): ([u8; 32], Option<bool>),
    ) -> Result<Vec<Outcome>, StoreError> {
        let Some(vote) = vote else { return Ok(vec![Outcome::Await { instance: InstanceId(key) }]) };
        let justification = if vote { Asker::justification(&key) } else { Vec::new() };
        Ok(vec![Outcome::Agree { instance: InstanceId(key), vote, justification }])
    }

    fn validate(&self, instance: InstanceId, justification: &[u8]) -> bool {
        justification == Asker::justification(&instance.0)
    }

    fn decided(&self, tables: &mut dyn Tables, decision: &Decision) -> Result<Vec<Outcome>, StoreError> {
        tables.put("decided", &decision.instance.0, &[u8::from(decision.value)])?;
        Ok(vec![Outcome::Sign([&decision.instance.0[..], &[u8::from(decision.value)]].concat())])
    }

    fn query(&self, _: &dyn Tables, (): ()) -> Result<(), QueryError> {
        Ok(())
    }
}
