//! `dealer`: deal, inspect and verify the key material and configuration files of a Fides cluster.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fides_dealer::{
    check_writable, default_addresses, default_client_addresses, derive_client_addresses, generate_with_ca, inspect,
    parse_addresses, parse_client_addresses, verify_dir, write, CaMode, CaPolicy, CaSettings, ProtocolParameters,
    Quorum, RsaOptions,
};
use fides_threshold_rsa::SearchProgress;

/// The trusted dealer of a Fides cluster.
#[derive(Parser)]
#[command(name = "dealer", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of `Init` does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Deal a cluster: a private replica-0.toml, replica-1.toml, … per replica and a public cluster.toml.
    Init {
        /// Number of replicas (1 to 1024).
        #[arg(short = 'n')]
        n: u32,
        /// Number of Byzantine replicas tolerated; n must be at least 3t + 1.
        #[arg(short = 't')]
        t: u32,
        /// Output directory; created if missing, must be empty unless --force.
        #[arg(long)]
        out: PathBuf,
        /// Comma-separated HOST:PORT where the replicas reach each other, one per replica in index
        /// order [default: 127.0.0.1:7100, 127.0.0.1:7101, …].
        #[arg(long)]
        addresses: Option<String>,
        /// Comma-separated HOST:PORT where the replicas serve clients (gRPC), one per replica in
        /// index order, none equal to a replica-to-replica address [default: each address's host
        /// with port + 100; without --addresses, 127.0.0.1:7200, 127.0.0.1:7201, …].
        #[arg(long)]
        client_addresses: Option<String>,
        /// Replace the cluster files of a non-empty output directory.
        #[arg(long)]
        force: bool,
        /// Bits of the certification authority's threshold RSA modulus (a multiple of 16, 512 to
        /// 8192; below 2048 only for tests). Searching safe primes for 2048 bits takes seconds
        /// to a minute or two.
        #[arg(long, default_value_t = fides_dealer::RSA_BITS_DEFAULT)]
        rsa_bits: u64,
        #[command(flatten)]
        protocol: ProtocolArgs,
        #[command(flatten)]
        ca: CaArgs,
    },
    /// Print a summary of a cluster or replica file; never prints a secret.
    Inspect {
        /// The file.
        file: PathBuf,
    },
    /// Check that the replica files of a directory match its cluster file.
    Verify {
        /// The directory made by `dealer init`.
        dir: PathBuf,
    },
}

/// The protocol parameters, the same at every replica and covered by the cluster id; each
/// defaults to `ProtocolParameters::DEFAULT`.
#[derive(clap::Args)]
struct ProtocolArgs {
    /// Requests considered per epoch, over all proposers [default: 1000].
    #[arg(long)]
    batch_size: Option<u32>,
    /// Epochs between checkpoints [default: 64].
    #[arg(long)]
    checkpoint_interval: Option<u64>,
    /// Epochs a replica runs ahead of the next one to deliver [default: 3].
    #[arg(long)]
    epochs_in_flight: Option<u64>,
    /// Epochs ahead whose messages a replica keeps [default: 16].
    #[arg(long)]
    epochs_future_max: Option<u64>,
    /// Longest request payload, in bytes [default: 65536].
    #[arg(long)]
    payload_len_max: Option<u32>,
    /// Epochs for which executed request ids are remembered (at most once) [default: 10000].
    #[arg(long)]
    dedup_window_epochs: Option<u64>,
}

impl ProtocolArgs {
    fn parameters(&self) -> ProtocolParameters {
        let d = ProtocolParameters::DEFAULT;
        ProtocolParameters {
            batch_size: self.batch_size.unwrap_or(d.batch_size),
            checkpoint_interval: self.checkpoint_interval.unwrap_or(d.checkpoint_interval),
            epochs_in_flight: self.epochs_in_flight.unwrap_or(d.epochs_in_flight),
            epochs_future_max: self.epochs_future_max.unwrap_or(d.epochs_future_max),
            payload_len_max: self.payload_len_max.unwrap_or(d.payload_len_max),
            dedup_window_epochs: self.dedup_window_epochs.unwrap_or(d.dedup_window_epochs),
        }
    }
}

/// The certification authority's settings, the same at every replica and covered by the
/// cluster id.
#[derive(clap::Args)]
struct CaArgs {
    /// Binding mode: key-major (one certificate per key) or name-major (one per name).
    #[arg(long, default_value = "key-major")]
    ca_mode: String,
    /// Who may bind a name: open (anyone, a name not bound to another key) or token (a token for
    /// the name signed by the administrator, --ca-admin).
    #[arg(long, default_value = "open")]
    ca_policy: String,
    /// The administrator's Ed25519 public key (64 hex digits), for --ca-policy token.
    #[arg(long)]
    ca_admin: Option<String>,
    /// Days a certificate is valid (1 to 3660).
    #[arg(long, default_value_t = fides_dealer::CA_VALIDITY_DAYS_DEFAULT)]
    ca_validity_days: u32,
}

impl CaArgs {
    fn settings(&self) -> anyhow::Result<CaSettings> {
        let mode = CaMode::parse(&self.ca_mode).map_err(|reason| anyhow::anyhow!("--ca-mode: {reason}"))?;
        let policy = CaPolicy::parse(&self.ca_policy, self.ca_admin.as_deref(), "--ca-admin")
            .map_err(|reason| anyhow::anyhow!("--ca-policy: {reason}"))?;
        let settings = CaSettings { mode, policy, validity_days: self.ca_validity_days };
        settings.check().map_err(|reason| anyhow::anyhow!("--ca-validity-days: {reason}"))?;
        Ok(settings)
    }
}

fn main() -> ExitCode {
    match fides_cli::parse::<Cli>("dealer") {
        Ok(cli) => fides_cli::finish("dealer", run(cli)),
        Err(code) => code,
    }
}

/// Shows the safe-prime search on stderr, one line rewritten in place.
fn progress_on_stderr(rsa_bits: u64) -> impl FnMut(SearchProgress) {
    move |progress: SearchProgress| {
        eprint!(
            "\rthreshold RSA-{rsa_bits}: looking for safe prime {} of 2, {} candidates tested",
            progress.prime, progress.tested
        );
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init { n, t, out, addresses, client_addresses, force, rsa_bits, protocol, ca } => {
            let quorum = Quorum::new(n, t)?;
            let protocol = protocol.parameters();
            let ca = ca.settings()?;
            let addresses = addresses.map(|list| parse_addresses(&list, quorum)).transpose()?;
            let client_addresses = match (client_addresses, &addresses) {
                (Some(list), _) => parse_client_addresses(&list, quorum)?,
                (None, Some(addresses)) => derive_client_addresses(addresses)?,
                (None, None) => default_client_addresses(quorum),
            };
            let addresses = addresses.unwrap_or_else(|| default_addresses(quorum));
            check_writable(&out, force)?;
            let mut progress = progress_on_stderr(rsa_bits);
            let rsa = RsaOptions { modulus_bits: rsa_bits, not_before: SystemTime::now(), progress: &mut progress };
            let cluster = generate_with_ca(
                quorum,
                protocol,
                addresses,
                client_addresses,
                Some(rsa),
                Some(ca),
                &mut rand::rngs::OsRng,
            )?;
            eprintln!();
            write(&out, &cluster, force)?;
            println!("dealt cluster {}: n = {n}, t = {t}", cluster.public().id());
            println!("  protocol: {protocol}");
            println!("  certification authority: {ca}");
            println!("  {} (public)", out.join(fides_dealer::CLUSTER_FILE_NAME).display());
            println!(
                "  {} (public: the certification authority's root, RSA-{rsa_bits} threshold key)",
                out.join(fides_dealer::ROOT_CERTIFICATE_FILE_NAME).display()
            );
            println!("  {}/replica-0.toml … replica-{}.toml (SECRET, mode 0600)", out.display(), n - 1);
            println!("give replica-<i>.toml to replica i only, then delete them here");
        }
        Command::Inspect { file } => print!("{}", inspect(&file)?),
        Command::Verify { dir } => {
            let report = verify_dir(&dir).with_context(|| format!("verify {} failed", dir.display()))?;
            println!("{report}");
        }
    }
    Ok(())
}
