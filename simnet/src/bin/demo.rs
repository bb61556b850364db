//! The foundation's demonstration: binary agreement among the replicas of a cluster made by
//! `dealer init`, using the dealer's coin keys, once with each kind of Byzantine replica.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use fides_crypto::ThresholdKeys;
use fides_dealer::{read_cluster, read_replica, replica_file_name, CLUSTER_FILE_NAME};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use simnet::aba::{run_scenario, AbaCase, AbaScenario, SchedulerKind};
use simnet::abc::{run_with_keys, AbcCase, ClusterKeys, LAG_UNTIL};
use simnet::Behaviour;

#[derive(Parser)]
#[command(about = "Run binary agreement in the simulator with a dealer-made cluster's keys")]
struct Cli {
    /// Directory written by `dealer init`.
    #[arg(long)]
    cluster: PathBuf,
    /// Seed of the first run (each run uses the next).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() -> ExitCode {
    match fides_cli::parse::<Cli>("demo") {
        Ok(cli) => fides_cli::finish("demo", run(cli)),
        Err(code) => code,
    }
}

fn run(cli: Cli) -> Result<()> {
    let cluster = read_cluster(&cli.cluster.join(CLUSTER_FILE_NAME))?;
    let quorum = cluster.quorum();
    let mut keys = Vec::new();
    for index in quorum.nodes() {
        let replica = read_replica(&cli.cluster.join(replica_file_name(index)))?;
        keys.push(Arc::new(replica.coin_keys(&cluster).with_context(|| format!("replica {index}"))?));
    }
    println!("cluster {} : n = {}, t = {}, coin keys from the dealer's files", cluster.id(), quorum.n(), quorum.t());
    let schedulers = [SchedulerKind::Random, SchedulerKind::ContentAware];
    let kinds: Vec<Behaviour> = std::iter::once(Behaviour::Honest).chain(Behaviour::byzantine_kinds()).collect();
    for (run, (kind, scheduler)) in kinds.iter().flat_map(|k| schedulers.iter().map(move |s| (k, *s))).enumerate() {
        let seed = cli.seed + run as u64;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let proposals: Vec<bool> = quorum.nodes().map(|_| rng.gen_bool(0.5)).collect();
        let scenario = AbaScenario::with_keys(quorum, keys.clone(), proposals.clone(), false);
        let case = AbaCase { scheduler, ..AbaCase::new(quorum.n(), kind.clone(), seed) };
        let summary = run_scenario(&case, &scenario, None, &mut rng).map_err(anyhow::Error::msg)?;
        let shown: String = proposals
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let who = if summary.byzantine.iter().any(|b| b.as_usize() == i) { "B" } else { "" };
                format!("{who}{}", u8::from(*p))
            })
            .collect::<Vec<_>>()
            .join(" ");
        println!(
            "{:<12} {:<13} proposals [{shown}] -> all honest decided {} in round <= {}, {} faults recorded, {} messages, {:.1} ms virtual",
            kind.name(),
            format!("{scheduler:?}"),
            u8::from(summary.value),
            summary.rounds_worst,
            summary.faults,
            summary.deliveries,
            summary.decided_at_worst as f64 / 1_000.0,
        );
    }
    println!("every run checked: agreement, validity, termination (B = Byzantine replica)");

    let mut encryption = Vec::new();
    let mut signing = Vec::new();
    for index in quorum.nodes() {
        let replica = read_replica(&cli.cluster.join(replica_file_name(index)))?;
        let share = replica.encryption_share().clone();
        encryption.push(Arc::new(ThresholdKeys::new(index, quorum.n(), cluster.encryption().clone(), share)));
        signing.push(Arc::new(replica.signing_keys(&cluster).with_context(|| format!("replica {index}"))?));
    }
    let keys = ClusterKeys { coin: keys, encryption, signing };
    println!("atomic broadcast with the dealer's coin, encryption and signing keys, 40 requests, t equivocators:");
    let case = AbcCase {
        n: quorum.n(),
        byzantine: Behaviour::Equivocator,
        requests: 40,
        lagging: false,
        content_aware: false,
        seed: cli.seed,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(cli.seed);
    let summary = run_with_keys(&case, keys.clone(), &mut rng).map_err(anyhow::Error::msg)?;
    println!(
        "  {} requests in {} epochs, identical at every honest replica; agreed times {:?}; checkpoints after epochs {:?}; Byzantine: {:?}",
        summary.requests, summary.epochs, summary.times, summary.checkpoints, summary.byzantine
    );
    println!("  checked: total order, at-most-once, every request delivered, agreed time within the honest clocks, checkpoints");
    println!(
        "atomic broadcast, one replica down for {} s of virtual time (messages lost), then caught up:",
        LAG_UNTIL / 1_000_000
    );
    let case = AbcCase {
        n: quorum.n(),
        byzantine: Behaviour::Honest,
        requests: 60,
        lagging: true,
        content_aware: false,
        seed: cli.seed,
    };
    let summary = run_with_keys(&case, keys, &mut rng).map_err(anyhow::Error::msg)?;
    if let Some((index, epoch)) = summary.installed {
        println!(
            "  replica {index} installed the signed checkpoint after epoch {epoch} (t + 1 replicas vouched for the batches after it); {} epochs in all",
            summary.epochs
        );
    }
    Ok(())
}
