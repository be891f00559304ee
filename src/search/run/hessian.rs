//! `--track-hessian` and `--early-stop-hessian` in the search loop: the epoch's dominant
//! alpha-Hessian eigenvalue, and the end of a run that DARTS-ES stopped.

use super::{run_err, Finish, HessianEpoch, Search, SearchError};
use crate::darts::genotype::Genotype;
use crate::exec::Scalar;
use crate::search::alpha_hessian::{dominant_eigenvalue, AlphaHessian};
use crate::search::early_stop::EsDecision;
use std::time::Instant;

impl<T: Scalar> Search<T> {
    /// `--track-hessian` at the end of epoch `epoch`: the dominant eigenvalue of the Hessian
    /// of L_val in alpha on the epoch's last search batch at the current weights and alphas
    /// (BN in train mode, as the architect step saw that batch), by Lanczos on exact HVPs;
    /// recorded in the progress (and so in the checkpoint) with the epoch's genotype. Uses
    /// no random numbers and assigns nothing: the search itself is unchanged.
    pub(super) fn track_hessian(&mut self, epoch: usize) -> Result<HessianEpoch, SearchError> {
        let err = |cause| SearchError::Hessian { epoch, cause };
        let batch = self
            .last_search
            .take()
            .ok_or_else(|| SearchError::Checkpoint {
                path: self.run_dir.join("checkpoint.npz").display().to_string(),
                reason: format!("no search batch of epoch {epoch} for the alpha Hessian"),
            })?;
        let n = batch.x.shape()[0];
        if !self.hessian_graphs.contains_key(&n) {
            let g = AlphaHessian::build(&self.cfg, batch.x.shape()).map_err(err)?;
            self.hessian_graphs.insert(n, g);
        }
        let graph = &self.hessian_graphs[&n];
        let feeds = graph
            .batch_feeds::<T>(&batch.x, &batch.onehot)
            .map_err(err)?;
        let t = Instant::now();
        let exec = self.stepper.executor()?;
        let estimate =
            dominant_eigenvalue(graph, exec, &feeds, &self.opts.hessian.lanczos).map_err(err)?;
        let h = HessianEpoch {
            epoch,
            estimate,
            genotype: self.genotype().to_string(),
            seconds: t.elapsed().as_secs_f64(),
        };
        if self.progress.hessian.len() != epoch {
            return Err(SearchError::Checkpoint {
                path: self.run_dir.join("checkpoint.npz").display().to_string(),
                reason: format!(
                    "the alpha-Hessian series has {} entries at the end of epoch {epoch}",
                    self.progress.hessian.len()
                ),
            });
        }
        self.progress.hessian.push(h.clone());
        Ok(h)
    }

    /// The end of a run DARTS-ES stopped: the genotype of epoch `return_epoch`, written to
    /// genotype.txt.
    pub(super) fn early_stopped(&mut self, decision: EsDecision) -> Result<Finish, SearchError> {
        let ck = |reason: String| SearchError::Checkpoint {
            path: self.run_dir.join("checkpoint.npz").display().to_string(),
            reason,
        };
        let text = self
            .progress
            .hessian
            .get(decision.return_epoch)
            .map(|h| h.genotype.clone())
            .ok_or_else(|| ck(format!("no genotype of epoch {}", decision.return_epoch)))?;
        let genotype: Genotype = text
            .parse()
            .map_err(|e| ck(format!("genotype of epoch {}: {e}", decision.return_epoch)))?;
        self.stepper.sync_host()?;
        std::fs::write(self.run_dir.join("genotype.txt"), format!("{genotype}\n"))
            .map_err(|e| run_err(&self.run_dir, e))?;
        Ok(Finish::EarlyStopped { genotype, decision })
    }
}
