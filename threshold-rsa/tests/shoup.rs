//! Dealing, signing, combining and the encodings of Shoup's threshold RSA, checked against
//! independent RSA implementations (the `rsa` crate, and the system's `openssl` if present).

use std::process::Command;
use std::sync::OnceLock;

use fides_threshold_rsa::{
    combine, combine_values, deal, sign_share, sign_share_value, verify_share, verify_signature, wire, CombineError,
    Dealt, DecodeError, PublicKey, SecretShare, ShareFault, ShareFaultKind, ShareValue, SignatureShare,
};
use rand::SeedableRng;
use rsa::pkcs8::EncodePublicKey;
use rsa::traits::PublicKeyParts;

const MESSAGE: &[u8] = b"tbs bytes of a certificate";

/// A 512-bit key for n = 4, t = 1, dealt once from a fixed seed (test-only size).
fn dealt() -> &'static Dealt {
    static DEALT: OnceLock<Dealt> = OnceLock::new();
    DEALT.get_or_init(|| {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(13);
        deal(512, 4, 1, &mut rng, &mut |_| {}).expect("512 bits, n = 4, t = 1 is a valid key")
    })
}

fn shares(dealt: &Dealt, message: &[u8]) -> Vec<SignatureShare> {
    dealt.shares.iter().map(|share| sign_share(&dealt.public, share, message).expect("own share")).collect()
}

fn rsa_public_key(public: &PublicKey) -> rsa::RsaPublicKey {
    let n = rsa::BigUint::from_bytes_be(&public.modulus_bytes());
    rsa::RsaPublicKey::new(n, rsa::BigUint::from(public.exponent())).expect("a valid RSA public key")
}

fn rsa_crate_verifies(public: &PublicKey, message: &[u8], signature: &[u8]) -> bool {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(message);
    rsa_public_key(public).verify(rsa::Pkcs1v15Sign::new::<sha2::Sha256>(), &digest, signature).is_ok()
}

fn openssl_present() -> bool {
    let present = Command::new("openssl").arg("version").output().is_ok_and(|out| out.status.success());
    if !present {
        println!("note: no openssl on this machine; the openssl check is skipped");
    }
    present
}

/// `openssl dgst -sha256 -verify`, if openssl is installed.
fn openssl_verifies(public: &PublicKey, message: &[u8], signature: &[u8]) -> Option<bool> {
    if !openssl_present() {
        return None;
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let pem = rsa_public_key(public).to_public_key_pem(rsa::pkcs8::LineEnding::LF).expect("encodes");
    let (key, msg, sig) = (dir.path().join("key.pem"), dir.path().join("msg"), dir.path().join("sig"));
    std::fs::write(&key, pem).expect("write key");
    std::fs::write(&msg, message).expect("write message");
    std::fs::write(&sig, signature).expect("write signature");
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(&key)
        .arg("-signature")
        .arg(&sig)
        .arg(&msg)
        .output()
        .expect("openssl runs");
    Some(out.status.success())
}

#[test]
fn every_two_of_four_shares_combine_to_one_signature_that_rsa_and_openssl_verify() {
    let dealt = dealt();
    let all = shares(dealt, MESSAGE);
    let mut signatures = Vec::new();
    for a in 0..4 {
        for b in a + 1..4 {
            let combined = combine(&dealt.public, MESSAGE, &[all[a].clone(), all[b].clone()]).expect("2 good shares");
            assert_eq!(combined.faults, Vec::<ShareFault>::new());
            signatures.push(combined.signature);
        }
    }
    assert!(signatures.windows(2).all(|pair| pair[0] == pair[1]), "subsets gave different signatures");
    let signature = &signatures[0];
    assert_eq!(signature.len(), dealt.public.modulus_len());
    assert!(verify_signature(&dealt.public, MESSAGE, signature));
    assert!(rsa_crate_verifies(&dealt.public, MESSAGE, signature), "the rsa crate refused the signature");
    assert!(!rsa_crate_verifies(&dealt.public, b"another message", signature));
    if let Some(verified) = openssl_verifies(&dealt.public, MESSAGE, signature) {
        assert!(verified, "openssl refused the signature");
        assert_eq!(openssl_verifies(&dealt.public, b"another message", signature), Some(false));
    }
}

#[test]
fn every_honest_share_has_a_valid_proof_and_signing_is_deterministic() {
    let dealt = dealt();
    let all = shares(dealt, MESSAGE);
    for share in &all {
        assert!(verify_share(&dealt.public, MESSAGE, share), "share {} refused", share.index());
        assert!(
            !verify_share(&dealt.public, b"another message", share),
            "share {} verifies another message",
            share.index()
        );
    }
    assert_eq!(all, shares(dealt, MESSAGE));
    for (share, secret) in all.iter().zip(&dealt.shares) {
        assert!(dealt.public.matches(secret));
        assert_eq!(share.index(), secret.index());
    }
}

/// A share of another message by the same party: a valid-looking integer that is not the share.
fn wrong_share(dealt: &Dealt, index: usize) -> SignatureShare {
    let other = sign_share(&dealt.public, &dealt.shares[index], b"another message").expect("own share");
    let mut bytes = other.to_bytes(&dealt.public);
    let good = sign_share(&dealt.public, &dealt.shares[index], MESSAGE).expect("own share").to_bytes(&dealt.public);
    // Keep the wrong value, with the proof of the right one.
    let value_end = 8 + dealt.public.modulus_len();
    bytes[value_end..].copy_from_slice(&good[value_end..]);
    SignatureShare::from_bytes(&dealt.public, &bytes).expect("well formed")
}

#[test]
fn a_wrong_share_is_named_by_index_and_the_rest_still_combine() {
    let dealt = dealt();
    let mut all = shares(dealt, MESSAGE);
    let reference = combine(&dealt.public, MESSAGE, &all[2..]).expect("2 good shares").signature;
    all[1] = wrong_share(dealt, 1);
    // Share 1 is among the first t + 1: the optimistic combination fails and the proofs name it.
    let combined = combine(&dealt.public, MESSAGE, &all).expect("3 good shares");
    assert_eq!(combined.faults, vec![ShareFault { index: 1, kind: ShareFaultKind::InvalidProof }]);
    assert_eq!(combined.signature, reference);
    assert!(rsa_crate_verifies(&dealt.public, MESSAGE, &combined.signature));
}

#[test]
fn a_share_with_a_bad_proof_is_named_when_the_optimistic_combination_fails() {
    let dealt = dealt();
    let mut all = shares(dealt, MESSAGE);
    all[0] = wrong_share(dealt, 0);
    // Share 1 has the right value but a response z + 1: its proof is bad.
    let mut bytes = all[1].to_bytes(&dealt.public);
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    all[1] = SignatureShare::from_bytes(&dealt.public, &bytes).expect("well formed");
    assert!(!verify_share(&dealt.public, MESSAGE, &all[1]));
    let combined = combine(&dealt.public, MESSAGE, &all).expect("2 good shares");
    let named: Vec<u32> = combined.faults.iter().map(|fault| fault.index).collect();
    assert_eq!(named, vec![0, 1]);
    assert!(combined.faults.iter().all(|fault| fault.kind == ShareFaultKind::InvalidProof));
    assert!(verify_signature(&dealt.public, MESSAGE, &combined.signature));
}

#[test]
fn fewer_than_t_plus_one_good_shares_do_not_combine_and_name_the_bad_ones() {
    let dealt = dealt();
    let all = shares(dealt, MESSAGE);
    let refused = combine(&dealt.public, MESSAGE, &all[..1]).expect_err("one share is not enough");
    assert_eq!(refused, CombineError::NotEnoughShares { usable: 1, needed: 2, faults: vec![] });
    let refused = combine(&dealt.public, MESSAGE, &[wrong_share(dealt, 3), all[2].clone()]).expect_err("one good");
    let faults = vec![ShareFault { index: 3, kind: ShareFaultKind::InvalidProof }];
    assert_eq!(refused, CombineError::NotEnoughShares { usable: 1, needed: 2, faults });
    // The same share twice counts once.
    let refused = combine(&dealt.public, MESSAGE, &[all[2].clone(), all[2].clone()]).expect_err("one party");
    assert_eq!(refused, CombineError::NotEnoughShares { usable: 1, needed: 2, faults: vec![] });
    // A different share under the same index is named.
    let refused = combine(&dealt.public, MESSAGE, &[all[2].clone(), wrong_share(dealt, 2)]).expect_err("one party");
    assert_eq!(refused.faults(), [ShareFault { index: 2, kind: ShareFaultKind::Duplicate }]);
}

#[test]
fn share_values_without_proofs_combine_and_a_bad_one_asks_for_the_proofs_that_name_it() {
    let dealt = dealt();
    let all = shares(dealt, MESSAGE);
    let values: Vec<ShareValue> =
        dealt.shares.iter().map(|share| sign_share_value(&dealt.public, share, MESSAGE).expect("own share")).collect();
    for (value, share) in values.iter().zip(&all) {
        assert_eq!(*value, share.share_value());
    }
    let reference = combine(&dealt.public, MESSAGE, &all).expect("good shares").signature;
    let combined = combine_values(&dealt.public, MESSAGE, &values[2..]).expect("2 good values");
    assert_eq!(combined.signature, reference);
    assert!(rsa_crate_verifies(&dealt.public, MESSAGE, &combined.signature));
    // A wrong value among the first t + 1: the values cannot say which; the proofs can.
    let mut values = values;
    values[1] = sign_share_value(&dealt.public, &dealt.shares[1], b"another message").expect("own share");
    let refused = combine_values(&dealt.public, MESSAGE, &values).expect_err("a bad value");
    assert_eq!(refused, CombineError::ValuesDisagree { needed: 2, faults: vec![] });
    let mut proven = all.clone();
    proven[1] = wrong_share(dealt, 1);
    let combined = combine(&dealt.public, MESSAGE, &proven).expect("3 good shares");
    assert_eq!(combined.faults, vec![ShareFault { index: 1, kind: ShareFaultKind::InvalidProof }]);
    assert_eq!(combined.signature, reference);
    let refused = combine_values(&dealt.public, MESSAGE, &values[..1]).expect_err("one value");
    assert_eq!(refused, CombineError::NotEnoughShares { usable: 1, needed: 2, faults: vec![] });
}

#[test]
fn encodings_round_trip() {
    let dealt = dealt();
    let public = PublicKey::from_bytes(&dealt.public.to_bytes()).expect("decodes");
    assert_eq!(public, dealt.public);
    assert_eq!(dealt.public.to_bytes().len(), 16 + 6 * 64);
    for secret in &dealt.shares {
        let bytes = secret.to_bytes();
        assert_eq!(bytes.len(), 8 + 64);
        assert_eq!(&SecretShare::from_bytes(&bytes).expect("decodes"), secret);
    }
    for share in shares(dealt, MESSAGE) {
        let bytes = share.to_bytes(&dealt.public);
        assert_eq!(bytes.len(), 8 + 64 + 16 + 64 + 33);
        assert_eq!(SignatureShare::from_bytes(&dealt.public, &bytes).expect("decodes"), share);
        let value = share.share_value();
        let bytes = value.to_bytes(&dealt.public);
        assert_eq!(bytes.len(), 8 + 64);
        assert_eq!(ShareValue::from_bytes(&dealt.public, &bytes).expect("decodes"), value);
    }
}

#[test]
fn malformed_encodings_are_refused_without_panics() {
    let dealt = dealt();
    let public = dealt.public.to_bytes();
    let secret = dealt.shares[0].to_bytes();
    let share = shares(dealt, MESSAGE)[0].to_bytes(&dealt.public);
    // Every truncation and one extra byte.
    for len in 0..public.len() {
        assert!(PublicKey::from_bytes(&public[..len]).is_err(), "a {len}-byte prefix decoded");
    }
    for len in 0..secret.len() {
        assert!(SecretShare::from_bytes(&secret[..len]).is_err());
    }
    for len in 0..share.len() {
        assert!(SignatureShare::from_bytes(&dealt.public, &share[..len]).is_err());
    }
    let value = shares(dealt, MESSAGE)[0].share_value().to_bytes(&dealt.public);
    for len in 0..value.len() {
        assert!(ShareValue::from_bytes(&dealt.public, &value[..len]).is_err());
    }
    assert!(matches!(ShareValue::from_bytes(&dealt.public, &share), Err(DecodeError::Kind { .. })));
    assert!(matches!(SignatureShare::from_bytes(&dealt.public, &value), Err(DecodeError::Kind { .. })));
    let mut far = value.clone();
    far[2..6].copy_from_slice(&4u32.to_be_bytes());
    assert!(matches!(ShareValue::from_bytes(&dealt.public, &far), Err(DecodeError::Invalid(_))));
    let longer = |bytes: &[u8]| [bytes, &[0]].concat();
    assert!(matches!(PublicKey::from_bytes(&longer(&public)), Err(DecodeError::Length { .. })));
    assert!(matches!(SecretShare::from_bytes(&longer(&secret)), Err(DecodeError::Length { .. })));
    assert!(matches!(SignatureShare::from_bytes(&dealt.public, &longer(&share)), Err(DecodeError::Length { .. })));
    // Another kind or version.
    assert!(matches!(PublicKey::from_bytes(&secret), Err(DecodeError::Kind { .. })));
    assert!(matches!(SecretShare::from_bytes(&share), Err(DecodeError::Kind { .. })));
    let mut bumped = share.clone();
    bumped[1] = wire::VERSION + 1;
    assert!(matches!(SignatureShare::from_bytes(&dealt.public, &bumped), Err(DecodeError::Kind { .. })));
    // Fields out of range.
    let patched = |bytes: &[u8], at: usize, with: &[u8]| {
        let mut out = bytes.to_vec();
        out[at..at + with.len()].copy_from_slice(with);
        out
    };
    let refused = [
        ("e = 3", patched(&public, 4, &3u32.to_be_bytes())),
        ("n = 0", patched(&public, 8, &0u32.to_be_bytes())),
        ("n = 2^32 - 1", patched(&public, 8, &u32::MAX.to_be_bytes())),
        ("t = n", patched(&public, 12, &4u32.to_be_bytes())),
        ("k = 65535", patched(&public, 2, &u16::MAX.to_be_bytes())),
        ("k = 8", patched(&public, 2, &8u16.to_be_bytes())),
        ("an even modulus", patched(&public, 16 + 63, &[0xfe])),
        ("a leading zero", patched(&public, 16, &[0])),
        ("v = 0", patched(&public, 16 + 64, &[0; 64])),
        ("v_3 = N", {
            let n = public[16..80].to_vec();
            patched(&public, 16 + 5 * 64, &n)
        }),
    ];
    for (what, bytes) in refused {
        assert!(PublicKey::from_bytes(&bytes).is_err(), "a public key with {what} decoded");
    }
    let index_4 = patched(&share, 2, &4u32.to_be_bytes());
    assert!(matches!(SignatureShare::from_bytes(&dealt.public, &index_4), Err(DecodeError::Invalid(_))));
    let zero = patched(&share, 8, &[0; 64]);
    assert!(matches!(SignatureShare::from_bytes(&dealt.public, &zero), Err(DecodeError::Invalid(_))));
    let other_k = patched(&share, 6, &128u16.to_be_bytes());
    assert!(matches!(SignatureShare::from_bytes(&dealt.public, &other_k), Err(DecodeError::Invalid(_))));
    let far_index = patched(&secret, 2, &u32::MAX.to_be_bytes());
    assert!(matches!(SecretShare::from_bytes(&far_index), Err(DecodeError::Invalid(_))));
}

#[test]
fn a_secret_share_matches_only_its_own_verification_key() {
    let dealt = dealt();
    let mut bytes = dealt.shares[1].to_bytes();
    bytes[2..6].copy_from_slice(&2u32.to_be_bytes());
    let moved = SecretShare::from_bytes(&bytes).expect("well formed");
    assert!(!dealt.public.matches(&moved));
    bytes[2..6].copy_from_slice(&9u32.to_be_bytes());
    assert!(!dealt.public.matches(&SecretShare::from_bytes(&bytes).expect("well formed")));
}

/// Deals a production-size key and prints how long it took (slow: safe primes of 1024 bits).
#[test]
#[ignore = "slow: searches two 1024-bit safe primes"]
fn slow_a_2048_bit_key_signs_and_verifies() {
    let mut rng = rand::rngs::OsRng;
    let start = std::time::Instant::now();
    let dealt = deal(2048, 4, 1, &mut rng, &mut |_| {}).expect("valid sizes");
    println!("dealt a 2048-bit key in {:.1} s", start.elapsed().as_secs_f64());
    let all = shares(&dealt, MESSAGE);
    let combined = combine(&dealt.public, MESSAGE, &all).expect("4 good shares");
    assert!(rsa_crate_verifies(&dealt.public, MESSAGE, &combined.signature));
    assert_eq!(rsa_public_key(&dealt.public).size(), 256);
}

/// Random corruptions of valid encodings (flipped bytes, cut or extended lengths, from a fixed
/// seed): decoding never panics, and a corrupted signature share that still decodes is either the
/// original or is refused by its proof, and never stops the others combining.
#[test]
fn corrupted_encodings_never_panic_and_corrupted_shares_are_named() {
    use rand::{Rng, RngCore};
    let dealt = dealt();
    let all = shares(dealt, MESSAGE);
    let encodings = [dealt.public.to_bytes(), dealt.shares[0].to_bytes(), all[0].to_bytes(&dealt.public)];
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(17);
    for round in 0..600 {
        let which = round % 3;
        let mut bytes = encodings[which].clone();
        match rng.gen_range(0..4) {
            0 => bytes.truncate(rng.gen_range(0..bytes.len())),
            1 => bytes.extend((0..rng.gen_range(1..64)).map(|_| rng.gen::<u8>())),
            _ => {
                for _ in 0..rng.gen_range(1..4) {
                    let at = rng.gen_range(0..bytes.len());
                    bytes[at] ^= 1 << rng.gen_range(0..8);
                }
            }
        }
        if round % 97 == 0 {
            rng.fill_bytes(&mut bytes);
        }
        match which {
            0 => drop(PublicKey::from_bytes(&bytes)),
            1 => drop(SecretShare::from_bytes(&bytes)),
            _ => {
                let Ok(share) = SignatureShare::from_bytes(&dealt.public, &bytes) else { continue };
                if share == all[0] {
                    continue;
                }
                if verify_share(&dealt.public, MESSAGE, &share) {
                    // Only a change of sign of x_i keeps the proof valid (it covers x_i^2).
                    assert_eq!(share.index(), 0);
                    continue;
                }
                let combined = combine(&dealt.public, MESSAGE, &[share.clone(), all[1].clone(), all[2].clone()])
                    .expect("two good shares remain");
                assert!(verify_signature(&dealt.public, MESSAGE, &combined.signature));
                assert!(
                    combined.faults.is_empty() || combined.faults.iter().all(|f| f.index == share.index()),
                    "{:?}",
                    combined.faults
                );
            }
        }
    }
}

#[test]
fn a_value_sharing_a_factor_with_the_modulus_is_named_when_it_is_combined() {
    use fides_threshold_rsa::{deal_with_primes, safe_prime};
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(21);
    let p = safe_prime(256, &mut rng, 1, &mut |_| {});
    let q = loop {
        let q = safe_prime(256, &mut rng, 2, &mut |_| {});
        if q != p {
            break q;
        }
    };
    let dealt = deal_with_primes(&p, &q, 4, 1, &mut rng).expect("two safe primes make a key");
    let public = &dealt.public;
    let values: Vec<ShareValue> =
        dealt.shares.iter().map(|share| sign_share_value(public, share, MESSAGE).expect("own share")).collect();
    // Party 1's value replaced by p: in [1, N), but without an inverse mod N.
    let mut bytes = values[1].to_bytes(public);
    let k = public.modulus_len();
    let factor = p.to_bytes_be();
    bytes[8..8 + k].fill(0);
    bytes[8 + k - factor.len()..8 + k].copy_from_slice(&factor);
    let bad = ShareValue::from_bytes(public, &bytes).expect("a residue decodes");
    let not_a_residue = ShareFault { index: 1, kind: ShareFaultKind::NotAResidue };
    let combined =
        combine_values(public, MESSAGE, &[bad.clone(), values[0].clone(), values[2].clone()]).expect("two good values");
    assert_eq!(combined.faults, vec![not_a_residue]);
    assert!(verify_signature(public, MESSAGE, &combined.signature));
    match combine_values(public, MESSAGE, &[values[3].clone(), bad]) {
        Err(CombineError::NotEnoughShares { usable: 1, needed: 2, faults }) => assert_eq!(faults, vec![not_a_residue]),
        other => panic!("combined without t + 1 invertible values: {other:?}"),
    }
}
