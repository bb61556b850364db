//! Transfer: after an event's deadline, pull the uploads this replica does not hold from the
//! intermediaries that reported them (or from replicas that stored them), check them against the
//! cluster's record, keep them, say so to the cluster (an ordered, signed `Stored` statement)
//! and to the relays (a signed confirmation, after which a relay may delete its copy).
//!
//! At most [`PARALLEL`] uploads move at once; a broken fetch resumes from the bytes already
//! received; an upload that fails is tried again on a later round, from the next source.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use fides_api::proto;
use fides_api::proto::intermediary_client::IntermediaryClient;
use fides_bistro::commit::CommitHeader;
use fides_bistro::records::{domain, ed_sign, Receipt, Request, StoredReport};
use fides_relay::{BlobEntry, BlobStore, ClusterReporter, UploadKey};
use futures::StreamExt;
use tokio::sync::watch;
use tonic::Status;

use super::queries::{self, PendingUpload};
use super::Orderer;

/// Uploads fetched at once.
pub const PARALLEL: usize = 4;

/// What the transfer needs.
#[derive(Clone)]
pub struct Transfer {
    /// Orders our statements and asks the worker.
    pub orderer: Orderer,
    /// Where blobs go.
    pub blobs: BlobStore,
    /// The cluster id.
    pub cluster: [u8; 32],
    /// The replicas' identity keys and client addresses, by index.
    pub replicas: Vec<([u8; 32], String)>,
    /// Our index.
    pub our_index: u32,
    /// Our identity key.
    pub identity: SigningKey,
}

/// The replica's side of `ClusterReporter`: it orders the `Held` report itself.
#[derive(Clone)]
pub struct ReplicaReporter {
    /// The orderer.
    pub orderer: Orderer,
}

#[tonic::async_trait]
impl ClusterReporter for ReplicaReporter {
    async fn report_held(&self, report: fides_bistro::records::HeldReport) -> Result<bool, Status> {
        let (answer, _, _) = self.orderer.order_own(&Request::Held(report)).await?;
        Ok(matches!(answer.outcome, fides_bistro::service::Outcome::Held { first: true }))
    }
}

impl Transfer {
    /// Run rounds until `shutdown`.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut failures: HashMap<UploadKey, (u32, Instant)> = HashMap::new();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            let pending = match self.pending().await {
                Ok(pending) => pending,
                Err(error) => {
                    tracing::warn!(%error, "transfer: cannot list pending uploads");
                    continue;
                }
            };
            let now = Instant::now();
            let due: Vec<PendingUpload> = pending
                .into_iter()
                .filter(|p| {
                    let key = UploadKey { event: p.event, ticket: p.ticket, upload_hash: p.hash };
                    failures.get(&key).is_none_or(|(count, at)| {
                        now.duration_since(*at) >= Duration::from_millis(500 * u64::from((*count).min(20)))
                    })
                })
                .collect();
            let results: Vec<(UploadKey, Result<(), String>)> = futures::stream::iter(due)
                .map(|upload| {
                    let this = self.clone();
                    let attempt = failures
                        .get(&UploadKey { event: upload.event, ticket: upload.ticket, upload_hash: upload.hash })
                        .map_or(0, |(c, _)| *c);
                    async move {
                        let key = UploadKey { event: upload.event, ticket: upload.ticket, upload_hash: upload.hash };
                        (key, this.transfer(upload, attempt).await)
                    }
                })
                .buffer_unordered(PARALLEL)
                .collect()
                .await;
            for (key, result) in results {
                match result {
                    Ok(()) => {
                        failures.remove(&key);
                    }
                    Err(error) => {
                        let entry = failures.entry(key).or_insert((0, now));
                        entry.0 += 1;
                        entry.1 = Instant::now();
                        if entry.0 == 1 || entry.0.is_multiple_of(10) {
                            tracing::warn!(%key, %error, attempts = entry.0, "transfer failed; will try again");
                        }
                    }
                }
            }
        }
    }

    async fn pending(&self) -> Result<Vec<PendingUpload>, String> {
        let pending = self.orderer.run(|view| queries::pending(view, 256).map_err(|e| e.to_string()));
        pending.await.map_err(|status| status.message().to_string())?
    }

    /// Fetch, keep, state and confirm one upload.
    async fn transfer(&self, upload: PendingUpload, attempt: u32) -> Result<(), String> {
        let key = UploadKey { event: upload.event, ticket: upload.ticket, upload_hash: upload.hash };
        if self.blobs.held(&key).await.map_err(|e| e.to_string())?.is_none() {
            self.fetch(&upload, &key, attempt).await?;
        }
        // Tell the cluster (ordered, so everyone agrees how many replicas hold it).
        let body = StoredReport::body(&upload.event, upload.ticket, &upload.hash, self.our_index);
        let signature = ed_sign(&self.identity, domain::STORED, &self.cluster, &body);
        let report = StoredReport {
            event: upload.event,
            ticket: upload.ticket,
            upload_hash: upload.hash,
            replica: self.our_index,
            signature,
        };
        self.orderer.order_own(&Request::Stored(report)).await.map_err(|s| s.message().to_string())?;
        // Tell the relays that hold it (they delete after t + 1 of these).
        let confirmation = ed_sign(&self.identity, domain::CONFIRM, &self.cluster, &body);
        for (_, address) in &upload.intermediaries {
            let Some(address) = address else { continue };
            let request = proto::ConfirmRequest {
                event: upload.event.0.to_vec(),
                ticket: upload.ticket,
                upload_hash: upload.hash.to_vec(),
                replica: self.our_index,
                signature: confirmation.to_vec(),
            };
            match self.client(address).await {
                Ok(mut client) => {
                    if let Err(status) = client.confirm(request).await {
                        tracing::debug!(%address, %status, "a relay did not take our confirmation");
                    }
                }
                Err(error) => tracing::debug!(%address, %error, "cannot reach a relay to confirm"),
            }
        }
        let (event, ticket, hash) = (upload.event, upload.ticket, upload.hash);
        let fetched =
            self.orderer.run(move |view| queries::fetched(view, event, ticket, hash).map_err(|e| e.to_string()));
        fetched.await.map_err(|status| status.message().to_string())??;
        tracing::info!(%key, "upload transferred and kept");
        Ok(())
    }

    async fn client(&self, address: &str) -> Result<IntermediaryClient<tonic::transport::Channel>, String> {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(120));
        let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
        Ok(IntermediaryClient::new(channel).max_decoding_message_size(64 << 20))
    }

    /// The places to fetch from, the `attempt`-th one first: the intermediaries that reported it,
    /// then the replicas that stored it.
    fn sources(&self, upload: &PendingUpload, attempt: u32) -> Vec<String> {
        let mut sources = Vec::new();
        for (key, address) in &upload.intermediaries {
            match address {
                Some(address) => sources.push(address.clone()),
                None => {
                    if let Some((i, (_, address))) =
                        self.replicas.iter().enumerate().find(|(_, (identity, _))| identity == key)
                    {
                        if i as u32 != self.our_index {
                            sources.push(address.clone());
                        }
                    }
                }
            }
        }
        for replica in &upload.stored_by {
            if *replica != self.our_index {
                if let Some((_, address)) = self.replicas.get(*replica as usize) {
                    if !sources.contains(address) {
                        sources.push(address.clone());
                    }
                }
            }
        }
        if !sources.is_empty() {
            let shift = attempt as usize % sources.len();
            sources.rotate_left(shift);
        }
        sources
    }

    async fn fetch(&self, upload: &PendingUpload, key: &UploadKey, attempt: u32) -> Result<(), String> {
        let sources = self.sources(upload, attempt);
        if sources.is_empty() {
            return Err("no intermediary or replica to fetch from".into());
        }
        let mut last_error = String::new();
        for address in sources {
            match self.fetch_from(&address, upload, key).await {
                Ok(()) => return Ok(()),
                Err(error) => last_error = format!("{address}: {error}"),
            }
        }
        Err(last_error)
    }

    async fn fetch_from(&self, address: &str, upload: &PendingUpload, key: &UploadKey) -> Result<(), String> {
        let mut client = self.client(address).await?;
        let mut writer = self.blobs.begin().await.map_err(|e| e.to_string())?;
        let mut header = Vec::new();
        // Resume from what we have when the stream breaks (at most 3 times per source).
        for _ in 0..3 {
            let request = proto::FetchRequest {
                event: upload.event.0.to_vec(),
                ticket: upload.ticket,
                upload_hash: upload.hash.to_vec(),
                offset: writer.size(),
            };
            let mut stream = match client.fetch(request).await {
                Ok(response) => response.into_inner(),
                Err(status) => return Err(format!("{}: {}", status.code(), status.message())),
            };
            let mut broken = false;
            loop {
                match stream.message().await {
                    Ok(Some(chunk)) => {
                        if writer.size() + chunk.data.len() as u64 > upload.size {
                            return Err("the intermediary sent more than the recorded size".into());
                        }
                        if header.len() < 4096 {
                            header.extend_from_slice(&chunk.data[..chunk.data.len().min(4096 - header.len())]);
                        }
                        writer.write(&chunk.data).await.map_err(|e| e.to_string())?;
                    }
                    Ok(None) => break,
                    Err(_) => {
                        broken = true;
                        break;
                    }
                }
            }
            if !broken {
                break;
            }
        }
        if writer.size() != upload.size || writer.hash() != upload.hash {
            return Err(format!(
                "received {} bytes that do not match the recorded upload ({} bytes, hash {})",
                writer.size(),
                upload.size,
                hex::encode(upload.hash)
            ));
        }
        let parsed = CommitHeader::read(&mut header.as_slice()).map_err(|e| e.to_string())?;
        if parsed.event != upload.event || parsed.ticket != upload.ticket || parsed.capsule != upload.capsule {
            return Err("the upload's header does not match the cluster's record".into());
        }
        let source = upload.intermediaries.first().map(|(k, _)| *k).unwrap_or([0; 32]);
        let entry = BlobEntry {
            // Transferred, not taken from a submitter: no receipt of ours. The entry names the
            // upload; the signature is empty.
            receipt: Receipt {
                event: upload.event,
                ticket: upload.ticket,
                upload_hash: upload.hash,
                upload_size: upload.size,
                intermediary: source,
                receipt_id: 0,
                time_ms: 0,
            },
            signature: [0; 64],
            confirmations: Default::default(),
        };
        self.blobs.commit(writer, key, entry).await.map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// The replicas' (identity, client address) pairs of a cluster file.
pub fn replica_addresses(cluster: &fides_dealer::ClusterFile) -> Vec<([u8; 32], String)> {
    cluster.replicas().iter().map(|r| (r.identity.to_bytes(), r.client_address.to_string())).collect()
}
