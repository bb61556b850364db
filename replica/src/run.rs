//! `replica run`: assemble one replica process from its files and run it until SIGTERM / Ctrl-C.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use fides_atomic_broadcast::epoch::{AtomicBroadcast, Config as AbcConfig, Keys};
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
    /// Requests considered per epoch (over all proposers).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Epochs between checkpoints.
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
            fault_flood_s: other.fault_flood_s.or(self.fault_flood_s),
        }
    }
}

/// Largest upload a replica takes by default: 1 GiB.
pub const UPLOAD_MAX_DEFAULT: u64 = 1 << 30;

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

    let mut abc_config = AbcConfig::new(cluster.id().0.to_vec());
    if let Some(batch) = config.batch_size {
        abc_config.batch_size = batch.max(1);
    }
    if let Some(interval) = config.checkpoint_interval {
        abc_config.checkpoint_interval = interval.max(1);
    }
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
    let transport =
        P2pTransport::start(index, replica.identity().to_bytes(), peers, listen, TransportConfig::default())
            .await
            .with_context(|| format!("starting the peer transport on {listen}"))?;

    let metrics = Arc::new(Metrics::new());
    let threshold_keys = keys(&replica, &cluster)?;
    let (mut node, handle) = Node::start(setup, data, transport, Arc::clone(&metrics))
        .with_context(|| format!("opening the data directory {}", data.display()))?;
    let service = fides_bistro::service::Service::new(fides_bistro::service::ServiceConfig {
        cluster: cluster.id().0,
        t: quorum.t(),
        replicas: cluster.replicas().iter().map(|r| r.identity.to_bytes()).collect(),
        encryption: cluster.encryption().clone(),
    });
    let (worker, _worker_thread) = crate::bistro::worker::start(
        data,
        crate::bistro::worker::WorkerSetup {
            service,
            signing: Arc::clone(&threshold_keys.signing),
            encryption: Arc::clone(&threshold_keys.encryption),
            our_index: index,
            batches: node.batch_reader(),
            node: handle.clone(),
            wrong_shares: config.fault_wrong_shares,
        },
    )
    .with_context(|| format!("opening the bistro store in {}", data.display()))?;
    node.set_service(worker.service_sink());
    let orderer = crate::bistro::Orderer::new(
        handle.clone(),
        worker.clone(),
        Duration::from_secs(config.submit_wait_s.unwrap_or(30).max(1)),
    );
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
    health_reporter.set_serving::<fides_client_sdk::proto::ordering_server::OrderingServer<OrderingService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(fides_client_sdk::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let service = OrderingService::new(handle, config.per_connection_max.unwrap_or(1024));
    let bistro = crate::bistro::BistroApi::new(orderer.clone(), cluster.id().0);
    let blobs = fides_client_sdk::intermediary::BlobStore::open(&data.join("uploads"))
        .with_context(|| format!("opening the upload store in {}", data.display()))?;
    let intermediary = fides_client_sdk::intermediary::IntermediaryService::new(
        fides_client_sdk::intermediary::IntermediaryConfig::replica(
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
