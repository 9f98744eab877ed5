//! The procedure requests: create, start, stop, list and logs.

use oet_protocol::view::{function_args, script};
use oet_protocol::{
    CreateProcedure, GetLogs, ListProcedures, ProcedureLogs, ProcedureSummary, ProtocolError,
    StartProcedure, StopProcedure, Value,
};

use super::handler::{Handler, Services, Session};

impl Handler for CreateProcedure {
    fn announce(&self) -> Vec<(&'static str, Value)> {
        vec![
            ("script_uri", Value::from(self.script.uri())),
            ("script", script(&self.script)),
            ("init_args", function_args(&self.init_args)),
        ]
    }

    async fn handle(
        self,
        services: &Services,
        _: &mut Session,
    ) -> Result<ProcedureSummary, ProtocolError> {
        Ok(services.procedures.create(self.script, self.init_args)?)
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
        Ok(services
            .procedures
            .start(self.id, &self.function, self.args)?)
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
        Ok(services.procedures.stop(self.id, self.run_abort).await?)
    }
}

impl Handler for ListProcedures {
    async fn handle(
        self,
        services: &Services,
        _: &mut Session,
    ) -> Result<Vec<ProcedureSummary>, ProtocolError> {
        Ok(services.procedures.list(&self.ids)?)
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
