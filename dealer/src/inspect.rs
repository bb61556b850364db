//! A summary of a cluster or replica file that a person can read. It never shows a secret.

use std::fmt::Write;
use std::path::Path;

use crate::format::{read_any, Parsed};
use crate::{ClusterFile, ClusterFormat, DealerError, ReplicaFile};

/// Read `path`, a cluster or a replica file, and summarise it. The summary of a replica file
/// shows the public keys its secrets correspond to, never the secrets.
pub fn inspect(path: &Path) -> Result<String, DealerError> {
    Ok(match read_any(path)? {
        Parsed::Cluster(cluster) => summarise_cluster(path, &cluster),
        Parsed::Replica(replica) => summarise_replica(path, &replica),
    })
}

fn summarise_cluster(path: &Path, cluster: &ClusterFile) -> String {
    let quorum = cluster.quorum();
    let mut out = String::new();
    let _ = writeln!(out, "{}: public cluster file ({})", path.display(), cluster.format().name());
    let _ = writeln!(out, "  cluster id   {}", cluster.id());
    let _ = writeln!(
        out,
        "  replicas     n = {}, tolerating t = {} Byzantine; t + 1 = {} shares combine",
        quorum.n(),
        quorum.t(),
        quorum.one_honest()
    );
    let _ = match cluster.format() {
        ClusterFormat::V1 => writeln!(out, "  protocol (the values of every fides-cluster-v1 file):"),
        ClusterFormat::V2 => writeln!(out, "  protocol (the same at every replica, covered by the cluster id):"),
    };
    for (name, value) in cluster.protocol().named() {
        let _ = writeln!(out, "    {name:<21}{value}");
    }
    let _ = writeln!(out, "  public keys (BLS12-381 G1, compressed):");
    for (name, set) in [("signing", cluster.signing()), ("coin", cluster.coin()), ("encryption", cluster.encryption())]
    {
        let _ = writeln!(out, "    {name:<11}{}", hex::encode(set.public_key().to_bytes()));
    }
    match cluster.rsa() {
        Some(rsa) => {
            let _ = writeln!(
                out,
                "  threshold RSA {} bits, e = {}, t + 1 = {} shares sign; modulus {}…",
                8 * rsa.modulus_len(),
                rsa.exponent(),
                rsa.threshold() + 1,
                hex::encode(&rsa.modulus_bytes()[..8])
            );
        }
        None => {
            let _ = writeln!(out, "  threshold RSA none (dealt before the certification authority's key)");
        }
    }
    match (cluster.ca(), cluster.rsa()) {
        (Some(ca), _) => {
            let _ = writeln!(out, "  certification authority {ca}");
        }
        (None, Some(_)) => {
            let _ =
                writeln!(out, "  certification authority {} (no [ca] table: the defaults)", crate::CaSettings::DEFAULT);
        }
        (None, None) => {}
    }
    let _ = writeln!(out, "  replicas (index, address, client address, Ed25519 identity):");
    for replica in cluster.replicas() {
        let identity = hex::encode(replica.identity.to_bytes());
        let (address, client_address) = (replica.address.to_string(), replica.client_address.to_string());
        let _ = writeln!(out, "    {:<5}{address:<24}{client_address:<24}{identity}", replica.index.0);
    }
    out
}

fn summarise_replica(path: &Path, replica: &ReplicaFile) -> String {
    let quorum = replica.quorum();
    let mut out = String::new();
    let _ = writeln!(out, "{}: PRIVATE replica file (fides-replica-v1); secrets not shown", path.display());
    let _ = writeln!(out, "  cluster id   {}", replica.cluster_id());
    let _ = writeln!(out, "  replica      index {} of n = {}, t = {}", replica.index().0, quorum.n(), quorum.t());
    let _ = writeln!(
        out,
        "  identity     {} (Ed25519 public key)",
        hex::encode(replica.identity().verifying_key().to_bytes())
    );
    let _ = writeln!(out, "  its shares correspond to the public key shares (BLS12-381 G1, compressed):");
    for (name, share) in [
        ("signing", replica.signing_share()),
        ("coin", replica.coin_share()),
        ("encryption", replica.encryption_share()),
    ] {
        let _ = writeln!(out, "    {name:<11}{}", hex::encode(share.public_key_share().to_bytes()));
    }
    let _ = match replica.rsa_share() {
        Some(_) => writeln!(out, "  and it holds a threshold RSA share (checked by `dealer verify`)"),
        None => writeln!(out, "  and it holds no threshold RSA share"),
    };
    out
}
