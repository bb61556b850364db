//! Real replica processes on 127.0.0.1 whose links lose frames: every replica loses a share of the
//! frames it sends (the hidden `--fault-drop-frames` switch, below the transport's retransmission),
//! and the cluster must still order requests into identical logs.

mod common;

use std::time::Duration;

use common::*;
use fides_client_sdk::Ordered;

const UP: Duration = Duration::from_secs(60);

/// The share of frames every replica loses, in percent.
const LOSS_PERCENT: &str = "15";

#[test]
fn four_replicas_that_each_lose_a_share_of_their_frames_stay_live_and_agree() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().expect("temporary directory");
    let _logs = LogsOnFailure::new(dir.path(), 4);
    let mut local = cluster(dir.path(), 4, 1, &["--fault-drop-frames", LOSS_PERCENT]);
    runtime_test(
        async {
            let probe = client(dir.path(), Duration::from_secs(5));
            local.start_all().expect("start");
            for i in 0..4 {
                wait_up(&probe, &mut local, i, UP).await;
            }
            let mut tasks = Vec::new();
            for c in 0..2u32 {
                let client = client(dir.path(), Duration::from_secs(5));
                tasks.push(tokio::spawn(async move {
                    let mut acknowledged = Vec::new();
                    for r in 0..8u32 {
                        let payload = format!("client {c} request {r}").into_bytes();
                        acknowledged.push((client.submit_quorum(payload.clone()).await.expect("ordered"), payload));
                    }
                    acknowledged
                }));
            }
            let mut acknowledged: Vec<(Ordered, Vec<u8>)> = Vec::new();
            for task in tasks {
                acknowledged.extend(task.await.expect("client task"));
            }
            let max_epoch = acknowledged.iter().map(|(o, _)| o.epoch).max().unwrap_or(0);
            wait_converged(&probe, &[0, 1, 2, 3], max_epoch + 1, UP).await;
            let logs = logs(&probe, &[0, 1, 2, 3]).await;
            assert_logs_agree(&logs);
            assert_acknowledged_present(&logs, &acknowledged);
            let total: usize = logs[0].values().map(|b| b.requests.len()).sum();
            assert_eq!(total, 16, "every request is ordered exactly once");
        },
        Duration::from_secs(90),
    );
    local.stop_all(Duration::from_secs(10));
}
