//! What every crossbatch program does alike at its edges: stop on SIGINT or SIGTERM,
//! and ask a server whether its scoring API is SERVING.

use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The service name the server reports health under.
pub const SCORING_SERVICE: &str = "crossbatch.v1.CrossEncoder";

/// Resolves on Ctrl-C (SIGINT) or SIGTERM (`docker stop`, orchestrators): each program
/// then stops cleanly rather than dying mid-write.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// The scoring API's health on `channel`: `Ok(None)` when SERVING, `Ok(Some(status))`
/// with the status it reported otherwise (NOT_SERVING while the model loads or the
/// server drains), `Err` when the call itself failed.
pub async fn not_serving(channel: Channel) -> Result<Option<ServingStatus>, tonic::Status> {
    let r = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: SCORING_SERVICE.into(),
        })
        .await?;
    let status = ServingStatus::try_from(r.get_ref().status).unwrap_or(ServingStatus::Unknown);
    Ok((status != ServingStatus::Serving).then_some(status))
}
