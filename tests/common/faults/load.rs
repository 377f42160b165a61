//! The fault suite's load: workers submitting [`fault_task`]s to the live nodes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::fault_task;
use crate::common::cluster::CLUSTER_DEADLINE;
use crate::common::http_client;
use crate::common::tasks::eventually_within;

/// One submission: the task's marker, the node it went to, and the task id (202) or what
/// came back instead.
#[derive(Debug, Clone)]
pub struct Submission {
    pub marker: String,
    pub node: String,
    pub result: Result<String, String>,
}

/// Workers that each submit a [`fault_task`] to the current targets in turn, pausing
/// between submissions, until stopped. A submission gets 5 s; a node that does not answer
/// (paused, killed) holds up only the worker waiting for it.
pub struct Load {
    targets: Arc<Mutex<Vec<(String, String)>>>,
    stop: watch::Sender<bool>,
    submissions: Arc<Mutex<Vec<Submission>>>,
    workers: Vec<JoinHandle<()>>,
}

impl Load {
    pub fn start(targets: Vec<(String, String)>, workers: usize, pause: Duration) -> Load {
        let targets = Arc::new(Mutex::new(targets));
        let stop = watch::Sender::new(false);
        let submissions = Arc::new(Mutex::new(Vec::new()));
        let turn = Arc::new(AtomicUsize::new(0));
        let workers = (0..workers)
            .map(|_| {
                let (targets, submissions, turn) =
                    (targets.clone(), submissions.clone(), turn.clone());
                let mut stopped = stop.subscribe();
                tokio::spawn(async move {
                    let client = http_client();
                    while !*stopped.borrow() {
                        let n = turn.fetch_add(1, Ordering::Relaxed);
                        let target = {
                            let targets = targets.lock().expect("the load's targets");
                            (!targets.is_empty()).then(|| targets[n % targets.len()].clone())
                        };
                        if let Some((node, url)) = target {
                            let marker = uuid::Uuid::now_v7().simple().to_string();
                            let task = fault_task(&marker, 200 + (n as u64 * 53) % 301);
                            let result = submit(&client, &url, &task).await;
                            submissions.lock().expect("submissions").push(Submission {
                                marker,
                                node,
                                result,
                            });
                        }
                        tokio::select! {
                            _ = stopped.changed() => {}
                            _ = tokio::time::sleep(pause) => {}
                        }
                    }
                })
            })
            .collect();
        Load {
            targets,
            stop,
            submissions,
            workers,
        }
    }

    /// Submits to these nodes from now on (none: the workers idle).
    pub fn set_targets(&self, targets: Vec<(String, String)>) {
        *self.targets.lock().expect("the load's targets") = targets;
    }

    pub fn accepted(&self) -> usize {
        let submissions = self.submissions.lock().expect("submissions");
        submissions.iter().filter(|s| s.result.is_ok()).count()
    }

    /// Waits until `n` submissions in all were accepted.
    pub async fn wait_accepted(&self, n: usize) {
        eventually_within(CLUSTER_DEADLINE, &format!("{n} tasks accepted"), || async {
            let got = self.accepted();
            let last = self
                .submissions
                .lock()
                .expect("submissions")
                .last()
                .cloned();
            if got >= n {
                Ok(())
            } else {
                Err(format!("{got} accepted; last submission {last:?}"))
            }
        })
        .await
    }

    /// Stops the workers (each finishes the submission it is sending) and returns every
    /// submission.
    pub async fn stop(self) -> Vec<Submission> {
        self.stop.send_replace(true);
        for worker in self.workers {
            worker.await.expect("a load worker panicked");
        }
        self.submissions.lock().expect("submissions").clone()
    }
}

async fn submit(client: &reqwest::Client, url: &str, task: &Value) -> Result<String, String> {
    let response = client
        .post(format!("{url}/api/v1/tasks"))
        .timeout(Duration::from_secs(5))
        .json(task)
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                "timeout".to_string()
            } else {
                "connection".to_string()
            }
        })?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or_default();
    match body["task_id"].as_str() {
        Some(id) if status == StatusCode::ACCEPTED => Ok(id.to_string()),
        _ => Err(status.as_u16().to_string()),
    }
}
