//! What Cloud Run tells a job's task about itself, and the trace the job
//! continues: read with the rest of the configuration, so a malformed
//! variable stops the job before it runs anything.

use whirligig_registry::JobShard;

use super::Reader;

/// `CLOUD_RUN_*` of a job's task, and `TRACEPARENT`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobConfig {
    /// `CLOUD_RUN_EXECUTION`: the execution's name.
    pub execution: Option<String>,
    /// `CLOUD_RUN_TASK_INDEX` of `CLOUD_RUN_TASK_COUNT` (default 1), try
    /// `CLOUD_RUN_TASK_ATTEMPT` (default 0); set when run as a job.
    pub shard: Option<JobShard>,
    /// `TRACEPARENT`, with `TRACESTATE`: OpenTelemetry's carrier for a
    /// process. One that does not parse starts a new trace.
    pub traceparent: Option<(String, Option<String>)>,
}

impl Reader<'_> {
    pub(super) fn job(&mut self) -> JobConfig {
        let shard = self.text("CLOUD_RUN_TASK_INDEX").is_some().then(|| JobShard {
            index: self.number("CLOUD_RUN_TASK_INDEX", 0_u32, |_| true),
            count: self.number("CLOUD_RUN_TASK_COUNT", 1_u32, |count| *count > 0),
            attempt: self.number("CLOUD_RUN_TASK_ATTEMPT", 0_u32, |_| true),
        });
        let traceparent = self.text("TRACEPARENT").map(|traceparent| (traceparent, self.text("TRACESTATE")));
        JobConfig { execution: self.text("CLOUD_RUN_EXECUTION"), shard, traceparent }
    }
}
