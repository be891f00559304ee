//! `--audit-every` in the search loop: audits handed to the auditor's thread, and their
//! lines appended to log.jsonl.

use super::{Search, SearchError};
use crate::data::Batch;
use crate::exec::Scalar;

impl<T: Scalar> Search<T> {
    /// The audit of the architecture gradient at the current state on this step's batches
    /// ([`crate::search::audit`]), run beside the following steps on the auditor's thread;
    /// finished audits are appended to log.jsonl as `{"audit": ..., "step", "epoch", "lr"}`
    /// (in step order, all of them before any checkpoint).
    pub(super) fn audit(
        &mut self,
        train: &Batch,
        search: &Batch,
        epoch: usize,
    ) -> Result<(), SearchError> {
        let step = self.progress.global_step;
        self.stepper
            .sync_host()
            .map_err(|cause| SearchError::Step { epoch, step, cause })?;
        let o = &self.opts;
        let worker = self.auditor.get_or_insert_with(|| {
            crate::search::audit::AuditWorker::spawn(o.momentum, o.weight_decay, o.neumann_terms)
        });
        let done = worker.submit(crate::search::audit::AuditJob {
            cfg: self.cfg,
            state: self.stepper.state.clone(),
            opt: self.stepper.opt.clone(),
            train: train.clone(),
            valid: search.clone(),
            lr: self.opts.lr(epoch),
            step,
            epoch,
        });
        self.log_audits(done)
    }

    /// Waits for the audit in flight and logs it.
    pub(super) fn finish_audits(&mut self) -> Result<(), SearchError> {
        let done = match self.auditor.as_mut() {
            Some(w) => w.finish(),
            None => return Ok(()),
        };
        self.log_audits(done)
    }

    fn log_audits(
        &mut self,
        done: Vec<crate::search::audit::AuditDone>,
    ) -> Result<(), SearchError> {
        for d in done {
            let a = d.result.map_err(|reason| SearchError::Audit {
                step: d.step,
                reason,
            })?;
            let line =
                serde_json::json!({ "audit": a, "step": d.step, "epoch": d.epoch, "lr": d.lr });
            self.append_log(&line)?;
        }
        Ok(())
    }
}
