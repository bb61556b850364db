//! `replica run`: assemble one replica process from its files and run it until SIGTERM / Ctrl-C.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use fides_atomic_broadcast::epoch::{AtomicBroadcast, Config as AbcConfig, Keys};
use fides_atomic_broadcast::instances::{Config as InstancesConfig, Instances};
use fides_crypto::ThresholdKeys;
use fides_dealer::{read_cluster, read_replica, ClusterFile, ReplicaFile};
use serde::Deserialize;
use tokio::sync::watch;

use crate::grpc::OrderingService;
use crate::metrics::{self, Metrics};
use crate::node::{Limits, Node, NodeSetup};
use crate::transport::p2p::{P2pTransport, PeerInfo};
use crate::transport::TransportConfig;

/// Everything `replica run` needs; from flags or a TOML file (flags win).
#[derive(Clone, Debug, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// The replica's private file from the dealer.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// The cluster's public file.
    #[arg(long)]
    pub cluster: Option<PathBuf>,
    /// The data directory (created if missing).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Where to listen for peers [default: the cluster file's address of this replica].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Where to serve clients [default: the cluster file's client address of this replica].
    #[arg(long)]
    pub client_listen: Option<SocketAddr>,
    /// Where to serve Prometheus metrics [default: none].
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// Requests considered per epoch (over all proposers). Set for the whole cluster by
    /// `dealer init`: a replica given another value than its cluster file's refuses to start.
    #[arg(long)]
    pub batch_size: Option<u64>,
    /// Epochs between checkpoints. Set for the whole cluster by `dealer init`: a replica given
    /// another value than its cluster file's refuses to start.
    #[arg(long)]
    pub checkpoint_interval: Option<u64>,
    /// Submissions one client connection may have in flight.
    #[arg(long)]
    pub per_connection_max: Option<usize>,
    /// Seconds a submission waits for its answer.
    #[arg(long)]
    pub submit_wait_s: Option<u64>,
    /// Largest upload (commit file) this replica takes as an intermediary, in bytes.
    #[arg(long)]
    pub upload_max: Option<u64>,
    /// Fault injection for tests: send wrong signature shares of the bistro's epoch roots and
    /// answer owners' collections with wrong decryption shares.
    #[arg(long, hide = true)]
    #[serde(default)]
    pub fault_wrong_shares: bool,
    /// Fault injection for tests: lose this percentage of the frames sent to peers, below the
    /// transport's retransmission (as a lossy network would).
    #[arg(long, hide = true, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub fault_drop_frames: Option<u8>,
    /// Fault injection for tests: flood the peers with maximal frames for this many seconds
    /// after the start.
    #[arg(long, hide = true)]
    #[serde(default)]
    pub fault_flood_s: Option<u16>,
}

impl RunConfig {
    /// Read a TOML file.
    pub fn from_file(path: &Path) -> anyhow::Result<RunConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut config: RunConfig = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        // Relative paths in the file are relative to the file.
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut config.init, &mut config.cluster, &mut config.data].into_iter().flatten() {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(config)
    }

    /// `other`'s settings where it has them, ours elsewhere.
    pub fn overridden_by(self, other: RunConfig) -> RunConfig {
        RunConfig {
            init: other.init.or(self.init),
            cluster: other.cluster.or(self.cluster),
            data: other.data.or(self.data),
            listen: other.listen.or(self.listen),
            client_listen: other.client_listen.or(self.client_listen),
            metrics: other.metrics.or(self.metrics),
            batch_size: other.batch_size.or(self.batch_size),
            checkpoint_interval: other.checkpoint_interval.or(self.checkpoint_interval),
            per_connection_max: other.per_connection_max.or(self.per_connection_max),
            submit_wait_s: other.submit_wait_s.or(self.submit_wait_s),
            upload_max: other.upload_max.or(self.upload_max),
            fault_wrong_shares: other.fault_wrong_shares || self.fault_wrong_shares,
            fault_drop_frames: other.fault_drop_frames.or(self.fault_drop_frames),
            fault_flood_s: other.fault_flood_s.or(self.fault_flood_s),
        }
    }
}

/// Largest upload a replica takes by default: 1 GiB.
pub const UPLOAD_MAX_DEFAULT: u64 = 1 << 30;

/// The atomic-broadcast configuration of a replica of `cluster` (read from `cluster_path`): the
/// cluster id as session and the cluster file's protocol parameters, after checking that none of
/// `config`'s settings contradicts them. The parameters decide what a replica accepts and sends,
/// so they are the cluster's, never one replica's: a setting that differs is refused, naming the
/// parameter and both values, rather than overriding the file.
pub fn abc_config(cluster: &ClusterFile, cluster_path: &Path, config: &RunConfig) -> anyhow::Result<AbcConfig> {
    let protocol = cluster.protocol();
    let given = [
        ("batch_size", config.batch_size, u64::from(protocol.batch_size)),
        ("checkpoint_interval", config.checkpoint_interval, protocol.checkpoint_interval),
    ];
    for (name, given, agreed) in given {
        if let Some(given) = given.filter(|given| *given != agreed) {
            bail!(
                "{name} = {given} (given to this replica) contradicts {name} = {agreed} in the cluster file {}: \
                 protocol parameters are the same at every replica of a cluster and are set by `dealer init`; \
                 drop the setting, or deal a new cluster with the value",
                cluster_path.display()
            );
        }
    }
    let mut abc = AbcConfig::new(cluster.id().0.to_vec());
    abc.batch_size = usize::try_from(protocol.batch_size).context("batch_size does not fit this machine")?;
    abc.checkpoint_interval = protocol.checkpoint_interval;
    abc.epochs_in_flight = protocol.epochs_in_flight;
    abc.epochs_future_max = protocol.epochs_future_max;
    abc.payload_len_max = usize::try_from(protocol.payload_len_max).context("payload_len_max does not fit")?;
    abc.dedup_window_epochs = protocol.dedup_window_epochs;
    Ok(abc)
}

/// This replica's threshold RSA key, if the cluster was dealt one (the dealer's check of the
/// replica file against the cluster file, done by [`keys`], covers the RSA share too).
pub fn rsa_keys(replica: &ReplicaFile, cluster: &ClusterFile) -> Option<crate::host::threshold::RsaKeys> {
    let (public, secret) = (cluster.rsa()?, replica.rsa_share()?);
    Some(crate::host::threshold::RsaKeys { public: Arc::new(public.clone()), secret: Arc::new(secret.clone()) })
}

/// The CA service's configuration for `cluster` (read from `cluster_path`), if the cluster has a
/// threshold RSA key: the cluster file's `[ca]` settings (or the defaults for a file without
/// them) and the root certificate `ca-root.pem` next to the cluster file, which must be the
/// root of the cluster's RSA key.
pub fn ca_config(cluster: &ClusterFile, cluster_path: &Path) -> anyhow::Result<Option<fides_ca::service::CaConfig>> {
    let Some(rsa) = cluster.rsa() else { return Ok(None) };
    let root_path = cluster_path.parent().unwrap_or(Path::new(".")).join(fides_dealer::ROOT_CERTIFICATE_FILE_NAME);
    let pem = std::fs::read(&root_path).with_context(|| {
        format!("reading the root certificate {} (the cluster has a threshold RSA key)", root_path.display())
    })?;
    let root = fides_ca::Root::from_pem(&pem).with_context(|| format!("reading {}", root_path.display()))?;
    root.check_key(rsa).with_context(|| format!("{} is not the root of the cluster's RSA key", root_path.display()))?;
    let settings = cluster.ca_settings();
    Ok(Some(fides_ca::service::CaConfig {
        cluster: cluster.id().0,
        identities: cluster.replicas().iter().map(|r| r.identity.to_bytes()).collect(),
        root,
        mode: match settings.mode {
            fides_dealer::CaMode::KeyMajor => fides_ca::service::Mode::KeyMajor,
            fides_dealer::CaMode::NameMajor => fides_ca::service::Mode::NameMajor,
        },
        policy: match settings.policy {
            fides_dealer::CaPolicy::Open => fides_ca::service::Policy::Open,
            fides_dealer::CaPolicy::Token { admin } => fides_ca::service::Policy::Token { admin: admin.to_bytes() },
        },
        validity_secs: settings.validity_secs(),
        checkpoint_interval: cluster.protocol().checkpoint_interval,
    }))
}

/// The threshold keys of replica `replica` of `cluster`.
pub fn keys(replica: &ReplicaFile, cluster: &ClusterFile) -> anyhow::Result<Keys> {
    let coin = replica.coin_keys(cluster)?;
    let signing = replica.signing_keys(cluster)?;
    let encryption = ThresholdKeys::new(
        replica.index(),
        cluster.quorum().n(),
        cluster.encryption().clone(),
        replica.encryption_share().clone(),
    );
    Ok(Keys { coin: Arc::new(coin), encryption: Arc::new(encryption), signing: Arc::new(signing) })
}

/// The agreement instances a replica's core hosts for `services`: named under the cluster id,
/// coins from the cluster's coin keys, the default bounds (`instances::Config`), and the
/// services' own validity predicates.
pub fn instances(
    quorum: fides_types::Quorum,
    index: fides_types::NodeIndex,
    keys: &Keys,
    cluster: &ClusterFile,
    services: &Arc<fides_service::Registry>,
) -> Instances {
    let validator = Arc::new(crate::host::decisions::RegistryValidator(Arc::clone(services)));
    Instances::new(quorum, index, Arc::clone(&keys.coin), InstancesConfig::new(cluster.id().0.to_vec()), validator)
}

fn resolve(address: &str) -> anyhow::Result<SocketAddr> {
    address
        .to_socket_addrs()
        .with_context(|| format!("resolving {address}"))?
        .next()
        .with_context(|| format!("{address} resolves to no address"))
}

/// Run a replica until SIGTERM, Ctrl-C, or (with `exit_on_stdin_close`) its standard input closes.
pub async fn run(config: RunConfig, exit_on_stdin_close: bool) -> anyhow::Result<()> {
    let (Some(init), Some(cluster_path), Some(data)) = (&config.init, &config.cluster, &config.data) else {
        bail!("--init, --cluster and --data are needed (as flags or in the --config file)");
    };
    let cluster = read_cluster(cluster_path)?;
    let replica = read_replica(init)?;
    let mismatches = replica.mismatches(&cluster);
    if !mismatches.is_empty() {
        bail!("{} does not belong to {}: {}", init.display(), cluster_path.display(), mismatches.join("; "));
    }
    let quorum = cluster.quorum();
    let index = replica.index();
    let info = cluster.replica(index).context("our index is not in the cluster file")?;
    let listen = match config.listen {
        Some(listen) => listen,
        None => resolve(&info.address.to_string())?,
    };
    let client_listen = match config.client_listen {
        Some(listen) => listen,
        None => resolve(&info.client_address.to_string())?,
    };

    let abc_config = abc_config(&cluster, cluster_path, &config)?;
    let limits = Limits {
        submit_wait: Duration::from_secs(config.submit_wait_s.unwrap_or(30).max(1)),
        payload_len_max: abc_config.payload_len_max,
        // 1 MiB per peer and 50 ms tick: 20 MiB/s to each peer.
        fault_flood: config.fault_flood_s.map(|s| (Duration::from_secs(u64::from(s)), 1024 * 1024)),
        ..Limits::default()
    };
    let setup = NodeSetup {
        quorum,
        our_index: index,
        session: abc_config.session.clone(),
        checkpoint_interval: abc_config.checkpoint_interval,
        epochs_in_flight: abc_config.epochs_in_flight,
        abc: AtomicBroadcast::new(quorum, index, abc_config, keys(&replica, &cluster)?),
        limits,
    };

    let peers = cluster
        .replicas()
        .iter()
        .map(|r| PeerInfo { index: r.index, identity: r.identity.to_bytes(), address: r.address.to_string() })
        .collect();
    let transport_config = TransportConfig {
        fault_drop_frames_percent: config.fault_drop_frames.unwrap_or(0),
        ..TransportConfig::default()
    };
    let transport = P2pTransport::start(index, replica.identity().to_bytes(), peers, listen, transport_config)
        .await
        .with_context(|| format!("starting the peer transport on {listen}"))?;

    let metrics = Arc::new(Metrics::new());
    let threshold_keys = keys(&replica, &cluster)?;
    // The services, in the order every replica registers them (the order of their epoch starts).
    let mut services = fides_service::Registry::new();
    services.register(fides_bistro::service::Service::new(fides_bistro::service::ServiceConfig {
        cluster: cluster.id().0,
        t: quorum.t(),
        replicas: cluster.replicas().iter().map(|r| r.identity.to_bytes()).collect(),
        encryption: cluster.encryption().clone(),
    }))?;
    // The certification authority, when the cluster has a threshold RSA key to sign with.
    let ca = ca_config(&cluster, cluster_path)?;
    if let Some(config) = ca.clone() {
        let own = fides_ca::service::Own { index: index.0, identity: replica.identity().clone() };
        services.register(fides_ca::service::Service::new(config, Some(own)))?;
    }
    let services = Arc::new(services);
    let ca_services = Arc::clone(&services);
    // The core hosts the services' agreement instances from before the log's replay on.
    let instances = instances(quorum, index, &threshold_keys, &cluster, &services);
    let (mut node, handle) = Node::start_hosting(setup, Some(instances), data, transport, Arc::clone(&metrics))
        .with_context(|| format!("opening the data directory {}", data.display()))?;
    let (worker, _worker_thread) = crate::host::worker::start(
        data,
        crate::host::worker::WorkerSetup {
            services,
            cluster: cluster.id().0,
            signing: Arc::clone(&threshold_keys.signing),
            quorum,
            encryption: Arc::clone(&threshold_keys.encryption),
            our_index: index,
            batches: node.batch_reader(),
            node: handle.clone(),
            wrong_shares: config.fault_wrong_shares,
            rsa: rsa_keys(&replica, &cluster),
            notices: crate::host::worker::NoticeKeys {
                identity: replica.identity().clone(),
                identities: cluster.replicas().iter().map(|r| r.identity.to_bytes()).collect(),
            },
        },
    )
    .with_context(|| format!("opening the bistro store in {}", data.display()))?;
    node.set_service(worker.service_sink());
    node.set_decided(worker.decided_sink());
    let host = crate::host::Orderer::new(
        handle.clone(),
        worker.clone(),
        Duration::from_secs(config.submit_wait_s.unwrap_or(30).max(1)),
    );
    let ca = ca.map(|_| {
        crate::ca::CaApi::new(host.clone(), ca_services, cluster.id().0, quorum.n(), index.0, replica.identity())
            .into_server()
    });
    let orderer = crate::bistro::Orderer::new(host);
    let (shutdown_tx, shutdown) = watch::channel(false);

    // The core runs on a thread of its own: it does the pairings and the fsyncs, and must not hold
    // up the runtime that moves bytes for the transport and the gRPC server.
    let (core_done_tx, core_done) = tokio::sync::oneshot::channel::<()>();
    let node_thread = std::thread::Builder::new().name("replica-core".into()).spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let result = runtime.block_on(node.run(shutdown)).map_err(anyhow::Error::from);
        let _ = core_done_tx.send(());
        result
    })?;

    if let Some(address) = config.metrics {
        let listener = metrics::bind(address).await.with_context(|| format!("binding metrics on {address}"))?;
        tokio::spawn(metrics::serve(listener, Arc::clone(&metrics)));
        tracing::info!(%address, "metrics at http://{address}/metrics");
    }

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<fides_api::proto::ordering_server::OrderingServer<OrderingService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(fides_api::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let service = OrderingService::new(
        handle,
        worker.clone(),
        Duration::from_secs(config.submit_wait_s.unwrap_or(30).max(1)),
        config.per_connection_max.unwrap_or(1024),
    );
    let bistro = crate::bistro::BistroApi::new(orderer.clone(), cluster.id().0);

    let blobs = fides_relay::BlobStore::open(&data.join("uploads"))
        .with_context(|| format!("opening the upload store in {}", data.display()))?;
    let intermediary = fides_relay::IntermediaryService::new(
        fides_relay::IntermediaryConfig::replica(
            &cluster,
            index.0,
            replica.identity().clone(),
            config.upload_max.unwrap_or(UPLOAD_MAX_DEFAULT),
        ),
        blobs.clone(),
        crate::bistro::transfer::ReplicaReporter { orderer: orderer.clone() },
    );
    let transfer = crate::bistro::transfer::Transfer {
        orderer: orderer.clone(),
        blobs,
        cluster: cluster.id().0,
        replicas: crate::bistro::transfer::replica_addresses(&cluster),
        our_index: index.0,
        identity: replica.identity().clone(),
    };
    tokio::spawn(transfer.run(shutdown_tx.subscribe()));
    let mut grpc_shutdown = shutdown_tx.subscribe();
    let grpc = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(health)
        .add_service(reflection)
        .add_service(service.into_server())
        .add_service(bistro.into_server())
        .add_service(intermediary.into_server())
        .add_optional_service(ca)
        .serve_with_shutdown(client_listen, async move {
            let _ = grpc_shutdown.changed().await;
        });
    tracing::info!(index = index.0, %listen, %client_listen, "replica running");
    let grpc_task = tokio::spawn(grpc);

    tokio::select! {
        _ = wait_for_stop(exit_on_stdin_close) => {}
        _ = core_done => tracing::error!("the replica core stopped by itself"),
    }
    tracing::info!("stopping");
    let _ = shutdown_tx.send(true);
    match tokio::time::timeout(Duration::from_secs(10), grpc_task).await {
        Ok(Ok(Err(error))) => tracing::warn!(%error, "the gRPC server stopped with an error"),
        Err(_) => tracing::warn!("the gRPC server did not stop within 10 s"),
        _ => {}
    }
    match tokio::task::spawn_blocking(move || node_thread.join()).await {
        Ok(Ok(result)) => result?,
        _ => bail!("the replica core panicked"),
    }
    Ok(())
}

async fn wait_for_stop(exit_on_stdin_close: bool) {
    let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(error) => {
            tracing::warn!(%error, "cannot watch SIGTERM; Ctrl-C still stops the replica");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    let stdin_closed = async {
        if !exit_on_stdin_close {
            return std::future::pending::<()>().await;
        }
        // The launcher holds our standard input open; if it dies, even by SIGKILL, it closes.
        let mut stdin = tokio::io::stdin();
        let mut buffer = [0u8; 64];
        loop {
            match tokio::io::AsyncReadExt::read(&mut stdin, &mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
        _ = stdin_closed => tracing::info!("standard input closed: the launcher is gone"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fides_dealer::{
        default_addresses, default_client_addresses, generate_with_protocol, ProtocolParameters, Quorum,
    };
    use rand::SeedableRng;

    fn cluster(protocol: ProtocolParameters) -> ClusterFile {
        let quorum = Quorum::new(4, 1).expect("valid quorum");
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(11);
        let (addresses, clients) = (default_addresses(quorum), default_client_addresses(quorum));
        let dealt = generate_with_protocol(quorum, protocol, addresses, clients, &mut rng).expect("valid parameters");
        dealt.public().clone()
    }

    #[test]
    fn a_batch_size_that_contradicts_the_cluster_file_is_refused_with_both_values() {
        let cluster = cluster(ProtocolParameters { batch_size: 200, ..ProtocolParameters::DEFAULT });
        let config = RunConfig { batch_size: Some(500), ..RunConfig::default() };
        let Err(error) = abc_config(&cluster, Path::new("cluster.toml"), &config) else {
            panic!("a replica took batch_size = 500 against the cluster file's 200")
        };
        let message = format!("{error:#}");
        assert!(message.contains("batch_size = 500 (given to this replica)"), "{message}");
        assert!(message.contains("contradicts batch_size = 200 in the cluster file cluster.toml"), "{message}");
        let config = RunConfig { checkpoint_interval: Some(4), ..RunConfig::default() };
        let Err(error) = abc_config(&cluster, Path::new("cluster.toml"), &config) else {
            panic!("a replica took checkpoint_interval = 4 against the cluster file's 64")
        };
        assert!(format!("{error:#}").contains("checkpoint_interval = 4 (given to this replica) contradicts"));
    }

    #[test]
    fn two_replicas_of_one_cluster_cannot_run_with_different_batch_sizes() {
        let protocol = ProtocolParameters { batch_size: 200, checkpoint_interval: 8, ..ProtocolParameters::DEFAULT };
        let cluster = cluster(protocol);
        // Whatever each replica is given, every one that starts runs the cluster file's values.
        let settings = [None, Some(200), Some(1), Some(1_000), Some(0)];
        let mut started = Vec::new();
        for batch_size in settings {
            let config = RunConfig { batch_size, ..RunConfig::default() };
            if let Ok(abc) = abc_config(&cluster, Path::new("cluster.toml"), &config) {
                started.push((batch_size, abc.batch_size, abc.checkpoint_interval));
            }
        }
        assert_eq!(started, [(None, 200, 8), (Some(200), 200, 8)]);
    }

    #[test]
    fn every_protocol_parameter_reaches_atomic_broadcast() {
        let protocol = ProtocolParameters {
            batch_size: 123,
            checkpoint_interval: 7,
            epochs_in_flight: 2,
            epochs_future_max: 9,
            payload_len_max: 4_096,
            dedup_window_epochs: 77,
        };
        let cluster = cluster(protocol);
        let abc = abc_config(&cluster, Path::new("cluster.toml"), &RunConfig::default()).expect("no contradiction");
        assert_eq!(abc.session, cluster.id().0.to_vec());
        let got = (abc.batch_size, abc.checkpoint_interval, abc.epochs_in_flight, abc.epochs_future_max);
        assert_eq!(got, (123, 7, 2, 9));
        assert_eq!((abc.payload_len_max, abc.dedup_window_epochs), (4_096, 77));
    }

    /// A cluster with a 512-bit (test-only) RSA key and `ca` settings, written to `dir`.
    fn dealt_with_ca(dir: &Path, seed: u64, ca: Option<fides_dealer::CaSettings>) -> ClusterFile {
        let quorum = Quorum::new(4, 1).expect("valid quorum");
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
        let mut progress = |_| {};
        let rsa = fides_dealer::RsaOptions {
            modulus_bits: 512,
            not_before: std::time::SystemTime::now(),
            progress: &mut progress,
        };
        let (addresses, clients) = (default_addresses(quorum), default_client_addresses(quorum));
        let dealt = fides_dealer::generate_with_ca(
            quorum,
            ProtocolParameters::DEFAULT,
            addresses,
            clients,
            Some(rsa),
            ca,
            &mut rng,
        )
        .expect("valid arguments");
        fides_dealer::write(dir, &dealt, true).expect("written");
        dealt.public().clone()
    }

    #[test]
    fn the_ca_runs_with_the_cluster_files_settings_and_the_root_of_its_rsa_key() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let settings = fides_dealer::CaSettings {
            mode: fides_dealer::CaMode::NameMajor,
            policy: fides_dealer::CaPolicy::Open,
            validity_days: 7,
        };
        let cluster = dealt_with_ca(dir.path(), 21, Some(settings));
        let path = dir.path().join("cluster.toml");
        let config = ca_config(&cluster, &path).expect("readable").expect("the cluster has an RSA key");
        assert_eq!(config.mode, fides_ca::service::Mode::NameMajor);
        assert_eq!(config.validity_secs, 7 * 86_400);
        assert_eq!(config.cluster, cluster.id().0);
        assert_eq!(config.identities.len(), 4);
        // Another cluster's root is refused, and so is none.
        let other = tempfile::tempdir().expect("temporary directory");
        dealt_with_ca(other.path(), 22, None);
        std::fs::copy(other.path().join("ca-root.pem"), dir.path().join("ca-root.pem")).expect("copied");
        let error = ca_config(&cluster, &path).expect_err("another cluster's root");
        assert!(format!("{error:#}").contains("is not the root of the cluster's RSA key"), "{error:#}");
        std::fs::remove_file(dir.path().join("ca-root.pem")).expect("removed");
        let error = ca_config(&cluster, &path).expect_err("no root");
        assert!(format!("{error:#}").contains("reading the root certificate"), "{error:#}");
        // Without an RSA key, no CA.
        let plain = cluster_without_rsa();
        assert!(ca_config(&plain, &path).expect("no CA").is_none());
    }

    fn cluster_without_rsa() -> ClusterFile {
        cluster(ProtocolParameters::DEFAULT)
    }

    #[test]
    fn the_dealers_limits_are_the_decoders_bounds() {
        use fides_atomic_broadcast::{checkpoint::WINDOW_ENTRIES_MAX, epoch};
        assert_eq!(fides_dealer::PAYLOAD_LEN_LIMIT as usize, epoch::PAYLOAD_WIRE_MAX);
        assert_eq!(fides_dealer::PROPOSAL_REQUESTS_LIMIT, epoch::CONTRIBUTION_REQUESTS_MAX);
        assert_eq!(fides_dealer::WINDOW_IDS_LIMIT, u64::from(WINDOW_ENTRIES_MAX));
        assert!(fides_dealer::PROPOSAL_BYTES_LIMIT < crate::transport::FRAME_LEN_MAX as u64);
    }
}
