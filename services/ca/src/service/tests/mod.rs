//! The service's tests, sans-IO: a [`Registry`] per replica over [`MemoryTables`], decisions fed
//! by hand. Every step checks that the replicas' outcomes are equal but for their votes, and
//! that their tables are equal.

mod encoding;
mod flow;

use std::collections::VecDeque;
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use fides_service::{Decision, InstanceId, MemoryTables, Ordered, Outcome, Registry, Service as _};
use fides_threshold_rsa::{combine, sign_share, PublicKey, SecretShare};
use rand::SeedableRng;

use crate::service::*;
use crate::{AltNames, AttributeKind, Root, SubjectName};

pub(super) const CLUSTER: [u8; 32] = [0xc1; 32];
/// The first agreed time (ms), in 2025; each epoch is one second later.
pub(super) const START_MS: u64 = 1_750_000_000_000;
pub(super) const N: usize = 4;
pub(super) const T: usize = 1;

/// A 4-replica cluster (t = 1) with a 1024-bit threshold RSA key and its root certificate, dealt
/// once by the dealer from a fixed seed (about 0.1 s).
pub(super) struct Dealt {
    pub root_pem: String,
    pub root: Root,
    pub public: PublicKey,
    pub shares: Vec<SecretShare>,
    pub identities: Vec<SigningKey>,
}

pub(super) fn dealt() -> &'static Dealt {
    static DEALT: OnceLock<Dealt> = OnceLock::new();
    DEALT.get_or_init(|| {
        let quorum = fides_types::Quorum::new(N as u32, T as u32).expect("4 replicas tolerate 1 fault");
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let options = fides_dealer::RsaOptions {
            modulus_bits: 1024,
            not_before: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            progress: &mut |_| {},
        };
        let cluster = fides_dealer::generate_with_rsa(
            quorum,
            Default::default(),
            fides_dealer::default_addresses(quorum),
            fides_dealer::default_client_addresses(quorum),
            Some(options),
            &mut rng,
        )
        .expect("a valid cluster");
        let root_pem = cluster.root_certificate().expect("an RSA cluster has a root").to_owned();
        Dealt {
            root: Root::from_pem(root_pem.as_bytes()).expect("the dealer's root is usable"),
            root_pem,
            public: cluster.public().rsa().expect("an RSA cluster has the key").clone(),
            shares: cluster.replicas().iter().map(|replica| replica.rsa_share().expect("a share").clone()).collect(),
            identities: cluster.replicas().iter().map(|replica| replica.identity().clone()).collect(),
        }
    })
}

/// What `t + 1` replicas (1 and 3) make: shares of `message`, combined and verified.
pub(super) fn threshold_sign(message: &[u8]) -> Vec<u8> {
    let dealt = dealt();
    let shares: Vec<_> = [1, 3]
        .iter()
        .map(|&index| sign_share(&dealt.public, &dealt.shares[index], message).expect("the share fits the key"))
        .collect();
    combine(&dealt.public, message, &shares).expect("two honest shares combine").signature
}

pub(super) fn config(mode: Mode, policy: Policy) -> CaConfig {
    let dealt = dealt();
    CaConfig {
        cluster: CLUSTER,
        identities: dealt.identities.iter().map(|key| key.verifying_key().to_bytes()).collect(),
        root: dealt.root.clone(),
        mode,
        policy,
        validity_secs: DEFAULT_VALIDITY_SECS,
        checkpoint_interval: 10,
    }
}

pub(super) fn admin() -> SigningKey {
    SigningKey::from_bytes(&[0xad; 32])
}

pub(super) fn token_policy() -> Policy {
    Policy::Token { admin: admin().verifying_key().to_bytes() }
}

pub(super) fn name(common_name: &str) -> SubjectName {
    SubjectName::new(common_name, &[(AttributeKind::Organization, "Example")]).expect("a valid name")
}

pub(super) fn fields(secret: &KeySecret, common_name: &str) -> Binding {
    Binding::Fields {
        key: secret.public(),
        name: name(common_name),
        alt_names: AltNames::new(&[&format!("{common_name}.example.org")], &[]).expect("a valid DNS name"),
    }
}

pub(super) fn ed25519(seed: u8) -> KeySecret {
    KeySecret::Ed25519(SigningKey::from_bytes(&[seed; 32]))
}

pub(super) fn p256(seed: u8) -> KeySecret {
    KeySecret::P256(p256::ecdsa::SigningKey::from_slice(&[seed; 32]).expect("a valid scalar"))
}

pub(super) fn x25519(seed: u8) -> KeySecret {
    KeySecret::X25519(x25519_dalek::StaticSecret::from([seed; 32]))
}

/// The payload of `mutation` from `client` with id `request`, its challenges answered with
/// `secret` (which may not be the key's).
pub(super) fn payload(mutation: Mutation, secret: &KeySecret, client: u64, request: u64) -> Vec<u8> {
    let digest = mutation.digest(&CLUSTER, client, request);
    let answers = dealt()
        .identities
        .iter()
        .enumerate()
        .map(|(index, identity)| {
            let index = index as u32;
            let challenge = Challenger::new(CLUSTER, index, identity)
                .challenge(mutation.key(), &digest)
                .expect("a key with a challenge");
            Answer { replica: index, bytes: answer(secret, &challenge, &CLUSTER, index, &digest).expect("an answer") }
        })
        .collect();
    Request::Mutation { mutation, answers }.to_payload()
}

/// Each replica's vote and justification in one instance, by index.
pub(super) type Votes = Vec<(bool, Vec<u8>)>;

/// One replica: its registry (with its own identity) and its tables.
pub(super) struct Replica {
    pub registry: Registry,
    pub store: MemoryTables,
}

/// A cluster of [`N`] replicas driven by hand.
pub(super) struct Harness {
    pub replicas: Vec<Replica>,
    pub epoch: u64,
    pub time_ms: u64,
    /// Instances asked for and not decided yet, with each replica's (vote, justification).
    pub pending: VecDeque<(InstanceId, Votes)>,
    /// Each decided instance's answering outcomes (the `Agree`s they made go to `pending`).
    pub decided: Vec<(InstanceId, Vec<Outcome>)>,
    /// The messages `begin_epoch` asked to threshold-sign (CRLs), by epoch.
    pub crls: Vec<(u64, Vec<u8>)>,
}

/// An outcome with the vote blanked: what must be equal at every replica.
fn agreed(outcome: &Outcome) -> Outcome {
    match outcome {
        Outcome::Agree { instance, .. } => {
            Outcome::Agree { instance: *instance, vote: false, justification: Vec::new() }
        }
        other => other.clone(),
    }
}

impl Harness {
    pub fn new(config: CaConfig) -> Harness {
        let replicas = dealt()
            .identities
            .iter()
            .enumerate()
            .map(|(index, identity)| {
                let own = Own { index: index as u32, identity: identity.clone() };
                let mut registry = Registry::new();
                registry.register(Service::new(config.clone(), Some(own))).expect("registers");
                Replica { registry, store: MemoryTables::default() }
            })
            .collect();
        Harness {
            replicas,
            epoch: 0,
            time_ms: START_MS,
            pending: VecDeque::new(),
            decided: Vec::new(),
            crls: Vec::new(),
        }
    }

    fn check_states_equal(&self) {
        for replica in &self.replicas[1..] {
            assert_eq!(replica.store.tables(), self.replicas[0].store.tables(), "the replicas' states differ");
        }
    }

    /// Record the `Agree`s of `per_replica` (each replica's outcomes of one step) in `pending`
    /// and return the outcomes as every replica has them (votes blanked).
    fn collect(&mut self, per_replica: Vec<Vec<Outcome>>) -> Vec<Outcome> {
        let common: Vec<Outcome> = per_replica[0].iter().map(agreed).collect();
        for outcomes in &per_replica[1..] {
            assert_eq!(outcomes.iter().map(agreed).collect::<Vec<_>>(), common, "the replicas' outcomes differ");
        }
        for (position, outcome) in common.iter().enumerate() {
            if let Outcome::Agree { instance, .. } = outcome {
                let votes = per_replica
                    .iter()
                    .map(|outcomes| match &outcomes[position] {
                        Outcome::Agree { vote, justification, .. } => (*vote, justification.clone()),
                        _ => unreachable!("equal but for the votes"),
                    })
                    .collect();
                self.pending.push_back((*instance, votes));
            }
        }
        common
    }

    /// Order one epoch with `requests` (client, request id, payload): each request's outcomes.
    pub fn order(&mut self, requests: &[(u64, u64, Vec<u8>)]) -> Vec<Vec<Outcome>> {
        self.epoch += 1;
        self.time_ms += 1000;
        let ordered: Vec<Ordered<'_>> = requests
            .iter()
            .map(|(client, request, payload)| Ordered { client: *client, request: *request, payload })
            .collect();
        let mut epochs = Vec::new();
        let mut per_request = vec![Vec::new(); requests.len()];
        for replica in &mut self.replicas {
            let batch = replica
                .registry
                .apply_batch(&mut replica.store, self.epoch, self.time_ms, ordered.iter().copied())
                .expect("the store works");
            epochs.push(batch.epoch.into_iter().flat_map(|(_, outcomes)| outcomes).collect::<Vec<_>>());
            for (index, _, outcomes) in batch.requests {
                per_request[index as usize].push(outcomes);
            }
        }
        let epoch_outcomes = self.collect(epochs);
        for outcome in epoch_outcomes {
            match outcome {
                Outcome::ThresholdSign { message, .. } => self.crls.push((self.epoch, message)),
                other => panic!("begin_epoch made {other:?}"),
            }
        }
        let answers = per_request.into_iter().map(|per_replica| self.collect(per_replica)).collect();
        self.check_states_equal();
        answers
    }

    /// Decide the oldest pending instance as the agreement would with these votes (1 if at least
    /// `t + 1` replicas justify a 1, else 0), in a new epoch, and return its answering outcomes.
    pub fn decide_next(&mut self) -> (InstanceId, Vec<Outcome>) {
        let (instance, votes) = self.pending.pop_front().expect("an instance to decide");
        let yes: Vec<&Vec<u8>> =
            votes.iter().filter(|(vote, _)| *vote).map(|(_, justification)| justification).collect();
        for justification in &yes {
            for replica in &self.replicas {
                assert!(replica.registry.validate(Service::ID, instance, justification), "an honest justification");
            }
        }
        let value = yes.len() > T;
        let justification = if value { yes[0].clone() } else { Vec::new() };
        self.decide(instance, value, justification)
    }

    /// Decide `instance` with `value` in a new epoch (after its epoch start).
    pub fn decide(&mut self, instance: InstanceId, value: bool, justification: Vec<u8>) -> (InstanceId, Vec<Outcome>) {
        self.order(&[]);
        let decision = Decision { instance, value, justification, epoch: self.epoch, time_ms: self.time_ms };
        let mut per_replica = Vec::new();
        for replica in &mut self.replicas {
            let outcomes = replica
                .registry
                .decided(&mut replica.store, Service::ID, &decision)
                .expect("the store works")
                .expect("the CA is registered");
            per_replica.push(outcomes);
        }
        let outcomes = self.collect(per_replica);
        self.check_states_equal();
        let answer: Vec<Outcome> =
            outcomes.into_iter().filter(|outcome| !matches!(outcome, Outcome::Agree { .. })).collect();
        self.decided.push((instance, answer.clone()));
        (instance, answer)
    }

    /// Order one request and decide every instance it leads to: its final answer.
    pub fn run(&mut self, client: u64, request: u64, payload: Vec<u8>) -> Vec<Outcome> {
        let outcomes = self.order(&[(client, request, payload)]).remove(0);
        match outcomes.as_slice() {
            [Outcome::Agree { .. }] => self.decide_next().1,
            _ => outcomes,
        }
    }

    /// Ask replica 0.
    pub fn query(&self, query: Query) -> Result<View, fides_service::QueryError> {
        self.replicas[0].registry.query::<Service>(&self.replicas[0].store, query)
    }
}
