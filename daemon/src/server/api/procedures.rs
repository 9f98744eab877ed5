//! The procedure requests: create, start, stop, list, history and logs. A request that
//! changes something answers once the change is written to the store.

use oet_protocol::view::{function_args, script};
use oet_protocol::{
    CreateProcedure, GetLogs, ListProcedureHistory, ListProcedures, ProcedureLogs,
    ProcedureSummary, ProtocolError, StartProcedure, StopProcedure, Value, HISTORY_PAGE_MAX,
};

use super::handler::{announce_ids, Handler, Services, Session};
use crate::procedure::script::shown;
use crate::store::HistoryQuery;

impl Handler for CreateProcedure {
    fn made(answer: &ProcedureSummary) -> Option<u64> {
        Some(answer.id)
    }

    fn announce(&self) -> Vec<(&'static str, Value)> {
        vec![
            ("script_uri", Value::from(self.script.uri())),
            // As it is recorded: a repository's credentials never reach the bus.
            ("script", script(&shown(&self.script))),
            ("init_args", function_args(&self.init_args)),
        ]
    }

    async fn handle(
        self,
        services: &Services,
        _: &mut Session,
    ) -> Result<ProcedureSummary, ProtocolError> {
        let created = services
            .procedures
            .create(self.script, self.init_args)
            .await?;
        services.procedures.durable().await;
        Ok(created)
    }
}

impl Handler for StartProcedure {
    fn procedure_id(&self) -> Option<u64> {
        Some(self.id)
    }

    fn announce(&self) -> Vec<(&'static str, Value)> {
        vec![
            ("procedure_id", Value::from(self.id)),
            ("function", Value::from(self.function.as_str())),
            ("args", function_args(&self.args)),
        ]
    }

    async fn handle(
        self,
        services: &Services,
        _: &mut Session,
    ) -> Result<ProcedureSummary, ProtocolError> {
        let started = services
            .procedures
            .start(self.id, &self.function, self.args)?;
        services.procedures.durable().await;
        Ok(started)
    }
}

impl Handler for StopProcedure {
    fn procedure_id(&self) -> Option<u64> {
        Some(self.id)
    }

    fn announce(&self) -> Vec<(&'static str, Value)> {
        vec![
            ("procedure_id", Value::from(self.id)),
            ("run_abort", Value::Bool(self.run_abort)),
        ]
    }

    async fn handle(
        self,
        services: &Services,
        _: &mut Session,
    ) -> Result<Vec<ProcedureSummary>, ProtocolError> {
        let stopped = services.procedures.stop(self.id, self.run_abort).await?;
        services.procedures.durable().await;
        Ok(stopped)
    }
}

impl Handler for ListProcedures {
    fn announce(&self) -> Vec<(&'static str, Value)> {
        announce_ids(&self.ids)
    }

    async fn handle(
        self,
        services: &Services,
        _: &mut Session,
    ) -> Result<Vec<ProcedureSummary>, ProtocolError> {
        Ok(services.procedures.list(&self.ids)?)
    }
}

impl Handler for ListProcedureHistory {
    async fn handle(
        self,
        services: &Services,
        _: &mut Session,
    ) -> Result<Vec<ProcedureSummary>, ProtocolError> {
        let state = self.state.map(|state| state.as_str());
        let query = history_query(self.since, state, self.before, self.limit);
        Ok(services.procedures.history(query).await?)
    }
}

/// The page of the history a request asks for; at most [`HISTORY_PAGE_MAX`] records.
pub(super) fn history_query(
    since: Option<f64>,
    state: Option<&'static str>,
    before: Option<u64>,
    limit: u32,
) -> HistoryQuery {
    HistoryQuery {
        since,
        state,
        before,
        limit: if limit == 0 {
            HISTORY_PAGE_MAX
        } else {
            limit.min(HISTORY_PAGE_MAX)
        },
    }
}

impl Handler for GetLogs {
    fn procedure_id(&self) -> Option<u64> {
        Some(self.id)
    }

    fn announce(&self) -> Vec<(&'static str, Value)> {
        vec![("procedure_id", Value::from(self.id))]
    }

    async fn handle(
        self,
        services: &Services,
        _: &mut Session,
    ) -> Result<ProcedureLogs, ProtocolError> {
        Ok(services.procedures.logs(self.id)?)
    }
}
