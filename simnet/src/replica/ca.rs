//! The certification authority (`fides_ca::service`) in whole replicas: its configuration, a
//! Byzantine replica's CA that votes yes on everything, the clients (with and without the key,
//! and two updates of one key sent together), and the checks on what the honest replicas decided.
//!
//! Threshold RSA is not simulated: the CA's `ThresholdSign` asks are ignored, as every
//! `ThresholdSign` is here, so the TBS of each issued record is what is checked, not a signed
//! certificate. The root is a fixed test root; its key never signs here.

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::{Signer, SigningKey};
use fides_ca::service::{
    answer, confirmed_message, instance_of, Answer, Binding, CaConfig, Challenger, KeySecret, Mode, Mutation, Own,
    Policy, Record, Request as CaRequest, Service as Ca, DEFAULT_VALIDITY_SECS,
};
use fides_ca::{AltNames, AttributeKind, Root, Serial, SubjectName};
use fides_service::{
    Applied as AppliedAt, Decision, EpochStart, InstanceId, Outcome, QueryError, Service, StoreError, Tables,
};
use fides_types::codec::{DecodeError, Wire};

use super::CLUSTER;

/// The root the CA issues under: a fixed test root (threshold RSA is not simulated here, so its
/// key signs nothing).
const ROOT_PEM: &[u8] = include_bytes!("../../../services/ca/tests/data/ca-root.pem");

/// The CA's service id.
pub(super) const CA: fides_service::ServiceId = <Ca as Service>::ID;

/// The configuration every replica has alike: key-major, open policy.
pub(super) fn config(identities: &[SigningKey], checkpoint_interval: u64) -> Result<CaConfig, String> {
    let root = Root::from_pem(ROOT_PEM).map_err(|e| format!("the test root: {e}"))?;
    Ok(CaConfig {
        cluster: CLUSTER,
        identities: identities.iter().map(|k| k.verifying_key().to_bytes()).collect(),
        root,
        mode: Mode::KeyMajor,
        policy: Policy::Open,
        validity_secs: DEFAULT_VALIDITY_SECS,
        checkpoint_interval,
    })
}

/// Replica `index`'s CA, with its own identity (so its own challenges and votes).
pub(super) fn honest(config: CaConfig, index: u32, identity: &SigningKey) -> Ca {
    Ca::new(config, Some(Own { index, identity: identity.clone() }))
}

/// A Byzantine replica's CA: the real service, except that every vote it asks for is 1 with a
/// valid justification (its own signature of "confirmed"), whatever the challenge answers and
/// the policy say. Its state is the honest one (votes are not state), so only its votes lie.
pub struct YesCa {
    inner: Ca,
    index: u32,
    identity: SigningKey,
}

impl YesCa {
    /// Replica `index`'s lying CA.
    pub(super) fn new(config: CaConfig, index: u32, identity: &SigningKey) -> YesCa {
        YesCa { inner: honest(config, index, identity), index, identity: identity.clone() }
    }

    fn force(&self, outcomes: Vec<Outcome>) -> Vec<Outcome> {
        outcomes
            .into_iter()
            .map(|outcome| match outcome {
                Outcome::Agree { instance, .. } => {
                    let signature = self.identity.sign(&confirmed_message(&CLUSTER, &instance));
                    let justification = [&self.index.to_le_bytes()[..], &signature.to_bytes()].concat();
                    Outcome::Agree { instance, vote: true, justification }
                }
                other => other,
            })
            .collect()
    }
}

impl Service for YesCa {
    const ID: fides_service::ServiceId = <Ca as Service>::ID;
    const NAME: &'static str = <Ca as Service>::NAME;
    const TABLES: &'static [&'static str] = <Ca as Service>::TABLES;
    const PAYLOAD_MAX: usize = <Ca as Service>::PAYLOAD_MAX;
    type Request = <Ca as Service>::Request;
    type Query = <Ca as Service>::Query;
    type View = <Ca as Service>::View;

    fn decode(&self, payload: &[u8]) -> Result<Self::Request, DecodeError> {
        self.inner.decode(payload)
    }

    fn apply(
        &self,
        tables: &mut dyn Tables,
        at: &AppliedAt,
        request: Self::Request,
    ) -> Result<Vec<Outcome>, StoreError> {
        Ok(self.force(self.inner.apply(tables, at, request)?))
    }

    fn begin_epoch(&self, tables: &mut dyn Tables, at: &EpochStart) -> Result<Vec<Outcome>, StoreError> {
        Ok(self.force(self.inner.begin_epoch(tables, at)?))
    }

    fn validate(&self, instance: InstanceId, justification: &[u8]) -> bool {
        self.inner.validate(instance, justification)
    }

    fn decided(&self, tables: &mut dyn Tables, decision: &Decision) -> Result<Vec<Outcome>, StoreError> {
        Ok(self.force(self.inner.decided(tables, decision)?))
    }

    fn query(&self, tables: &dyn Tables, query: Self::Query) -> Result<Self::View, QueryError> {
        self.inner.query(tables, query)
    }
}

/// One CA request as a client sends it.
#[derive(Clone, Debug)]
pub(super) struct CaRequestSent {
    pub client: u64,
    pub id: u64,
    pub payload: Vec<u8>,
    /// Its agreement instance.
    pub instance: [u8; 32],
    /// The key it names (Ed25519, raw: what a TBS carries in its subject public key).
    pub key: [u8; 32],
}

/// The CA's clients of one run.
#[derive(Clone, Debug, Default)]
pub(super) struct CaClients {
    /// Issues by clients that hold their key (answering every replica's challenge).
    pub holders: Vec<CaRequestSent>,
    /// Issues by clients that do not hold the key they name (their answers are signed with
    /// another key).
    pub impostors: Vec<CaRequestSent>,
    /// A holder's issue, then its two updates (sent together once the issue is applied).
    pub updated: Option<(CaRequestSent, [CaRequestSent; 2])>,
}

/// The client id of the CA's clients (one per key).
const CLIENT_FIRST: u64 = 100;

fn name(common_name: &str) -> Result<SubjectName, String> {
    SubjectName::new(common_name, &[(AttributeKind::Organization, "Simnet")]).map_err(|e| e.to_string())
}

/// `mutation` from `client` with id `id`, every replica's challenge answered with `secret`
/// (computed as the client's SDK gets it: from each replica's challenger).
fn request(
    mutation: Mutation,
    secret: &KeySecret,
    client: u64,
    id: u64,
    identities: &[SigningKey],
) -> Result<CaRequestSent, String> {
    let fides_ca::SubjectKey::Ed25519(key) = *mutation.key() else { return Err("an Ed25519 key".into()) };
    let digest = mutation.digest(&CLUSTER, client, id);
    let mut answers = Vec::new();
    for (index, identity) in (0u32..).zip(identities) {
        let challenge =
            Challenger::new(CLUSTER, index, identity).challenge(mutation.key(), &digest).map_err(|e| e.to_string())?;
        let bytes = answer(secret, &challenge, &CLUSTER, index, &digest).map_err(|e| e.to_string())?;
        answers.push(Answer { replica: index, bytes });
    }
    let payload = CaRequest::Mutation { mutation, answers }.to_payload();
    Ok(CaRequestSent { client, id, payload, instance: instance_of(client, id).0, key })
}

fn binding(key: &KeySecret, common_name: &str) -> Result<Binding, String> {
    let alt_names = AltNames::new(&[&format!("{common_name}.simnet.example")], &[]).map_err(|e| e.to_string())?;
    Ok(Binding::Fields { key: key.public(), name: name(common_name)?, alt_names })
}

/// `count` holders and `count` impostors (each with keys drawn from `rng`), and if `count > 0`
/// one more holder whose key is then updated twice.
pub(super) fn clients(
    count: usize,
    identities: &[SigningKey],
    rng: &mut rand_chacha::ChaCha8Rng,
) -> Result<CaClients, String> {
    let mut clients = CaClients::default();
    let mut next_client = CLIENT_FIRST;
    let mut key = || KeySecret::Ed25519(SigningKey::generate(rng));
    for k in 0..count {
        let secret = key();
        let issue = Mutation::Issue { binding: binding(&secret, &format!("holder-{k}"))?, token: None };
        clients.holders.push(request(issue, &secret, next_client, 0, identities)?);
        next_client += 1;
        // The impostor names a key it does not hold and answers with its own.
        let (named, own) = (key(), key());
        let issue = Mutation::Issue { binding: binding(&named, &format!("impostor-{k}"))?, token: None };
        clients.impostors.push(request(issue, &own, next_client, 0, identities)?);
        next_client += 1;
    }
    if count > 0 {
        let secret = key();
        let issue = Mutation::Issue { binding: binding(&secret, "updated")?, token: None };
        let first = request(issue, &secret, next_client, 0, identities)?;
        let update = |id: u64| -> Result<CaRequestSent, String> {
            let mutation = Mutation::Update { binding: binding(&secret, &format!("updated-{id}"))?, token: None };
            request(mutation, &secret, next_client, id, identities)
        };
        clients.updated = Some((first, [update(1)?, update(2)?]));
    }
    Ok(clients)
}

impl CaClients {
    /// Every request, in the order given (the updates last).
    pub fn all(&self) -> impl Iterator<Item = &CaRequestSent> {
        let updated = self.updated.iter().flat_map(|(issue, updates)| std::iter::once(issue).chain(updates));
        self.holders.iter().chain(&self.impostors).chain(updated)
    }

    /// The requests given at the start (the updates come later).
    pub fn initial(&self) -> impl Iterator<Item = &CaRequestSent> {
        self.holders.iter().chain(&self.impostors).chain(self.updated.iter().map(|(issue, _)| issue))
    }
}

/// The issued record among a decision's outcomes, if any.
pub(super) fn issued(outcomes: &[Outcome]) -> Option<(Serial, Vec<u8>)> {
    outcomes.iter().find_map(|outcome| match outcome {
        Outcome::Sign(bytes) => match Record::from_bytes(bytes) {
            Ok(Record::Issued(record)) => Some((record.serial, record.tbs)),
            _ => None,
        },
        _ => None,
    })
}

/// The serials of the revoked records among a decision's outcomes.
fn revoked(outcomes: &[Outcome]) -> Vec<Serial> {
    outcomes
        .iter()
        .filter_map(|outcome| match outcome {
            Outcome::Sign(bytes) => match Record::from_bytes(bytes) {
                Ok(Record::Revoked(record)) => Some(record.serial),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// A CA decision one replica applied: its place (epoch, position among the epoch's CA
/// decisions) and its outcomes.
type Placed<'a> = ((u64, usize), &'a [Outcome]);

/// The checks on one honest replica's CA decisions (`decided`: every CA decision it applied, in
/// order, by epoch): each instance decided once; no impostor's key in any issued certificate;
/// each holder's certificate issued; every request of `clients` decided (the run's done
/// condition waits for them); the two updates, in the order `ordered` (their instances in log
/// order), issued one after the other, the second replacing the first's certificate, and the
/// second not started while the first ran (`started`: the instances that requests started when
/// applied, by epoch; an instance started by a decision is not there).
pub(super) fn check(
    replica: impl std::fmt::Display,
    decided: &[(u64, [u8; 32], &[Outcome])],
    started: &[(u64, [u8; 32])],
    clients: &CaClients,
    ordered: &[[u8; 32]],
) -> Result<usize, String> {
    let mut by_instance: BTreeMap<[u8; 32], Placed<'_>> = BTreeMap::new();
    let mut position = BTreeMap::<u64, usize>::new();
    for (epoch, instance, outcomes) in decided {
        let at = position.entry(*epoch).or_default();
        if by_instance.insert(*instance, ((*epoch, *at), outcomes)).is_some() {
            return Err(format!("replica {replica}: CA instance {:02x?}… decided twice", &instance[..4]));
        }
        *at += 1;
    }
    let issued_keys: BTreeSet<[u8; 32]> = by_instance
        .values()
        .filter_map(|(_, outcomes)| issued(outcomes))
        .flat_map(|(_, tbs)| {
            clients.all().map(|r| r.key).filter(move |key| tbs.windows(32).any(|w| w == key)).collect::<Vec<_>>()
        })
        .collect();
    for r in &clients.impostors {
        if issued_keys.contains(&r.key) {
            return Err(format!(
                "replica {replica}: client {} got a certificate for a key it does not hold (request {})",
                r.client, r.id
            ));
        }
    }
    for r in clients.holders.iter().chain(clients.updated.iter().map(|(issue, _)| issue)) {
        let outcomes = by_instance.get(&r.instance).map(|(_, o)| *o).unwrap_or_default();
        if issued(outcomes).is_none() {
            return Err(format!(
                "replica {replica}: client {} holds its key and got no certificate: {outcomes:?}",
                r.client
            ));
        }
    }
    for r in clients.all() {
        if !by_instance.contains_key(&r.instance) {
            return Err(format!("replica {replica}: the CA request {} of client {} was not decided", r.id, r.client));
        }
    }
    if let [first, second] = ordered {
        let (Some((at_first, first_outcomes)), Some((at_second, second_outcomes))) =
            (by_instance.get(first), by_instance.get(second))
        else {
            return Err(format!("replica {replica}: an update was not decided"));
        };
        let (Some((serial, _)), Some(_)) = (issued(first_outcomes), issued(second_outcomes)) else {
            return Err(format!(
                "replica {replica}: an update was refused: {first_outcomes:?} then {second_outcomes:?}"
            ));
        };
        // Requests are applied before the epoch's decisions: started by its request in the epoch
        // the first was decided in, the second ran alongside it.
        let started_early = started.iter().find(|(_, instance)| instance == second).map(|(epoch, _)| *epoch);
        if let Some(epoch) = started_early.filter(|epoch| *epoch <= at_first.0) {
            return Err(format!(
                "replica {replica}: the second update of one key started in epoch {epoch}, while the first ran \
                 (decided at {at_first:?})"
            ));
        }
        if at_first >= at_second || !revoked(second_outcomes).contains(&serial) {
            return Err(format!(
                "replica {replica}: the two updates of one key did not run one after the other: the first \
                 decided at {at_first:?}, the second at {at_second:?} revoking {:?} (the first issued {serial:?})",
                revoked(second_outcomes)
            ));
        }
    }
    Ok(by_instance.values().filter(|(_, outcomes)| issued(outcomes).is_some()).count())
}
