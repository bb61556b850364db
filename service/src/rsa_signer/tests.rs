//! Unit tests of the `RsaSigner` with a 512-bit key (a test-only size, dealt once from a fixed
//! seed); the combined signatures are checked with the `rsa` crate, an independent implementation.
//! The simulator runs it under Byzantine signers and schedules (`simnet::rsa_signer`).

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

use fides_threshold_rsa::{deal, sign_share, Dealt};
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
    let dealt = dealt();
    let quorum = Quorum::new(4, 1).expect("n = 4, t = 1");
    let secret = Arc::new(dealt.shares[index as usize].clone());
    RsaSigner::new(Arc::new(dealt.public.clone()), secret, quorum, NodeIndex(index), config)
}

fn share_bytes(index: u32, message: &[u8]) -> Vec<u8> {
    let dealt = dealt();
    sign_share(&dealt.public, &dealt.shares[index as usize], message).expect("own share").to_bytes(&dealt.public)
}

fn rsa_crate_verifies(message: &[u8], signature: &[u8]) -> bool {
    use sha2::Digest;
    let public = &dealt().public;
    let n = rsa::BigUint::from_bytes_be(&public.modulus_bytes());
    let key = rsa::RsaPublicKey::new(n, rsa::BigUint::from(public.exponent())).expect("a valid RSA public key");
    let digest = sha2::Sha256::digest(message);
    key.verify(rsa::Pkcs1v15Sign::new::<sha2::Sha256>(), &digest, signature).is_ok()
}

/// Four signers and the messages in flight between them, delivered in order.
struct Cluster {
    signers: Vec<RsaSigner>,
    queue: VecDeque<(NodeIndex, NodeIndex, Message)>,
    signed: Vec<Vec<(MessageId, Vec<u8>)>>,
    asked: Vec<(NodeIndex, NodeIndex, MessageId)>,
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
            faults: Vec::new(),
            mute: Vec::new(),
        }
    }

    fn take(&mut self, at: NodeIndex, step: Step<Message, Output>) {
        for fault in step.faults {
            self.faults.push((at, fault));
        }
        for output in step.outputs {
            match output {
                Output::Signed { id, signature } => self.signed[at.as_usize()].push((id, signature)),
                Output::SignatureAsked { peer, id } => self.asked.push((at, peer, id)),
            }
        }
        if self.mute.contains(&at) {
            return;
        }
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

    fn sign(&mut self, at: u32, message: &[u8]) {
        let step = self.signers[at as usize]
            .handle_input(Input::Sign(message.to_vec()), &mut rand::thread_rng())
            .expect("our share signs");
        self.take(NodeIndex(at), step);
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
}

#[test]
fn honest_signers_make_one_signature_that_the_rsa_crate_verifies() {
    let mut cluster = Cluster::new(RsaSignerConfig::default());
    for i in 0..4 {
        cluster.sign(i, MESSAGE);
    }
    cluster.run();
    let id = MessageId::of(MESSAGE);
    let first = cluster.signed[0].clone();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].0, id);
    assert!(rsa_crate_verifies(MESSAGE, &first[0].1), "the rsa crate accepts the combined signature");
    assert!(!rsa_crate_verifies(b"another message", &first[0].1));
    for signed in &cluster.signed {
        assert_eq!(*signed, first, "every signer outputs the same signature, once");
    }
    assert!(cluster.faults.is_empty(), "{:?}", cluster.faults);
    assert!(cluster.signers.iter().all(|s| s.signing().next().is_none() && s.early_shares() == 0));
}

#[test]
fn t_silent_signers_do_not_stop_the_others() {
    let mut cluster = Cluster::new(RsaSignerConfig::default());
    cluster.mute.push(NodeIndex(2));
    for i in [0, 1, 3] {
        cluster.sign(i, MESSAGE);
    }
    cluster.run();
    for i in [0, 1, 3] {
        assert_eq!(cluster.signed[i].len(), 1, "signer {i} signed");
    }
}

#[test]
fn a_share_of_another_message_is_named_and_the_good_shares_still_sign() {
    let mut cluster = Cluster::new(RsaSignerConfig::default());
    let id = MessageId::of(MESSAGE);
    // Byzantine signer 3: its own share of another message, under the right id, arriving first.
    let wrong = share_bytes(3, b"another message");
    cluster.sign(0, MESSAGE);
    cluster.deliver(3, 0, Message::Share { id, share: wrong.clone() });
    assert!(cluster.signed[0].is_empty(), "no signature from a bad share");
    assert_eq!(cluster.faults_against(3), vec![FaultKind::InvalidProof]);
    for i in [1, 2] {
        cluster.sign(i, MESSAGE);
    }
    cluster.run();
    assert_eq!(cluster.signed[0].len(), 1);
    assert!(rsa_crate_verifies(MESSAGE, &cluster.signed[0][0].1));
    // A late reply to a signer that is done is ignored.
    cluster.deliver(3, 1, Message::ShareReply { id, share: wrong });
    assert!(cluster.faults.iter().all(|(_, f)| f.node == NodeIndex(3)), "{:?}", cluster.faults);
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
    cluster.sign(1, MESSAGE);
    cluster.run();
    assert_eq!(cluster.signed[0].len(), 1);
    assert_eq!(cluster.signed[1].len(), 1);
}

#[test]
fn a_second_different_share_is_an_equivocation() {
    let mut cluster = Cluster::new(RsaSignerConfig::default());
    let id = MessageId::of(MESSAGE);
    cluster.sign(0, MESSAGE);
    cluster.deliver(3, 0, Message::Share { id, share: vec![3; 100] });
    cluster.deliver(3, 0, Message::Share { id, share: vec![4; 100] });
    assert_eq!(cluster.faults_against(3), vec![FaultKind::Undecodable, FaultKind::Equivocation]);
    // Early, before we sign: the same.
    let other = MessageId::of(b"later");
    cluster.deliver(3, 1, Message::Share { id: other, share: vec![3; 10] });
    cluster.deliver(3, 1, Message::Share { id: other, share: vec![4; 10] });
    assert_eq!(cluster.faults_against(3).last(), Some(&FaultKind::Equivocation));
}

#[test]
fn shares_before_we_sign_are_kept_up_to_a_bound_per_peer() {
    let config = RsaSignerConfig { early_per_peer_max: 3, done_kept: 16 };
    let mut cluster = Cluster::new(config);
    let id = MessageId::of(MESSAGE);
    // An honest peer ahead of us: its share is kept and used once we sign.
    cluster.deliver(1, 0, Message::Share { id, share: share_bytes(1, MESSAGE) });
    assert_eq!(cluster.signers[0].early_shares(), 1);
    assert_eq!(cluster.asked, vec![(NodeIndex(0), NodeIndex(1), id)], "the host is asked whether it signed it");
    // A Byzantine peer: shares for messages nobody asked for, up to the bound, then a fault.
    for i in 0..5u8 {
        cluster.deliver(3, 0, Message::ShareReply { id: MessageId::of(&[i]), share: vec![i; 10] });
    }
    assert_eq!(cluster.signers[0].early_shares(), 4);
    assert_eq!(cluster.faults_against(3), vec![FaultKind::RoundTooFar, FaultKind::RoundTooFar]);
    cluster.queue.clear();
    cluster.sign(0, MESSAGE);
    assert_eq!(cluster.signed[0].len(), 1, "our share and the one kept make t + 1");
    assert!(rsa_crate_verifies(MESSAGE, &cluster.signed[0][0].1));
    assert_eq!(cluster.signers[0].early_shares(), 3);
}

#[test]
fn a_late_share_gets_the_signature_and_a_restarted_signer_finishes_from_it() {
    let config = RsaSignerConfig { early_per_peer_max: 8, done_kept: 1 };
    let mut cluster = Cluster::new(config);
    cluster.mute.push(NodeIndex(3));
    for i in 0..3 {
        cluster.sign(i, MESSAGE);
    }
    cluster.run();
    // Signer 3 was down; it comes back with nothing in memory and signs.
    cluster.mute.clear();
    cluster.signers[3] = signer(3, config);
    cluster.sign(3, MESSAGE);
    cluster.run();
    assert_eq!(cluster.signed[3].len(), 1, "the others answered with the signature");
    assert_eq!(cluster.signed[3][0].1, cluster.signed[0][0].1);
    // A replayed share after the signature: answered with the signature, a reply ignored.
    let id = MessageId::of(MESSAGE);
    let faults = cluster.faults.len();
    cluster.deliver(3, 0, Message::ShareReply { id, share: share_bytes(3, MESSAGE) });
    assert!(cluster.queue.is_empty(), "a late reply is not answered");
    cluster.deliver(3, 0, Message::Share { id, share: share_bytes(3, MESSAGE) });
    assert!(matches!(cluster.queue.pop_front(), Some((_, _, Message::Signature { .. }))));
    // Forgotten (done_kept = 1) once another message is signed: the host is asked.
    for i in 0..4 {
        cluster.sign(i, b"second");
    }
    cluster.run();
    cluster.asked.clear();
    cluster.deliver(3, 0, Message::Share { id, share: share_bytes(3, MESSAGE) });
    assert_eq!(cluster.asked, vec![(NodeIndex(0), NodeIndex(3), id)]);
    let signature = cluster.signed[0][0].1.clone();
    let step = cluster.signers[0]
        .handle_input(Input::Answer { peer: NodeIndex(3), id, signature }, &mut rand::thread_rng())
        .expect("an answer");
    assert_eq!(step.messages.len(), 1);
    assert_eq!(cluster.signers[0].early_shares(), 0, "the share kept for a signed id is dropped");
    assert_eq!(cluster.faults.len(), faults);
}

#[test]
fn signing_again_resends_our_share_and_messages_round_trip() {
    let mut cluster = Cluster::new(RsaSignerConfig::default());
    cluster.sign(0, MESSAGE);
    let first = cluster.queue.clone();
    cluster.queue.clear();
    cluster.sign(0, MESSAGE);
    assert_eq!(cluster.queue, first, "the same share again");
    for (_, _, message) in &first {
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
}
