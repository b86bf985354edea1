//! Coordinated runs: the driver joins its run at the collector's
//! `crossbatch.v1.Coordinator` and starts each step only when told, so N drivers on
//! N hosts load the server together, step by step.

use std::time::{Duration, Instant};

use crossbatch_proto::collector_access::CollectorAccess;
use crossbatch_proto::v1::coordinator_client::CoordinatorClient;
use crossbatch_proto::v1::{Command, JoinRequest, StepDoneRequest, command};
use tonic::Streaming;
use tonic::transport::Channel;

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("coordinator at {url}: {message}")]
    Connect { url: String, message: String },
    #[error("the coordinator refused this driver: {0}")]
    Refused(String),
    #[error("the coordinator aborted the run: {0}")]
    Aborted(String),
    #[error("lost the coordinator: {0}")]
    Lost(String),
}

/// What the coordinator said to do next.
#[derive(Debug, PartialEq)]
pub enum Next {
    Start,
    /// The run is over (no more steps for this driver).
    Finish,
}

pub struct Gate {
    client: CoordinatorClient<Channel>,
    /// The collector's API key and CA, from the environment.
    access: CollectorAccess,
    commands: Streaming<Command>,
    run_id: String,
    driver_id: String,
}

impl Gate {
    /// Joins `run_id`, retrying the connection for up to `timeout`. An API key or CA
    /// the collector needs come from the environment (`CollectorAccess::from_env`).
    pub async fn join(
        url: &str,
        run_id: &str,
        driver_id: &str,
        host: &str,
        steps: usize,
        timeout: Duration,
    ) -> Result<Gate, GateError> {
        let until = Instant::now() + timeout;
        let connect_err = |message: String| GateError::Connect {
            url: url.to_string(),
            message,
        };
        let access = CollectorAccess::from_env().map_err(connect_err)?;
        let channel = loop {
            let endpoint = access
                .endpoint(url)
                .map_err(connect_err)?
                .http2_keep_alive_interval(Duration::from_secs(2))
                .keep_alive_timeout(Duration::from_secs(4));
            match endpoint.connect().await {
                Ok(ch) => break ch,
                Err(e) if Instant::now() >= until => return Err(connect_err(e.to_string())),
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        };
        let mut client = CoordinatorClient::new(channel);
        let mut join = tonic::Request::new(JoinRequest {
            run_id: run_id.to_string(),
            driver_id: driver_id.to_string(),
            host: host.to_string(),
            steps: steps as u32,
        });
        access.authorize(&mut join);
        let commands = client
            .join(join)
            .await
            .map_err(|s| GateError::Refused(s.message().to_string()))?
            .into_inner();
        Ok(Gate {
            client,
            access,
            commands,
            run_id: run_id.to_string(),
            driver_id: driver_id.to_string(),
        })
    }

    /// Waits for the coordinator to start `step` (heartbeats are skipped).
    pub async fn wait_start(&mut self, step: usize) -> Result<Next, GateError> {
        loop {
            let msg = self
                .commands
                .message()
                .await
                .map_err(|s| GateError::Lost(s.message().to_string()))?
                .ok_or_else(|| GateError::Lost("the command stream ended".into()))?;
            match msg.command {
                Some(command::Command::Start(s)) if s.step as usize == step => {
                    return Ok(Next::Start);
                }
                Some(command::Command::Start(s)) => {
                    return Err(GateError::Lost(format!(
                        "told to start step {} while at step {step}",
                        s.step
                    )));
                }
                Some(command::Command::Finish(_)) => return Ok(Next::Finish),
                Some(command::Command::Abort(a)) => return Err(GateError::Aborted(a.reason)),
                Some(command::Command::Heartbeat(_)) | None => {}
            }
        }
    }

    /// Reports `step` done.
    pub async fn done(
        &mut self,
        step: usize,
        calls_sent: usize,
        calls_ok: usize,
    ) -> Result<(), GateError> {
        let mut request = tonic::Request::new(StepDoneRequest {
            run_id: self.run_id.clone(),
            driver_id: self.driver_id.clone(),
            step: step as u32,
            calls_sent: calls_sent as u64,
            calls_ok: calls_ok as u64,
        });
        self.access.authorize(&mut request);
        self.client
            .step_done(request)
            .await
            .map(|_| ())
            .map_err(|s| GateError::Lost(s.message().to_string()))
    }

    /// After the last step: waits for the coordinator's Finish.
    pub async fn wait_finish(&mut self) -> Result<(), GateError> {
        match self.wait_start(usize::MAX).await {
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
