//! The request about the caches of git scripts: prune them now.

use oet_protocol::{CachePruned, ProtocolError, PruneCache};
use tracing::info;

use super::handler::{Handler, Services, Session};

impl Handler for PruneCache {
    /// Removes what no live procedure uses; answers once it is deleted.
    async fn handle(
        self,
        services: &Services,
        _: &mut Session,
    ) -> Result<CachePruned, ProtocolError> {
        let pruned = services.procedures.git().prune().await;
        info!(
            "pruned the caches: {} checkout(s), {} bytes; {} environment(s), {} bytes; \
             pip cache, {} bytes{}",
            pruned.checkouts,
            pruned.checkout_bytes,
            pruned.envs,
            pruned.env_bytes,
            pruned.pip_cache_bytes,
            match &pruned.pip_cache_kept {
                Some(why) => format!(" (kept: {why})"),
                None => String::new(),
            }
        );
        Ok(pruned)
    }
}
