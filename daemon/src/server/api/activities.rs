//! The activity requests: run, list, history, and storing an SBD in the ODA.

use oet_protocol::view::script_args;
use oet_protocol::{
    ActivitySummary, ListActivities, ListActivityHistory, ProtocolError, PutSbd, RunActivity,
    SbdStored, Value,
};

use super::handler::{announce_ids, Handler, Services, Session};
use super::procedures::history_query;

impl Handler for RunActivity {
    fn announce(&self) -> Vec<(&'static str, Value)> {
        vec![
            ("activity_name", Value::from(self.activity_name.as_str())),
            ("sbd_id", Value::from(self.sbd_id.as_str())),
            ("script_args", script_args(&self.script_args)),
            ("prepare_only", Value::Bool(self.prepare_only)),
            ("create_env", Value::Bool(self.create_env)),
        ]
    }

    async fn handle(
        self,
        services: &Services,
        _: &mut Session,
    ) -> Result<ActivitySummary, ProtocolError> {
        let activity = services.activities.run(self).await?;
        services.procedures.durable().await;
        Ok(activity)
    }
}

impl Handler for ListActivities {
    fn announce(&self) -> Vec<(&'static str, Value)> {
        announce_ids(&self.ids)
    }

    async fn handle(
        self,
        services: &Services,
        _: &mut Session,
    ) -> Result<Vec<ActivitySummary>, ProtocolError> {
        Ok(services.activities.list(&self.ids)?)
    }
}

impl Handler for ListActivityHistory {
    async fn handle(
        self,
        services: &Services,
        _: &mut Session,
    ) -> Result<Vec<ActivitySummary>, ProtocolError> {
        let state = self.state.map(|state| state.as_str());
        let query = history_query(self.since, state, self.before, self.limit);
        Ok(services.activities.history(query).await?)
    }
}

impl Handler for PutSbd {
    fn announce(&self) -> Vec<(&'static str, Value)> {
        vec![("bytes", Value::from(self.json.len() as u64))]
    }

    async fn handle(
        self,
        services: &Services,
        _: &mut Session,
    ) -> Result<SbdStored, ProtocolError> {
        let sbd = services.activities.put_sbd(&self.json).await?;
        Ok(SbdStored {
            sbd_id: sbd.sbd_id,
            version: sbd.version,
        })
    }
}
