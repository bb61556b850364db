//! A relay (`bistro relay`): a stand-alone, untrusted intermediary with its own Ed25519 key,
//! registered with the cluster. It serves `fides_relay`'s [`IntermediaryService`] over a
//! [`BlobStore`] and reports the uploads it holds to the cluster as a client, with
//! [`BistroClient::report_held`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use ed25519_dalek::SigningKey;
use fides_bistro::records::HeldReport;
use fides_relay::{BlobStore, ClusterReporter, IntermediaryConfig, IntermediaryService};
use tonic::Status;

use crate::bistro::BistroClient;
use crate::proto::intermediary_server::IntermediaryServer;
use crate::ClientError;

/// Milliseconds since the Unix epoch by this machine's clock.
fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[tonic::async_trait]
impl ClusterReporter for BistroClient {
    async fn report_held(&self, report: HeldReport) -> Result<bool, Status> {
        BistroClient::report_held(self, report).await.map_err(|error| match error {
            ClientError::Status { code, message } => Status::new(code, message),
            other => Status::unavailable(format!("the cluster did not record the upload: {other}")),
        })
    }
}

/// How a relay runs.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// The public cluster file.
    pub cluster_file: PathBuf,
    /// Its data directory: its key (`relay.key`) and its blob store.
    pub data: PathBuf,
    /// Where it serves the `Intermediary` service.
    pub listen: SocketAddr,
    /// The address it registers with the cluster (`host:port`); the bound listen address when
    /// `None`.
    pub advertise: Option<String>,
    /// Test-only fault injection: take uploads but never deliver them (see
    /// [`IntermediaryConfig::never_deliver`]).
    pub never_deliver: bool,
    /// Largest upload taken (bytes).
    pub upload_max: u64,
}

/// Load the relay's Ed25519 key from `path` (64 hex digits), or create it there (mode 0600,
/// written to a temporary file and renamed into place).
pub fn load_or_create_key(path: &Path) -> anyhow::Result<SigningKey> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let bytes = hex::decode(text.trim()).with_context(|| format!("{}: the key is not hex", path.display()))?;
            let secret: [u8; 32] = bytes
                .try_into()
                .map_err(|_| anyhow::anyhow!("{}: the key is not 32 bytes (64 hex digits)", path.display()))?;
            Ok(SigningKey::from_bytes(&secret))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            let tmp = path.with_extension(format!("tmp{:08x}", rand::random::<u32>()));
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            let written = file
                .write_all(format!("{}\n", hex::encode(key.to_bytes())).as_bytes())
                .and_then(|()| file.sync_all())
                .and_then(|()| std::fs::rename(&tmp, path));
            if let Err(error) = written {
                let _ = std::fs::remove_file(&tmp);
                return Err(error).with_context(|| format!("writing {}", path.display()));
            }
            if let Some(dir) = path.parent() {
                let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .with_context(|| format!("syncing {}", dir.display()))?;
            }
            Ok(key)
        }
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

async fn stop_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot watch SIGTERM; Ctrl-C still stops the relay");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Run a relay until Ctrl-C or SIGTERM: load or create its key, open its store, serve the
/// `Intermediary` service (and gRPC health) on `listen`, register with the cluster (retrying until
/// the cluster answers), then print `relay listening on ADDR key HEX` on standard output.
pub async fn run_relay(config: RelayConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data).with_context(|| format!("creating {}", config.data.display()))?;
    let key = load_or_create_key(&config.data.join("relay.key"))?;
    let key_hex = hex::encode(key.verifying_key().to_bytes());
    let store =
        BlobStore::open(&config.data).with_context(|| format!("opening the store in {}", config.data.display()))?;
    let cluster = fides_dealer::read_cluster(&config.cluster_file)
        .map_err(|e| anyhow::anyhow!("reading the cluster file {}: {e}", config.cluster_file.display()))?;
    let client = BistroClient::connect(cluster.clone())?;

    let listener =
        tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    let bound = listener.local_addr().context("the listener's address")?;
    let advertise = config.advertise.clone().unwrap_or_else(|| bound.to_string());
    if config.advertise.is_none() && bound.ip().is_unspecified() {
        tracing::warn!(%bound, "registering an unspecified address; replicas cannot reach it: pass an address to advertise");
    }

    let mut intermediary = IntermediaryConfig::relay(&cluster, key.clone(), config.upload_max);
    intermediary.never_deliver = config.never_deliver;
    if config.never_deliver {
        tracing::warn!("never-deliver fault injection is on: this relay answers no Fetch");
    }
    let service = IntermediaryService::new(intermediary, store, client.clone());
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<IntermediaryServer<IntermediaryService<BistroClient>>>().await;
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(health)
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async move {
            let _ = stop_rx.changed().await;
        });
    let mut server = tokio::spawn(server);

    let stop = stop_signal();
    tokio::pin!(stop);
    let register = async {
        let mut attempt = 0u32;
        loop {
            match client.register_relay(&key, &advertise, now_ms()).await {
                Ok(()) => return Ok(()),
                Err(
                    error @ (ClientError::Status { .. } | ClientError::Address { .. } | ClientError::Endpoint { .. }),
                ) => return Err(anyhow::anyhow!("the cluster refused the relay's registration: {error}")),
                Err(error) => {
                    attempt += 1;
                    tracing::warn!(%error, attempt, "registering with the cluster failed; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    };
    let registered: anyhow::Result<()> = tokio::select! {
        result = register => result,
        _ = &mut stop => Ok(()),
        result = &mut server => {
            return match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(error).context("the gRPC server stopped"),
                Err(error) => Err(error).context("the gRPC server task"),
            };
        }
    };
    if let Err(error) = registered {
        let _ = stop_tx.send(true);
        let _ = server.await;
        return Err(error);
    }
    tracing::info!(address = %advertise, key = %key_hex, "relay registered");
    {
        use std::io::Write;
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, "relay listening on {bound} key {key_hex}");
        let _ = stdout.flush();
    }
    tokio::select! {
        _ = &mut stop => tracing::info!("stopping"),
        result = &mut server => {
            return match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(error).context("the gRPC server stopped"),
                Err(error) => Err(error).context("the gRPC server task"),
            };
        }
    }
    let _ = stop_tx.send(true);
    match tokio::time::timeout(Duration::from_secs(10), server).await {
        Ok(Ok(Err(error))) => tracing::warn!(%error, "the gRPC server stopped with an error"),
        Err(_) => tracing::warn!("the gRPC server did not stop within 10 s"),
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_keys_are_created_once_private_and_reloaded() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("relay.key");
        let key = load_or_create_key(&path).expect("created");
        let mode = std::fs::metadata(&path).expect("exists").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = load_or_create_key(&path).expect("loaded");
        assert_eq!(key.to_bytes(), again.to_bytes());
        std::fs::write(&path, "zz").expect("write");
        assert!(load_or_create_key(&path).is_err());
    }
}
