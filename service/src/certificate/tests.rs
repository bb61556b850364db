//! Unit tests of the tree, the encodings and the signer without a network (the signer under
//! Byzantine peers and schedulers is tested in simnet, `tests/epoch_signer.rs`).

use std::collections::VecDeque;
use std::sync::Arc;

use blsttc::SecretKeySet;
use fides_crypto::{PublicShares, ThresholdKeys};
use fides_types::{Fault, FaultKind, NodeIndex, Protocol, Quorum, Step, Target};
use rand::SeedableRng;

use super::*;

const CLUSTER: Digest = [7; 32];

fn leaves(n: u64) -> Vec<Leaf> {
    (0..n)
        .map(|i| match i % 3 {
            0 => Leaf::Ordering { client: i, id: i * 10, digest: [i as u8; 32], index: i as u32 },
            _ => Leaf::Service {
                service: ServiceId([b'T', b'S', b'T', (i % 5) as u8]),
                record: vec![i as u8; i as usize],
            },
        })
        .collect()
}

fn tree_of(leaves: &[Leaf]) -> Tree {
    Tree::new(leaves.iter().map(Leaf::hash).collect())
}

#[test]
fn every_leaf_path_leads_to_the_root_and_no_other_does() {
    for n in 1..=33u64 {
        let leaves = leaves(n);
        let tree = tree_of(&leaves);
        assert_eq!(tree.len(), n);
        for (i, leaf) in leaves.iter().enumerate() {
            let inclusion = tree.inclusion(i as u64).expect("a leaf of the tree");
            assert!(inclusion.path.len() <= PATH_LEN_MAX);
            assert_eq!(inclusion.root(leaf.hash(), n), Some(tree.root()), "n {n} leaf {i}");
            // Another leaf, index or count leads elsewhere or nowhere.
            assert_ne!(inclusion.root([0xaa; 32], n), Some(tree.root()));
            if n > 1 {
                let moved = Inclusion { index: (i as u64 + 1) % n, path: inclusion.path.clone() };
                assert_ne!(moved.root(leaf.hash(), n), Some(tree.root()), "n {n} leaf {i} moved");
            }
            let mut longer = inclusion.clone();
            longer.path.push([0; 32]);
            assert_eq!(longer.root(leaf.hash(), n), None);
        }
        assert_eq!(tree.inclusion(n), None);
    }
    assert_eq!(Tree::new(Vec::new()).root(), [0; 32]);
    assert_eq!(Inclusion { index: 3, path: Vec::new() }.root([0; 32], 3), None);
    assert_eq!(Inclusion { index: 0, path: Vec::new() }.root([0; 32], LEAVES_MAX + 1), None);
}

#[test]
fn an_inner_node_does_not_pass_for_a_leaf() {
    let leaves = leaves(2);
    let tree = tree_of(&leaves);
    // The bytes an inner node hashes, offered as a leaf of a one-leaf tree: another hash.
    let (left, right) = (leaves[0].hash(), leaves[1].hash());
    let node_bytes = [left, right].concat();
    assert_ne!(leaf_hash(&node_bytes), tree.root());
    let one = Inclusion { index: 0, path: Vec::new() };
    assert_ne!(one.root(leaf_hash(&node_bytes), 1), Some(tree.root()));
}

#[test]
fn decoders_refuse_what_is_out_of_bounds() {
    for leaf in leaves(7) {
        assert_eq!(Leaf::from_bytes(&leaf.to_bytes()), Ok(leaf));
    }
    let mut long = vec![KIND_SERVICE];
    long.extend_from_slice(b"TST1");
    long.extend_from_slice(&(RECORD_LEN_MAX as u32 + 1).to_le_bytes());
    assert!(matches!(Leaf::from_bytes(&long), Err(DecodeError::TooLong { .. })));
    assert!(matches!(Leaf::from_bytes(&[9]), Err(DecodeError::Invalid { .. })));
    let mut path = 0u64.to_le_bytes().to_vec();
    path.push(PATH_LEN_MAX as u8 + 1);
    assert!(matches!(Inclusion::from_bytes(&path), Err(DecodeError::TooLong { .. })));
    let root = EpochRoot { epoch: 1, time_ms: 2, count: LEAVES_MAX + 1, root: [0; 32] };
    assert!(matches!(EpochRoot::from_bytes(&root.to_bytes()), Err(DecodeError::TooLong { .. })));
    let certificate = Certificate { root: EpochRoot { count: 3, ..root }, signature: [5; 96] };
    assert_eq!(certificate.to_bytes().len(), CERTIFICATE_LEN);
    assert_eq!(Certificate::from_bytes(&certificate.to_bytes()), Ok(certificate));
    let inclusion = Inclusion { index: 5, path: vec![[1; 32]; 3] };
    assert_eq!(Inclusion::from_bytes(&inclusion.to_bytes()), Ok(inclusion));
}

/// A key set of `n` replicas tolerating `t`, and its secret (to sign as the whole cluster).
fn cluster(n: u32, t: u32, seed: u64) -> (Vec<Arc<ThresholdKeys>>, SecretKeySet) {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    let set = SecretKeySet::random(t as usize, &mut rng);
    let public = Arc::new(PublicShares::new(set.public_keys(), n));
    let keys = (0..n)
        .map(|i| {
            Arc::new(ThresholdKeys::with_shared(NodeIndex(i), Arc::clone(&public), set.secret_key_share(i as usize)))
        })
        .collect();
    (keys, set)
}

#[test]
fn an_answer_verifies_alone_and_a_changed_one_does_not() {
    let (_, set) = cluster(4, 1, 1);
    let public = set.public_keys().public_key();
    let leaves = leaves(11);
    let tree = tree_of(&leaves);
    let root = tree.epoch_root(42, 1_700_000_000_000);
    let signature = set.secret_key().sign(root.message(&CLUSTER)).to_bytes();
    let certificate = Certificate { root, signature };
    for (i, leaf) in leaves.iter().enumerate() {
        let inclusion = tree.inclusion(i as u64).expect("a leaf");
        assert_eq!(verify(&CLUSTER, &public, &leaf.to_bytes(), &inclusion, &certificate), Ok(()));
    }
    let inclusion = tree.inclusion(4).expect("a leaf");
    let leaf = leaves[4].to_bytes();
    assert_eq!(verify(&CLUSTER, &public, &leaves[5].to_bytes(), &inclusion, &certificate), Err(VerifyError::Root));
    let other_epoch = Certificate { root: EpochRoot { epoch: 43, ..root }, signature };
    assert_eq!(verify(&CLUSTER, &public, &leaf, &inclusion, &other_epoch), Err(VerifyError::Signature));
    assert_eq!(verify(&[8; 32], &public, &leaf, &inclusion, &certificate), Err(VerifyError::Signature));
    let short = Inclusion { index: 4, path: inclusion.path[1..].to_vec() };
    assert!(matches!(verify(&CLUSTER, &public, &leaf, &short, &certificate), Err(VerifyError::Path { .. })));
    let malformed = Certificate { signature: [0xff; 96], ..certificate };
    assert_eq!(verify(&CLUSTER, &public, &leaf, &inclusion, &malformed), Err(VerifyError::Malformed));
}

/// The ciphersuite of docs/certificate.md.
const DST: &[u8] = b"BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_NUL_";

/// SHA-256 over `len u32 LE ‖ bytes` for the tag and each part: `tagged` as the doc states it,
/// written again here rather than called.
fn doc_tagged_sha256(tag: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    use sha2::{Digest as _, Sha256};
    let mut hasher = Sha256::new();
    for part in std::iter::once(&tag).chain(parts) {
        hasher.update((part.len() as u32).to_le_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// A certificate made by the signer verifies with blst's own BLS API (not blsttc, which signed),
/// from the bytes docs/certificate.md describes, rebuilt here by hand: an ordering answer's leaf,
/// its path, the signed message.
#[test]
fn a_certificate_verifies_with_an_independent_bls_implementation() {
    let (keys, set) = cluster(4, 1, 9);
    let quorum = Quorum::new(4, 1).expect("4 tolerate 1");
    let leaves = leaves(6);
    let tree = tree_of(&leaves);
    let root = tree.epoch_root(77, 1_700_000_123_456);
    let certificate = run_signers(&keys, quorum, root);
    // The ordering answer at leaf 3: client 3, id 30, digest [3; 32], index 3.
    let mut leaf = vec![1u8];
    leaf.extend_from_slice(&3u64.to_le_bytes());
    leaf.extend_from_slice(&30u64.to_le_bytes());
    leaf.extend_from_slice(&[3; 32]);
    leaf.extend_from_slice(&3u32.to_le_bytes());
    assert_eq!(leaf, leaves[3].to_bytes(), "the doc's bytes of an ordering leaf");
    let inclusion = tree.inclusion(3).expect("a leaf");
    let mut hash = doc_tagged_sha256(b"fides/v1/cert-leaf", &[&leaf]);
    let (mut at, mut len, mut siblings) = (inclusion.index, certificate.root.count, inclusion.path.iter());
    while len > 1 {
        if at ^ 1 < len {
            let sibling = siblings.next().expect("the path has a sibling here");
            let (l, r) = if at % 2 == 0 { (&hash, sibling) } else { (sibling, &hash) };
            hash = doc_tagged_sha256(b"fides/v1/cert-node", &[l, r]);
        }
        at /= 2;
        len = len.div_ceil(2);
    }
    let mut message = Vec::new();
    for part in [
        &b"fides/v1/cert-root"[..],
        &CLUSTER,
        &certificate.root.epoch.to_le_bytes(),
        &certificate.root.time_ms.to_le_bytes(),
        &certificate.root.count.to_le_bytes(),
        &hash,
    ] {
        message.extend_from_slice(&(part.len() as u32).to_le_bytes());
        message.extend_from_slice(part);
    }
    let pk = blst::min_pk::PublicKey::from_bytes(&set.public_keys().public_key().to_bytes()).expect("a G1 point");
    let sig = blst::min_pk::Signature::from_bytes(&certificate.signature).expect("a G2 point");
    assert_eq!(sig.verify(true, &message, DST, &[], &pk, true), blst::BLST_ERROR::BLST_SUCCESS);
    let last = message.len() - 1;
    message[last] ^= 1;
    assert_ne!(sig.verify(true, &message, DST, &[], &pk, true), blst::BLST_ERROR::BLST_SUCCESS);
}

/// The state leaf has the bytes docs/certificate.md gives, and verifies only as the last leaf of
/// its own epoch's certificate.
#[test]
fn the_state_leaf_verifies_only_as_the_last_leaf_of_its_epoch() {
    let digest = [9u8; 32];
    let size = StateSize { entries: 5, bytes: 300 };
    let leaf = Leaf::State { epoch: 77, digest, size };
    let mut bytes = vec![3u8];
    bytes.extend_from_slice(&77u64.to_le_bytes());
    bytes.extend_from_slice(&digest);
    bytes.extend_from_slice(&5u64.to_le_bytes());
    bytes.extend_from_slice(&300u64.to_le_bytes());
    assert_eq!(leaf.to_bytes(), bytes, "the doc's bytes of a state leaf");
    assert_eq!(Leaf::from_bytes(&bytes), Ok(leaf.clone()));
    let (keys, set) = cluster(4, 1, 11);
    let public = set.public_keys().public_key();
    let quorum = Quorum::new(4, 1).expect("4 tolerate 1");
    let mut all = leaves(5);
    all.push(leaf);
    let tree = tree_of(&all);
    let certificate = run_signers(&keys, quorum, tree.epoch_root(77, 1_000));
    let last = tree.inclusion(5).expect("the last leaf");
    assert_eq!(verify_state(&CLUSTER, &public, 77, &digest, size, &last, &certificate), Ok(()));
    assert_eq!(verify_state(&CLUSTER, &public, 77, &[8; 32], size, &last, &certificate), Err(VerifyError::Root));
    assert!(verify_state(&CLUSTER, &public, 78, &digest, size, &last, &certificate).is_err(), "another epoch");
    // The size is certified with the digest: a smaller or larger one does not verify.
    for other in [StateSize { entries: 5, bytes: 299 }, StateSize { entries: 6, bytes: 300 }] {
        assert_eq!(verify_state(&CLUSTER, &public, 77, &digest, other, &last, &certificate), Err(VerifyError::Root));
    }
    // The same leaf bytes placed elsewhere in a tree are not the state leaf.
    let mut early = all.clone();
    early.swap(0, 5);
    let tree = tree_of(&early);
    let certificate = run_signers(&keys, quorum, tree.epoch_root(77, 1_000));
    let first = tree.inclusion(0).expect("the first leaf");
    assert_eq!(
        verify_state(&CLUSTER, &public, 77, &digest, size, &first, &certificate),
        Err(VerifyError::NotTheStateLeaf { epoch: 77 })
    );
}

type Net = VecDeque<(NodeIndex, NodeIndex, Message)>;

fn signers(keys: &[Arc<ThresholdKeys>], quorum: Quorum, config: SignerConfig) -> Vec<EpochSigner> {
    keys.iter()
        .enumerate()
        .map(|(i, k)| EpochSigner::new(Arc::clone(k), CLUSTER, quorum, NodeIndex(i as u32), config, 0))
        .collect()
}

/// Queue a step's messages (in order, to every recipient) and return its outputs and faults.
fn route(net: &mut Net, quorum: Quorum, from: NodeIndex, step: Step<Message, Output>) -> (Vec<Output>, Vec<Fault>) {
    for out in step.messages {
        match out.target {
            Target::All => quorum.nodes().for_each(|to| net.push_back((from, to, out.message.clone()))),
            Target::Node(to) => net.push_back((from, to, out.message)),
        }
    }
    (step.outputs, step.faults)
}

/// Deliver everything in flight, first in first out; the outputs and faults of each signer.
fn drain(net: &mut Net, signers: &mut [EpochSigner], quorum: Quorum) -> Vec<(Vec<Output>, Vec<Fault>)> {
    let mut rng = rand::rngs::mock::StepRng::new(0, 1);
    let mut seen = vec![(Vec::new(), Vec::new()); signers.len()];
    while let Some((from, to, message)) = net.pop_front() {
        let Some(signer) = signers.get_mut(to.as_usize()) else { continue };
        let step = signer.handle_message(from, message, &mut rng);
        let (outputs, faults) = route(net, quorum, to, step);
        seen[to.as_usize()].0.extend(outputs);
        seen[to.as_usize()].1.extend(faults);
    }
    seen
}

fn sign(signer: &mut EpochSigner, root: EpochRoot) -> Step<Message, Output> {
    let mut rng = rand::rngs::mock::StepRng::new(0, 1);
    signer.handle_input(Input::Sign(root), &mut rng).expect("an honest root")
}

/// Signers `range` sign `root`; their messages are queued.
fn sign_some(
    net: &mut Net,
    signers: &mut [EpochSigner],
    quorum: Quorum,
    range: std::ops::Range<usize>,
    root: EpochRoot,
) {
    for (i, signer) in signers.iter_mut().enumerate().skip(range.start).take(range.len()) {
        let _ = route(net, quorum, NodeIndex(i as u32), sign(signer, root));
    }
}

fn certified(outputs: &[Output]) -> Vec<Certificate> {
    outputs.iter().filter_map(|o| if let Output::Certified(c) = o { Some(*c) } else { None }).collect()
}

fn run_signers(keys: &[Arc<ThresholdKeys>], quorum: Quorum, root: EpochRoot) -> Certificate {
    let mut signers = signers(keys, quorum, SignerConfig::default());
    let mut net = Net::new();
    let mut outputs = vec![Vec::new(); signers.len()];
    for (i, signer) in signers.iter_mut().enumerate() {
        let (out, _) = route(&mut net, quorum, NodeIndex(i as u32), sign(signer, root));
        outputs[i].extend(out);
    }
    for (i, (out, faults)) in drain(&mut net, &mut signers, quorum).into_iter().enumerate() {
        assert!(faults.is_empty(), "honest signers record no faults: {faults:?}");
        outputs[i].extend(out);
    }
    let certificates: Vec<Certificate> = outputs.iter().flat_map(|o| certified(o)).collect();
    assert_eq!(certificates.len(), signers.len(), "one certificate each");
    assert!(certificates.windows(2).all(|w| w[0] == w[1]), "BLS signatures are unique");
    let public = keys[0].public().public_key();
    assert!(certificates[0].verifies(&CLUSTER, &public));
    certificates[0]
}

#[test]
fn a_wrong_share_is_named_and_the_good_ones_combine() {
    let (keys, _) = cluster(4, 1, 3);
    let quorum = Quorum::new(4, 1).expect("4 tolerate 1");
    let root = tree_of(&leaves(5)).epoch_root(1, 1000);
    let mut signers = signers(&keys, quorum, SignerConfig::default());
    let mut net = Net::new();
    // Replica 3's share on another root arrives first, so the optimistic combination fails.
    let wrong = keys[3].sign_share(EpochRoot { time_ms: 1001, ..root }.point(&CLUSTER)).to_bytes();
    net.push_back((NodeIndex(3), NodeIndex(0), Message::Share { root, share: wrong }));
    let (outputs, _) = route(&mut net, quorum, NodeIndex(0), sign(&mut signers[0], root));
    assert!(outputs.is_empty());
    sign_some(&mut net, &mut signers, quorum, 1..3, root);
    let seen = drain(&mut net, &mut signers[..3], quorum);
    assert_eq!(seen[0].1, vec![Fault { node: NodeIndex(3), kind: FaultKind::InvalidCheckpoint }]);
    assert_eq!(certified(&seen[0].0).len(), 1);
    assert!(signers[0].certificate(1).is_some_and(|c| c.verifies(&CLUSTER, &keys[0].public().public_key())));
}

#[test]
fn a_restarted_signer_finishes_with_the_certificate_a_peer_answers() {
    let (keys, _) = cluster(4, 1, 4);
    let quorum = Quorum::new(4, 1).expect("4 tolerate 1");
    let root = tree_of(&leaves(3)).epoch_root(9, 5);
    let mut signers = signers(&keys, quorum, SignerConfig::default());
    let mut net = Net::new();
    sign_some(&mut net, &mut signers, quorum, 0..3, root);
    // Replica 3 is down: what is sent to it is lost.
    net.retain(|(_, to, _)| to.0 != 3);
    let _ = drain(&mut net, &mut signers[..3], quorum);
    net.clear();
    // It restarts with nothing in memory and signs again.
    let mut restarted =
        EpochSigner::new(Arc::clone(&keys[3]), CLUSTER, quorum, NodeIndex(3), SignerConfig::default(), 9);
    let step = sign(&mut restarted, root);
    assert!(step.outputs.is_empty());
    let _ = route(&mut net, quorum, NodeIndex(3), step);
    signers[3] = restarted;
    let seen = drain(&mut net, &mut signers, quorum);
    assert_eq!(certified(&seen[3].0).len(), 1, "finished from one answer");
    assert!(seen.iter().all(|(_, faults)| faults.is_empty()));
}

#[test]
fn shares_far_ahead_are_not_kept_and_equivocation_is_named() {
    let (keys, _) = cluster(4, 1, 5);
    let quorum = Quorum::new(4, 1).expect("4 tolerate 1");
    let config = SignerConfig { epochs_ahead_max: 8, certificates_kept: 2 };
    let mut signer = EpochSigner::new(Arc::clone(&keys[0]), CLUSTER, quorum, NodeIndex(0), config, 0);
    let mut rng = rand::rngs::mock::StepRng::new(0, 1);
    for epoch in 0..40u64 {
        for (from, key) in keys.iter().enumerate().skip(1) {
            let root = EpochRoot { epoch, time_ms: 0, count: 1, root: [epoch as u8; 32] };
            let share = key.sign_share(root.point(&CLUSTER)).to_bytes();
            let step = signer.handle_message(NodeIndex(from as u32), Message::Share { root, share }, &mut rng);
            assert!(step.faults.is_empty());
        }
    }
    assert_eq!(signer.early_shares(), 8 * 3);
    // Another root from replica 1 for an epoch it already sent a share for.
    let other = EpochRoot { epoch: 2, time_ms: 1, count: 1, root: [2; 32] };
    let share = keys[1].sign_share(other.point(&CLUSTER)).to_bytes();
    let step = signer.handle_message(NodeIndex(1), Message::Share { root: other, share }, &mut rng);
    assert_eq!(step.faults, vec![Fault { node: NodeIndex(1), kind: FaultKind::Equivocation }]);
    // Garbage bytes for a share, no point of G2, from a replica not heard from yet.
    let mut fresh = EpochSigner::new(Arc::clone(&keys[0]), CLUSTER, quorum, NodeIndex(0), config, 0);
    let step = fresh.handle_message(NodeIndex(2), Message::Share { root: other, share: [0xab; 96] }, &mut rng);
    assert_eq!(step.faults, vec![Fault { node: NodeIndex(2), kind: FaultKind::Undecodable }]);
    assert_eq!(fresh.early_shares(), 0);
}

#[test]
fn old_certificates_are_asked_of_the_host_and_recent_ones_answered() {
    let (keys, _) = cluster(4, 1, 6);
    let quorum = Quorum::new(4, 1).expect("4 tolerate 1");
    let config = SignerConfig { epochs_ahead_max: 8, certificates_kept: 2 };
    let mut signers = signers(&keys, quorum, config);
    let mut net = Net::new();
    let roots: Vec<EpochRoot> = (0..4).map(|e| tree_of(&leaves(e + 1)).epoch_root(e, e * 100)).collect();
    for root in &roots {
        sign_some(&mut net, &mut signers, quorum, 0..4, *root);
        let _ = drain(&mut net, &mut signers, quorum);
    }
    assert!(signers[0].certificate(0).is_none() && signers[0].certificate(3).is_some());
    let mut rng = rand::rngs::mock::StepRng::new(0, 1);
    for (epoch, answered) in [(0, false), (3, true)] {
        let root = roots[epoch as usize];
        let share = keys[1].sign_share(root.point(&CLUSTER)).to_bytes();
        let step = signers[0].handle_message(NodeIndex(1), Message::Share { root, share }, &mut rng);
        if answered {
            assert!(
                matches!(step.messages.as_slice(), [m] if m.message == Message::Certificate(*signers[0].certificate(3).expect("kept")))
            );
        } else {
            assert_eq!(step.outputs, vec![Output::CertificateAsked { peer: NodeIndex(1), epoch: 0 }]);
        }
    }
}

#[test]
fn a_peer_that_missed_our_share_gets_it_when_its_own_comes_after() {
    let (keys, _) = cluster(4, 1, 7);
    let quorum = Quorum::new(4, 1).expect("4 tolerate 1");
    let root = tree_of(&leaves(2)).epoch_root(4, 40);
    let mut signers = signers(&keys, quorum, SignerConfig::default());
    let mut net = Net::new();
    // Replica 0 signs while the others are down: its share to them is lost.
    let _ = route(&mut net, quorum, NodeIndex(0), sign(&mut signers[0], root));
    net.clear();
    // Replica 1 comes back and signs; replicas 2 and 3 stay down.
    let _ = route(&mut net, quorum, NodeIndex(1), sign(&mut signers[1], root));
    net.retain(|(_, to, _)| to.0 < 2);
    let mut seen = vec![(Vec::new(), Vec::new()); 4];
    while let Some((from, to, message)) = net.pop_front() {
        let mut rng = rand::rngs::mock::StepRng::new(0, 1);
        let step = signers[to.as_usize()].handle_message(from, message, &mut rng);
        let (outputs, faults) = route(&mut net, quorum, to, step);
        net.retain(|(_, to, _)| to.0 < 2);
        seen[to.as_usize()].0.extend(outputs);
        seen[to.as_usize()].1.extend(faults);
    }
    assert_eq!(certified(&seen[0].0).len(), 1);
    assert_eq!(certified(&seen[1].0).len(), 1, "replica 0 sent its share again to the late replica 1");
}

/// Decoders of peer and client bytes refuse or accept any input without panicking, and what they
/// accept encodes back to the same bytes (one encoding per value).
#[test]
fn decoders_take_any_bytes_without_panicking() {
    use rand::{Rng, RngCore};
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(11);
    let root = EpochRoot { epoch: 3, time_ms: 4, count: 5, root: [6; 32] };
    let samples = [
        Message::Share { root, share: [1; 96] }.to_bytes(),
        Message::Certificate(Certificate { root, signature: [2; 96] }).to_bytes(),
        Leaf::Service { service: ServiceId(*b"TST3"), record: vec![4; 40] }.to_bytes(),
        Inclusion { index: 7, path: vec![[8; 32]; 4] }.to_bytes(),
    ];
    for _ in 0..20_000 {
        let mut bytes = if rng.gen_bool(0.5) {
            samples[rng.gen_range(0..samples.len())].clone()
        } else {
            let mut bytes = vec![0u8; rng.gen_range(0..300)];
            rng.fill_bytes(&mut bytes);
            bytes
        };
        if !bytes.is_empty() {
            for _ in 0..rng.gen_range(0..4) {
                let at = rng.gen_range(0..bytes.len());
                bytes[at] ^= 1 << rng.gen_range(0..8);
            }
            bytes.truncate(rng.gen_range(0..=bytes.len()));
        }
        if let Ok(message) = Message::from_bytes(&bytes) {
            assert_eq!(message.to_bytes(), bytes);
        }
        if let Ok(leaf) = Leaf::from_bytes(&bytes) {
            assert_eq!(leaf.to_bytes(), bytes);
        }
        if let Ok(inclusion) = Inclusion::from_bytes(&bytes) {
            assert_eq!(inclusion.to_bytes(), bytes);
        }
        if let Ok(certificate) = Certificate::from_bytes(&bytes) {
            assert_eq!(certificate.to_bytes(), bytes);
        }
    }
}

/// A share sent in reply to ours counts, but gets no answer — not our share, not a certificate,
/// not a question to the host — so that two signers never bounce shares; a broadcast share still
/// gets the certificate.
#[test]
fn a_share_reply_counts_and_is_never_answered() {
    let (keys, _) = cluster(4, 1, 8);
    let quorum = Quorum::new(4, 1).expect("4 tolerate 1");
    let mut signers = signers(&keys, quorum, SignerConfig::default());
    let mut rng = rand::rngs::mock::StepRng::new(0, 1);
    let root = tree_of(&leaves(3)).epoch_root(0, 50);
    let _ = sign(&mut signers[0], root);
    let share = keys[1].sign_share(root.point(&CLUSTER)).to_bytes();
    let step = signers[0].handle_message(NodeIndex(1), Message::ShareReply { root, share }, &mut rng);
    assert!(step.messages.is_empty(), "a reply was answered: {:?}", step.messages);
    assert!(matches!(step.outputs.as_slice(), [Output::Certified(c)] if c.root == root), "{:?}", step.outputs);
    for _ in 0..3 {
        let step = signers[0].handle_message(NodeIndex(1), Message::ShareReply { root, share }, &mut rng);
        assert!(step.messages.is_empty() && step.outputs.is_empty() && step.faults.is_empty());
    }
    let share = keys[2].sign_share(root.point(&CLUSTER)).to_bytes();
    let step = signers[0].handle_message(NodeIndex(2), Message::Share { root, share }, &mut rng);
    assert!(matches!(step.messages.as_slice(), [m] if matches!(m.message, Message::Certificate(_))));
    // A reply for an epoch passed over asks nothing of the host.
    let later = tree_of(&leaves(2)).epoch_root(5, 60);
    let _ = sign(&mut signers[0], later);
    let step = signers[0].handle_message(
        NodeIndex(3),
        Message::ShareReply { root: tree_of(&leaves(1)).epoch_root(3, 55), share },
        &mut rng,
    );
    assert!(step.outputs.is_empty() && step.messages.is_empty());
    // Four signers signing at once, every message delivered: at most 2n(n − 1) shares.
    let mut signers = super::tests::signers(&keys, quorum, SignerConfig::default());
    let mut net = Net::new();
    sign_some(&mut net, &mut signers, quorum, 0..4, root);
    let mut shares = net.iter().filter(|(_, _, m)| !matches!(m, Message::Certificate(_))).count();
    while let Some((from, to, message)) = net.pop_front() {
        let step = signers[to.as_usize()].handle_message(from, message, &mut rng);
        shares += step.messages.iter().filter(|m| !matches!(m.message, Message::Certificate(_))).count()
            * if step.messages.iter().any(|m| m.target == fides_types::Target::All) { 3 } else { 1 };
        let _ = route(&mut net, quorum, to, step);
    }
    assert!(shares <= 2 * 4 * 3, "{shares} shares sent for one epoch");
    assert!(signers.iter().all(|s| s.certificate(0).is_some()));
}
