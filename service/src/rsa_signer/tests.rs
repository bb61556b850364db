//! Unit tests of the `RsaSigner` with a 512-bit key (a test-only size, dealt once from a fixed
//! seed); the combined signatures are checked with the `rsa` crate, an independent implementation.
//! The simulator runs it under Byzantine signers and schedules (`simnet::rsa_signer`).

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

use fides_threshold_rsa::{deal, sign_share, sign_share_value, Dealt};
use fides_types::codec::Wire;
use fides_types::{Fault, FaultKind, NodeIndex, Protocol, Quorum, Step, Target};
use rand::SeedableRng;

use super::*;

const MESSAGE: &[u8] = b"tbs bytes of a certificate";

/// A 512-bit key for n = 4, t = 1.
fn dealt() -> &'static Dealt {
    static DEALT: OnceLock<Dealt> = OnceLock::new();
    DEALT.get_or_init(|| {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(12);
        deal(512, 4, 1, &mut rng, &mut |_| {}).expect("512 bits, n = 4, t = 1 is a valid key")
    })
}

fn signer(index: u32, config: RsaSignerConfig) -> RsaSigner {
    let quorum = Quorum::new(4, 1).expect("n = 4, t = 1");
    RsaSigner::new(Arc::new(dealt().public.clone()), quorum, NodeIndex(index), config)
}

fn share_bytes(index: u32, message: &[u8]) -> Vec<u8> {
    let dealt = dealt();
    sign_share(&dealt.public, &dealt.shares[index as usize], message).expect("own share").to_bytes(&dealt.public)
}

fn value_bytes(index: u32, message: &[u8]) -> Vec<u8> {
    let dealt = dealt();
    sign_share_value(&dealt.public, &dealt.shares[index as usize], message).expect("own share").to_bytes(&dealt.public)
}

/// `MESSAGE`'s two designated signers, then the two others.
fn roles() -> [u32; 4] {
    let chosen: Vec<u32> = designated(&MessageId::of(MESSAGE), 4, 1).map(|i| i.0).collect();
    let others: Vec<u32> = (0..4).filter(|i| !chosen.contains(i)).collect();
    [chosen[0], chosen[1], others[0], others[1]]
}

fn rsa_crate_verifies(message: &[u8], signature: &[u8]) -> bool {
    use sha2::Digest;
    let public = &dealt().public;
    let n = rsa::BigUint::from_bytes_be(&public.modulus_bytes());
    let key = rsa::RsaPublicKey::new(n, rsa::BigUint::from(public.exponent())).expect("a valid RSA public key");
    let digest = sha2::Sha256::digest(message);
    key.verify(rsa::Pkcs1v15Sign::new::<sha2::Sha256>(), &digest, signature).is_ok()
}

/// Four signers and the messages in flight between them, delivered in order; each signer's
/// host makes the shares it asks for at once.
struct Cluster {
    signers: Vec<RsaSigner>,
    queue: VecDeque<(NodeIndex, NodeIndex, Message)>,
    signed: Vec<Vec<(MessageId, Vec<u8>)>>,
    asked: Vec<(NodeIndex, NodeIndex, MessageId)>,
    /// The shares each host made: (replica, with its proof).
    computed: Vec<(NodeIndex, bool)>,
    faults: Vec<(NodeIndex, Fault)>,
    /// Replicas whose messages are lost (down, or silent Byzantine ones).
    mute: Vec<NodeIndex>,
}

impl Cluster {
    fn new(config: RsaSignerConfig) -> Cluster {
        Cluster {
            signers: (0..4).map(|i| signer(i, config)).collect(),
            queue: VecDeque::new(),
            signed: vec![Vec::new(); 4],
            asked: Vec::new(),
            computed: Vec::new(),
            faults: Vec::new(),
            mute: Vec::new(),
        }
    }

    fn take(&mut self, at: NodeIndex, step: Step<Message, Output>) {
        for fault in step.faults {
            self.faults.push((at, fault));
        }
        if !self.mute.contains(&at) {
            for outgoing in step.messages {
                match outgoing.target {
                    Target::All => {
                        for to in (0..4).map(NodeIndex).filter(|to| *to != at) {
                            self.queue.push_back((at, to, outgoing.message.clone()));
                        }
                    }
                    Target::Node(to) => self.queue.push_back((at, to, outgoing.message)),
                }
            }
        }
        for output in step.outputs {
            match output {
                Output::Signed { id, signature } => self.signed[at.as_usize()].push((id, signature)),
                Output::SignatureAsked { peer, id } => self.asked.push((at, peer, id)),
                Output::Compute(compute) => {
                    self.computed.push((at, compute.proof));
                    let dealt = dealt();
                    let computed = compute.run(&dealt.public, &dealt.shares[at.as_usize()]).expect("our share signs");
                    self.input(at.0, Input::Computed(computed));
                }
            }
        }
    }

    fn input(&mut self, at: u32, input: Input) {
        let step = self.signers[at as usize].handle_input(input, &mut rand::thread_rng()).expect("an input");
        self.take(NodeIndex(at), step);
    }

    fn sign(&mut self, at: u32, message: &[u8]) {
        self.input(at, Input::Sign(message.to_vec()));
    }

    /// The host's timeout: the signature is not in yet.
    fn retry(&mut self, at: u32, message: &[u8]) {
        self.input(at, Input::Retry(message.to_vec()));
    }

    /// A message from `from` to `to`, delivered now (a Byzantine sender's, say).
    fn deliver(&mut self, from: u32, to: u32, message: Message) {
        let step = self.signers[to as usize].handle_message(NodeIndex(from), message, &mut rand::thread_rng());
        self.take(NodeIndex(to), step);
    }

    fn run(&mut self) {
        let mut delivered = 0;
        while let Some((from, to, message)) = self.queue.pop_front() {
            delivered += 1;
            assert!(delivered < 10_000, "the signers keep talking");
            let step = self.signers[to.as_usize()].handle_message(from, message, &mut rand::thread_rng());
            self.take(to, step);
        }
    }

    fn faults_against(&self, node: u32) -> Vec<FaultKind> {
        self.faults.iter().filter(|(_, f)| f.node == NodeIndex(node)).map(|(_, f)| f.kind.clone()).collect()
    }

    /// Each of `honest` signed `MESSAGE` exactly once, the same signature, which verifies.
    fn assert_signed(&self, honest: &[u32]) {
        let first = &self.signed[honest[0] as usize];
        assert_eq!(first.len(), 1, "replica {} signed once", honest[0]);
        assert_eq!(first[0].0, MessageId::of(MESSAGE));
        assert!(rsa_crate_verifies(MESSAGE, &first[0].1), "the rsa crate accepts the combined signature");
        for i in honest {
            assert_eq!(self.signed[*i as usize], *first, "replica {i} signed the same signature, once");
        }
    }
}

#[test]
fn honest_signers_make_one_signature_that_the_rsa_crate_verifies() {
    let mut cluster = Cluster::new(RsaSignerConfig::default());
    for i in 0..4 {
        cluster.sign(i, MESSAGE);
    }
    cluster.run();
    cluster.assert_signed(&[0, 1, 2, 3]);
    assert!(!rsa_crate_verifies(b"another message", &cluster.signed[0][0].1));
    assert!(cluster.faults.is_empty(), "{:?}", cluster.faults);
    assert!(cluster.signers.iter().all(|s| s.signing().next().is_none() && s.early_messages() == 0));
}

#[test]
fn only_the_t_plus_one_designated_signers_make_a_share_and_none_makes_a_proof() {
    let mut cluster = Cluster::new(RsaSignerConfig::default());
    let [a, b, _, _] = roles();
    for i in 0..4 {
        cluster.sign(i, MESSAGE);
    }
    cluster.run();
    cluster.assert_signed(&[0, 1, 2, 3]);
    let mut computed = cluster.computed.clone();
    computed.sort();
    assert_eq!(computed, vec![(NodeIndex(a.min(b)), false), (NodeIndex(a.max(b)), false)]);
    // The designation rotates with the message: every replica is designated for some messages.
    let mut seen = [false; 4];
    for i in 0..64u8 {
        for index in designated(&MessageId::of(&[i]), 4, 1) {
            seen[index.as_usize()] = true;
        }
    }
    assert_eq!(seen, [true; 4]);
}

#[test]
fn a_silent_designated_signer_is_replaced_after_a_retry() {
    let mut cluster = Cluster::new(RsaSignerConfig::default());
    let [a, b, c, d] = roles();
    cluster.mute.push(NodeIndex(a));
    for i in [b, c, d] {
        cluster.sign(i, MESSAGE);
    }
    cluster.run();
    assert!(cluster.signed.iter().all(Vec::is_empty), "one share is not enough");
    for i in [b, c, d] {
        cluster.retry(i, MESSAGE);
    }
    cluster.run();
    cluster.assert_signed(&[b, c, d]);
    assert!(cluster.computed.iter().all(|(_, proof)| !proof), "no proof is needed: {:?}", cluster.computed);
    assert!(cluster.faults.is_empty(), "silence is no fault: {:?}", cluster.faults);
}

#[test]
fn a_bad_value_from_a_designated_signer_is_named_and_the_signature_still_combines() {
    let mut cluster = Cluster::new(RsaSignerConfig::default());
    let [a, b, c, d] = roles();
    let id = MessageId::of(MESSAGE);
    // Byzantine designated signer `a`: its value of another message, under the right id, first;
    // it answers nothing after that.
    cluster.mute.push(NodeIndex(a));
    for i in [b, c, d] {
        cluster.deliver(a, i, Message::Value { id, value: value_bytes(a, b"another message") });
    }
    for i in [b, c, d] {
        cluster.sign(i, MESSAGE);
    }
    cluster.run();
    cluster.assert_signed(&[b, c, d]);
    for reporter in [b, c, d] {
        let named: Vec<_> = cluster.faults.iter().filter(|(r, _)| *r == NodeIndex(reporter)).collect();
        assert_eq!(named.len(), 1, "replica {reporter} names the bad value once: {named:?}");
        assert_eq!((named[0].1.node, &named[0].1.kind), (NodeIndex(a), &FaultKind::InvalidProof));
    }
    assert!(cluster.computed.iter().any(|(_, proof)| *proof), "the failure asked for proofs");
}

#[test]
fn a_share_of_another_message_is_named_and_the_good_shares_still_sign() {
    let mut cluster = Cluster::new(RsaSignerConfig::default());
    let [a, b, c, d] = roles();
    let id = MessageId::of(MESSAGE);
    // Byzantine `d` (not designated): its share of another message, with a proof, under the
    // right id, arriving first at `c`.
    let wrong = share_bytes(d, b"another message");
    cluster.sign(c, MESSAGE);
    cluster.deliver(d, c, Message::Share { id, share: wrong.clone() });
    assert!(cluster.signed[c as usize].is_empty(), "no signature from a bad share");
    cluster.mute.push(NodeIndex(d));
    for i in [a, b] {
        cluster.sign(i, MESSAGE);
    }
    cluster.run();
    cluster.assert_signed(&[a, b, c]);
    assert_eq!(cluster.faults_against(d), vec![FaultKind::InvalidProof]);
    assert!(cluster.faults.iter().all(|(_, f)| f.node == NodeIndex(d)), "{:?}", cluster.faults);
    // A late share to a signer that is done is answered with the signature.
    cluster.mute.clear();
    cluster.deliver(d, a, Message::Share { id, share: wrong });
    assert!(matches!(cluster.queue.pop_front(), Some((_, _, Message::Signature { .. }))));
}

#[test]
fn garbage_and_shares_under_another_index_are_named() {
    let mut cluster = Cluster::new(RsaSignerConfig::default());
    let id = MessageId::of(MESSAGE);
    cluster.sign(0, MESSAGE);
    cluster.deliver(3, 0, Message::Share { id, share: vec![3; 100] });
    assert_eq!(cluster.faults_against(3), vec![FaultKind::Undecodable]);
    // Signer 2 replays signer 1's share under its own name.
    cluster.deliver(2, 0, Message::Share { id, share: share_bytes(1, MESSAGE) });
    assert_eq!(cluster.faults_against(2), vec![FaultKind::InvalidProof]);
    // A signature that is not one.
    cluster.deliver(2, 0, Message::Signature { id, signature: vec![1; 64] });
    assert_eq!(cluster.faults_against(2), vec![FaultKind::InvalidProof, FaultKind::InvalidProof]);
    assert!(cluster.signed[0].is_empty());
    // An undecodable message never reaches the signer: the host drops its bytes.
    assert!(Message::from_bytes(&[9; 40]).is_err());
    cluster.mute.extend([NodeIndex(2), NodeIndex(3)]);
    cluster.sign(1, MESSAGE);
    for i in [0, 1] {
        cluster.retry(i, MESSAGE);
    }
    cluster.run();
    cluster.assert_signed(&[0, 1]);
}

#[test]
fn a_second_different_share_is_an_equivocation() {
    let mut cluster = Cluster::new(RsaSignerConfig::default());
    let id = MessageId::of(MESSAGE);
    cluster.sign(0, MESSAGE);
    cluster.deliver(3, 0, Message::Share { id, share: vec![3; 100] });
    cluster.deliver(3, 0, Message::Share { id, share: vec![4; 100] });
    assert_eq!(cluster.faults_against(3), vec![FaultKind::Undecodable, FaultKind::Equivocation]);
    cluster.deliver(2, 0, Message::Value { id, value: vec![1; 10] });
    cluster.deliver(2, 0, Message::Value { id, value: vec![2; 10] });
    assert_eq!(cluster.faults_against(2), vec![FaultKind::Undecodable, FaultKind::Equivocation]);
    // Early, before we sign: the same.
    let other = MessageId::of(b"later");
    cluster.deliver(3, 1, Message::Share { id: other, share: vec![3; 10] });
    cluster.deliver(3, 1, Message::Share { id: other, share: vec![4; 10] });
    assert_eq!(cluster.faults_against(3).last(), Some(&FaultKind::Equivocation));
}

#[test]
fn messages_before_we_sign_are_kept_up_to_a_bound_per_peer() {
    let config = RsaSignerConfig { early_per_peer_max: 3, done_kept: 16 };
    let mut cluster = Cluster::new(config);
    let id = MessageId::of(MESSAGE);
    // An honest peer ahead of us: its value is kept and used once we sign.
    cluster.deliver(1, 0, Message::Value { id, value: value_bytes(1, MESSAGE) });
    assert_eq!(cluster.signers[0].early_messages(), 1);
    assert!(cluster.asked.is_empty());
    // Its ask: the host is asked whether it signed that id long ago.
    cluster.deliver(1, 0, Message::Ask { id, proofs: false });
    assert_eq!(cluster.asked, vec![(NodeIndex(0), NodeIndex(1), id)]);
    // A Byzantine peer: values for messages nobody asked for, up to the bound, then a fault.
    for i in 0..5u8 {
        cluster.deliver(3, 0, Message::Value { id: MessageId::of(&[i]), value: vec![i; 10] });
    }
    assert_eq!(cluster.signers[0].early_messages(), 5);
    assert_eq!(cluster.faults_against(3), vec![FaultKind::RoundTooFar, FaultKind::RoundTooFar]);
    cluster.queue.clear();
    cluster.retry(0, MESSAGE);
    assert_eq!(cluster.signed[0].len(), 1, "our share and the value kept make t + 1");
    assert!(rsa_crate_verifies(MESSAGE, &cluster.signed[0][0].1));
    assert_eq!(cluster.signers[0].early_messages(), 3);
}

#[test]
fn a_late_signer_gets_the_signature_and_a_restarted_signer_finishes_from_it() {
    let config = RsaSignerConfig { early_per_peer_max: 8, done_kept: 1 };
    let mut cluster = Cluster::new(config);
    cluster.mute.push(NodeIndex(3));
    for i in 0..3 {
        cluster.sign(i, MESSAGE);
        cluster.retry(i, MESSAGE);
    }
    cluster.run();
    cluster.assert_signed(&[0, 1, 2]);
    // Signer 3 was down; it comes back with nothing in memory, and its host retries at once.
    cluster.mute.clear();
    cluster.signers[3] = signer(3, config);
    cluster.retry(3, MESSAGE);
    cluster.run();
    cluster.assert_signed(&[0, 1, 2, 3]);
    // A replayed value after the signature: answered with the signature.
    let id = MessageId::of(MESSAGE);
    let faults = cluster.faults.len();
    cluster.deliver(3, 0, Message::Value { id, value: value_bytes(3, MESSAGE) });
    assert!(matches!(cluster.queue.pop_front(), Some((_, _, Message::Signature { .. }))));
    // Forgotten (done_kept = 1) once another message is signed: the host is asked.
    for i in 0..4 {
        cluster.retry(i, b"second");
    }
    cluster.run();
    cluster.asked.clear();
    cluster.deliver(3, 0, Message::Ask { id, proofs: false });
    assert_eq!(cluster.asked, vec![(NodeIndex(0), NodeIndex(3), id)]);
    let signature = cluster.signed[0][0].1.clone();
    let step = cluster.signers[0]
        .handle_input(Input::Answer { peer: NodeIndex(3), id, signature }, &mut rand::thread_rng())
        .expect("an answer");
    assert_eq!(step.messages.len(), 1);
    assert_eq!(cluster.signers[0].early_messages(), 0, "what was kept for a signed id is dropped");
    assert_eq!(cluster.faults.len(), faults);
}

#[test]
fn signing_again_resends_our_share_and_messages_round_trip() {
    let mut cluster = Cluster::new(RsaSignerConfig::default());
    cluster.retry(0, MESSAGE);
    let first = cluster.queue.clone();
    assert!(first.iter().any(|(_, _, m)| matches!(m, Message::Ask { proofs: false, .. })));
    cluster.queue.clear();
    cluster.sign(0, MESSAGE);
    let values: VecDeque<_> = first.iter().filter(|(_, _, m)| matches!(m, Message::Value { .. })).cloned().collect();
    assert_eq!(values.len(), 3);
    assert_eq!(cluster.queue, values, "the same value again");
    let mut all: Vec<Message> = first.into_iter().map(|(_, _, m)| m).collect();
    let id = MessageId::of(MESSAGE);
    all.push(Message::Ask { id, proofs: true });
    all.push(Message::Share { id, share: share_bytes(0, MESSAGE) });
    all.push(Message::Signature { id, signature: vec![5; 64] });
    for message in &all {
        let bytes = message.to_bytes();
        assert_eq!(Message::from_bytes(&bytes).as_ref(), Ok(message));
        for cut in 0..bytes.len() {
            assert!(Message::from_bytes(&bytes[..cut]).is_err());
        }
    }
    let mut long = Message::Share { id: MessageId([0; 32]), share: Vec::new() }.to_bytes();
    long.truncate(33);
    long.extend_from_slice(&(SHARE_BYTES_MAX as u32 + 1).to_le_bytes());
    assert!(Message::from_bytes(&long).is_err());
    // An ask carries nothing; the retired reply tag is refused.
    let mut ask = Message::Value { id, value: vec![1] }.to_bytes();
    ask[0] = 5;
    assert!(Message::from_bytes(&ask).is_err());
    let mut reply = Message::Share { id, share: vec![1] }.to_bytes();
    reply[0] = 2;
    assert!(Message::from_bytes(&reply).is_err());
}
