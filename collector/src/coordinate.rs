//! The `crossbatch.v1.Coordinator` service: drivers of one run join, the run starts
//! when `--expect-drivers` have joined (or fails after `--join-timeout`), each step
//! starts on every live driver together and the next one when all have reported it
//! done. A driver whose stream ends (process died, connection cut: HTTP/2 keepalive)
//! is marked lost; the step finishes with the others and the report names it.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use crossbatch_proto::v1::coordinator_server::Coordinator;
use crossbatch_proto::v1::{
    Abort, Command, Finish, Heartbeat, JoinRequest, StartStep, StepDoneRequest, StepDoneResponse,
    command,
};
use tokio::sync::{Notify, mpsc};
use tonic::{Request, Response, Status};

type CommandTx = mpsc::Sender<Result<Command, Status>>;

#[derive(Debug)]
struct Driver {
    tx: CommandTx,
    host: String,
    /// Steps reported done.
    done: Vec<u32>,
    lost: bool,
}

#[derive(Debug, Default)]
struct Run {
    steps: u32,
    drivers: BTreeMap<String, Driver>,
    started: bool,
    /// Set when the run could not start (too few drivers in time).
    failed: Option<String>,
}

/// What the report loop needs to know of a coordinated run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunState {
    pub joined: usize,
    pub lost: Vec<String>,
    pub failed: Option<String>,
}

/// Shared by the gRPC service and the per-run tasks.
#[derive(Debug)]
pub struct Coordination {
    expect: usize,
    join_timeout: Duration,
    runs: Mutex<HashMap<String, Run>>,
    changed: Notify,
    /// Woken when a run's state changes in a way the report loop cares about.
    pub report_wake: Arc<Notify>,
}

impl Coordination {
    pub fn new(expect: usize, join_timeout: Duration, report_wake: Arc<Notify>) -> Arc<Self> {
        Arc::new(Self {
            expect: expect.max(1),
            join_timeout,
            runs: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            report_wake,
        })
    }

    fn runs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Run>> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The coordination state of `run_id`, if drivers joined it.
    pub fn state(&self, run_id: &str) -> Option<RunState> {
        let runs = self.runs();
        let r = runs.get(run_id)?;
        Some(RunState {
            joined: r.drivers.len(),
            lost: r
                .drivers
                .iter()
                .filter(|(_, d)| d.lost)
                .map(|(id, _)| id.clone())
                .collect(),
            failed: r.failed.clone(),
        })
    }

    /// Runs that failed to start, to report and forget.
    pub fn failed_runs(&self) -> Vec<(String, String)> {
        self.runs()
            .iter()
            .filter_map(|(id, r)| r.failed.clone().map(|f| (id.clone(), f)))
            .collect()
    }

    pub fn forget(&self, run_id: &str) {
        self.runs().remove(run_id);
    }

    fn mark_lost(&self, run_id: &str, driver_id: &str) {
        let mut runs = self.runs();
        if let Some(d) = runs
            .get_mut(run_id)
            .and_then(|r| r.drivers.get_mut(driver_id))
            && !d.lost
        {
            d.lost = true;
            tracing::warn!(
                run = run_id,
                driver = driver_id,
                "driver lost (its stream ended)"
            );
        }
        drop(runs);
        self.changed.notify_waiters();
        self.report_wake.notify_one();
    }

    /// Sends `cmd` to every live driver of the run; a failed send marks it lost.
    fn broadcast(&self, run_id: &str, cmd: command::Command) {
        let mut lost = Vec::new();
        {
            let runs = self.runs();
            let Some(r) = runs.get(run_id) else { return };
            for (id, d) in r.drivers.iter().filter(|(_, d)| !d.lost) {
                let msg = Ok(Command {
                    command: Some(cmd.clone()),
                });
                if d.tx.try_send(msg).is_err() {
                    lost.push(id.clone());
                }
            }
        }
        for id in lost {
            self.mark_lost(run_id, &id);
        }
    }

    /// Drives one run: wait for the drivers, then every step in lock-step.
    async fn conduct(self: Arc<Self>, run_id: String) {
        let deadline = tokio::time::Instant::now() + self.join_timeout;
        loop {
            // Created before the check, so a join in between is not missed.
            let wait = self.changed.notified();
            let joined = self
                .runs()
                .get(&run_id)
                .map(|r| r.drivers.len())
                .unwrap_or(0);
            if joined >= self.expect {
                break;
            }
            if tokio::time::timeout_at(deadline, wait).await.is_err() {
                let reason = format!(
                    "only {joined} of {} drivers joined run {run_id} within {:?}",
                    self.expect, self.join_timeout
                );
                tracing::error!("{reason}");
                self.broadcast(
                    &run_id,
                    command::Command::Abort(Abort {
                        reason: reason.clone(),
                    }),
                );
                if let Some(r) = self.runs().get_mut(&run_id) {
                    r.failed = Some(reason);
                }
                self.report_wake.notify_one();
                return;
            }
        }
        let steps = {
            let mut runs = self.runs();
            let Some(r) = runs.get_mut(&run_id) else {
                return;
            };
            r.started = true;
            r.steps
        };
        tracing::info!(run = %run_id, drivers = self.expect, steps, "all drivers joined; starting");
        for step in 0..steps {
            self.broadcast(&run_id, command::Command::Start(StartStep { step }));
            loop {
                let wait = self.changed.notified();
                let all_done = {
                    let runs = self.runs();
                    let Some(r) = runs.get(&run_id) else { return };
                    let live: Vec<&Driver> = r.drivers.values().filter(|d| !d.lost).collect();
                    if live.is_empty() {
                        tracing::error!(run = %run_id, "every driver is lost");
                        return;
                    }
                    live.iter().all(|d| d.done.contains(&step))
                };
                if all_done {
                    break;
                }
                // Heartbeats double as the check that streams are still open.
                if tokio::time::timeout(Duration::from_secs(1), wait)
                    .await
                    .is_err()
                {
                    self.broadcast(&run_id, command::Command::Heartbeat(Heartbeat {}));
                }
            }
            tracing::info!(run = %run_id, step, "step finished on every live driver");
        }
        self.broadcast(&run_id, command::Command::Finish(Finish {}));
    }
}

/// A driver's command stream; dropping it (the client went away) marks it lost.
pub struct CommandStream {
    rx: mpsc::Receiver<Result<Command, Status>>,
    coord: Arc<Coordination>,
    run_id: String,
    driver_id: String,
    finished: bool,
}

impl tokio_stream::Stream for CommandStream {
    type Item = Result<Command, Status>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let p = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(Ok(Command {
            command: Some(command::Command::Finish(_) | command::Command::Abort(_)),
        }))) = &p
        {
            self.finished = true;
        }
        p
    }
}

impl Drop for CommandStream {
    fn drop(&mut self) {
        if !self.finished {
            self.coord.mark_lost(&self.run_id, &self.driver_id);
        }
    }
}

/// The gRPC face of [`Coordination`].
#[derive(Clone)]
pub struct CoordinatorService(pub Arc<Coordination>);

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    type JoinStream = CommandStream;

    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<CommandStream>, Status> {
        let j = request.into_inner();
        if j.run_id.is_empty() || j.driver_id.is_empty() {
            return Err(Status::invalid_argument(
                "run_id and driver_id must not be empty",
            ));
        }
        if j.steps == 0 {
            return Err(Status::invalid_argument("a sweep needs at least one step"));
        }
        let (tx, rx) = mpsc::channel(64);
        let first = {
            let mut runs = self.0.runs();
            let first = !runs.contains_key(&j.run_id);
            let r = runs.entry(j.run_id.clone()).or_insert_with(|| Run {
                steps: j.steps,
                ..Default::default()
            });
            if r.started {
                return Err(Status::failed_precondition(format!(
                    "run {} has already started",
                    j.run_id
                )));
            }
            if r.steps != j.steps {
                return Err(Status::failed_precondition(format!(
                    "run {} has {} steps; this driver's sweep has {}",
                    j.run_id, r.steps, j.steps
                )));
            }
            if r.drivers.get(&j.driver_id).is_some_and(|d| !d.lost) {
                return Err(Status::already_exists(format!(
                    "driver {} is already in run {}",
                    j.driver_id, j.run_id
                )));
            }
            r.drivers.insert(
                j.driver_id.clone(),
                Driver {
                    tx,
                    host: j.host.clone(),
                    done: Vec::new(),
                    lost: false,
                },
            );
            first
        };
        tracing::info!(run = %j.run_id, driver = %j.driver_id, host = %j.host, "driver joined");
        if first {
            tokio::spawn(Arc::clone(&self.0).conduct(j.run_id.clone()));
        }
        self.0.changed.notify_waiters();
        Ok(Response::new(CommandStream {
            rx,
            coord: Arc::clone(&self.0),
            run_id: j.run_id,
            driver_id: j.driver_id,
            finished: false,
        }))
    }

    async fn step_done(
        &self,
        request: Request<StepDoneRequest>,
    ) -> Result<Response<StepDoneResponse>, Status> {
        let s = request.into_inner();
        {
            let mut runs = self.0.runs();
            let d = runs
                .get_mut(&s.run_id)
                .and_then(|r| r.drivers.get_mut(&s.driver_id))
                .ok_or_else(|| {
                    Status::not_found(format!("driver {} is not in run {}", s.driver_id, s.run_id))
                })?;
            d.done.push(s.step);
            tracing::info!(
                run = %s.run_id, driver = %s.driver_id, host = %d.host, step = s.step,
                calls = s.calls_sent, ok = s.calls_ok, "step done"
            );
        }
        self.0.changed.notify_waiters();
        Ok(Response::new(StepDoneResponse {}))
    }
}
