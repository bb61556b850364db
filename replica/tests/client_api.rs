//! The client API of real replica processes: clear statuses for bad input and overload, the
//! standard health service, server reflection, the ordering status call, and answers that go by
//! the payload (two clients sending the same `(client, id)` with different payloads are each
//! told the place of their own payload).

mod common;

use std::time::Duration;

use common::*;
use fides_client_sdk::proto::{self, lookup_reply::State};
use fides_types::NodeIndex;
use tonic::Code;

#[test]
fn the_client_api_answers_bad_input_and_overload_with_clear_statuses_and_serves_health_and_reflection() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().expect("temporary directory");
    let _logs = LogsOnFailure::new(dir.path(), 4);
    let settings = dir.path().join("run.toml");
    std::fs::write(&settings, "per_connection_max = 2\nsubmit_wait_s = 60\n").expect("settings file");
    let settings = settings.to_string_lossy().to_string();
    let mut local = cluster(dir.path(), 4, 1, &["--config", &settings]);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        let test = async {
            let probe = client(dir.path(), Duration::from_secs(5));
            local.start_all().expect("start");
            for i in 0..4 {
                wait_up(&probe, &mut local, i, Duration::from_secs(60)).await;
            }
            let address = format!("http://{}", local.cluster().replicas()[0].client_address);
            let channel = tonic::transport::Endpoint::from_shared(address).expect("endpoint").connect_lazy();

            // Health: the ordering service is SERVING.
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
            let reply = health
                .check(tonic_health::pb::HealthCheckRequest { service: "fides.v1.Ordering".into() })
                .await
                .expect("health check");
            assert_eq!(reply.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

            // Reflection lists the services.
            let mut reflection =
                tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
            let request = tonic_reflection::pb::v1::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(
                    tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(String::new()),
                ),
            };
            let mut answers =
                reflection.server_reflection_info(futures::stream::iter(vec![request])).await.expect("reflection").into_inner();
            let answer = answers.message().await.expect("reflection answer").expect("one answer");
            let Some(tonic_reflection::pb::v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
                answer.message_response
            else {
                panic!("not a service list: {answer:?}");
            };
            let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
            for expected in ["fides.v1.Ordering", "grpc.health.v1.Health"] {
                assert!(names.iter().any(|n| n == expected), "{expected} not listed in {names:?}");
            }

            let mut ordering = proto::ordering_client::OrderingClient::new(channel.clone());
            // Too long a payload: INVALID_ARGUMENT with the sizes.
            let status = ordering
                .submit(proto::SubmitRequest { client: 1, id: 1, payload: vec![0; 64 * 1024 + 1] })
                .await
                .expect_err("refused");
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            assert!(status.message().contains("65537"), "the reason names the size: {}", status.message());
            let status = ordering.log(proto::LogRequest { from_epoch: 0, max_batches: 0 }).await.expect_err("refused");
            assert_eq!(status.code(), Code::InvalidArgument);

            // An ordered request, then the ordering status call.
            let ordered = ordering
                .submit(proto::SubmitRequest { client: 1, id: 2, payload: b"hello".to_vec() })
                .await
                .expect("ordered")
                .into_inner();
            assert_eq!(ordered.payload_digest, digest(b"hello"));
            // One replica's answer verifies alone, from its bytes and the cluster's key.
            let (cluster_id, public) = (local.cluster().id().0, local.cluster().signing().public_key());
            let cache = fides_client_sdk::certified::VerifiedCertificates::default();
            let asked = (1, 2, digest(b"hello").try_into().expect("32 bytes"));
            fides_client_sdk::certified::check_ordered(&cluster_id, &public, &cache, asked, &ordered)
                .expect("the answer verifies against the cluster key");
            let mut forged = ordered.clone();
            forged.index += 1;
            assert!(fides_client_sdk::certified::check_ordered(&cluster_id, &public, &cache, asked, &forged).is_err());
            // `Lookup` gives the same answer, certified alike: it verifies alone too.
            let lookup = ordering.lookup(lookup_of(1, 2, b"hello")).await.expect("lookup").into_inner();
            assert_eq!(lookup.state, State::Ordered as i32);
            let looked_up = lookup.ordered.expect("an ordered lookup carries the answer");
            fides_client_sdk::certified::check_ordered(&cluster_id, &public, &cache, asked, &looked_up)
                .expect("the lookup answer verifies against the cluster key");
            assert_eq!(looked_up, ordered);
            let lookup = ordering.lookup(lookup_of(1, 2, b"other")).await.expect("lookup").into_inner();
            assert_eq!(lookup.state, State::Unknown as i32, "another payload under (1, 2) was never sent");
            let lookup = ordering.lookup(lookup_of(1, 99, b"hello")).await.expect("lookup").into_inner();
            assert_eq!(lookup.state, State::Unknown as i32);
            let status = ordering
                .lookup(proto::LookupRequest { client: 1, id: 2, payload_digest: Vec::new() })
                .await
                .expect_err("a lookup names the payload");
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

            // Two clients claim the same (client, id) with different payloads (one of them, say,
            // through a Byzantine replica): both are ordered, and each is told its own place.
            let mut other = ordering.clone();
            let (a, b) = tokio::join!(
                ordering.submit(proto::SubmitRequest { client: 5, id: 1, payload: b"from the client".to_vec() }),
                other.submit(proto::SubmitRequest { client: 5, id: 1, payload: b"from a forger".to_vec() }),
            );
            let a = a.expect("ordered").into_inner();
            let b = b.expect("ordered").into_inner();
            assert_ne!((a.epoch, a.index), (b.epoch, b.index), "two payloads, one place: {a:?} {b:?}");
            for (answer, payload) in [(&a, &b"from the client"[..]), (&b, &b"from a forger"[..])] {
                assert_eq!(answer.payload_digest, digest(payload));
                // The batch may be written just after the answer left: ask until it is there.
                let deadline = std::time::Instant::now() + Duration::from_secs(20);
                let batch = loop {
                    let log = ordering
                        .log(proto::LogRequest { from_epoch: answer.epoch, max_batches: 1 })
                        .await
                        .expect("log")
                        .into_inner();
                    if let Some(batch) = log.batches.into_iter().find(|b| b.epoch == answer.epoch) {
                        break batch;
                    }
                    assert!(std::time::Instant::now() < deadline, "epoch {} is not in the log", answer.epoch);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                };
                let there = batch.requests.get(answer.index as usize).expect("the answer's index is in the batch");
                assert_eq!(
                    (there.client, there.id, there.payload.as_slice()),
                    (5, 1, payload),
                    "a client was told the place of another payload"
                );
            }

            // Without a quorum nothing is ordered: submissions wait, and past the per-connection
            // bound of 2 the answer is RESOURCE_EXHAUSTED at once.
            local.kill(2);
            local.kill(3);
            let waiting: Vec<_> = (10..12)
                .map(|id| {
                    let mut ordering = ordering.clone();
                    tokio::spawn(async move {
                        ordering.submit(proto::SubmitRequest { client: 1, id, payload: b"waits".to_vec() }).await
                    })
                })
                .collect();
            // Let both reach the replica.
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                let a = ordering.lookup(lookup_of(1, 10, b"waits")).await.expect("lookup").into_inner();
                let b = ordering.lookup(lookup_of(1, 11, b"waits")).await.expect("lookup").into_inner();
                if a.state == State::Pending as i32 && b.state == State::Pending as i32 {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "the two submissions did not arrive");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let status = ordering
                .submit(proto::SubmitRequest { client: 1, id: 12, payload: b"one too many".to_vec() })
                .await
                .expect_err("over the bound");
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
            // The quorum comes back: the waiting submissions are ordered.
            local.start(2).expect("restart");
            local.start(3).expect("restart");
            for task in waiting {
                let answer = task.await.expect("task").expect("ordered once the quorum is back");
                assert!(answer.into_inner().epoch > 0);
            }
            let status = probe.status(NodeIndex(0)).await.expect("status");
            assert_eq!(status.n, 4);
        };
        tokio::time::timeout(Duration::from_secs(180), test).await.expect("the test finishes within 180 s");
    });
    local.stop_all(Duration::from_secs(10));
}

/// SHA-256 of a payload, as a request's key and answers carry it.
fn digest(payload: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(payload).to_vec()
}

fn lookup_of(client: u64, id: u64, payload: &[u8]) -> proto::LookupRequest {
    proto::LookupRequest { client, id, payload_digest: digest(payload) }
}
