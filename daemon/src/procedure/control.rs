//! What the procedure service asks of a procedure's supervisor, through the inbox the
//! procedure's record keeps.

use oet_protocol::FunctionArgs;
use tokio::sync::oneshot;

#[derive(Debug)]
pub(super) enum Control {
    /// Call a function; the call is already recorded and the procedure RUNNING.
    Call {
        function: String,
        args: FunctionArgs,
    },
    /// Stop the process; `done` is answered once the state is final.
    Stop { done: oneshot::Sender<()> },
}
