//! The requests about the daemon itself and its events: status, subscribe and reload.

use std::time::SystemTime;

use oet_protocol::{
    DaemonStatus, GetStatus, ProtocolError, Reload, Reloaded, Subscribe, PROTOCOL_VERSION,
};

use super::handler::{Handler, Services, Session};
use crate::events::Topics;

impl Handler for GetStatus {
    async fn handle(
        self,
        services: &Services,
        _: &mut Session,
    ) -> Result<DaemonStatus, ProtocolError> {
        // Measured first (it may take a moment): the rest is a snapshot of one instant.
        let caches = services.procedures.git().usage().await;
        let (live, running) = services.procedures.counts();
        Ok(DaemonStatus {
            server: format!("oetd {}", env!("CARGO_PKG_VERSION")),
            protocol_version: PROTOCOL_VERSION,
            pid: std::process::id(),
            socket: services.socket.clone(),
            started_at: services
                .started_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            procedures_live: live,
            running,
            stop_grace_secs: services.procedures.stop_grace().as_secs_f64(),
            store: services.procedures.store().path().display().to_string(),
            store_problem: services
                .procedures
                .store()
                .problem()
                .map(|problem| problem.to_string()),
            containment: services.procedures.containment(),
            zygotes: services.procedures.zygotes(),
            caches,
        })
    }
}

impl Handler for Subscribe {
    /// Subscribes at once, so that nothing published after the answer is missed; the
    /// connection turns into an event stream once the answer is sent.
    async fn handle(self, services: &Services, session: &mut Session) -> Result<(), ProtocolError> {
        let topics = if self.topics.is_empty() {
            Topics::All
        } else {
            Topics::Prefixes(self.topics)
        };
        session.subscription = Some(services.procedures.bus().subscribe_to(topics));
        Ok(())
    }
}

impl Handler for Reload {
    async fn handle(self, services: &Services, _: &mut Session) -> Result<Reloaded, ProtocolError> {
        services.reload.reload().await
    }
}
