//! The bilevel search: the architecture gradient (first order, the paper's second order by
//! finite differences, and exact), the architect step and the weight optimiser; and the
//! evaluation training of a found genotype from scratch.

pub mod architect;
pub mod checkpoint;
pub mod optim;
pub mod run;
pub mod step_graph;
pub mod train_eval;

/// How a training or search step runs.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum StepMode {
    /// Gradients from the executor; the optimisers run on the host in f64 (src/search/optim.rs).
    Host,
    /// The whole step as one graph, every piece of state kept in the executor's variables (on
    /// the GPU in device memory) between steps (src/search/step_graph.rs).
    Resident,
}

impl StepMode {
    /// The mode given, else resident on the GPU and host on the CPU.
    pub fn or_default_for(mode: Option<StepMode>, backend: crate::exec::Backend) -> StepMode {
        mode.unwrap_or(match backend {
            crate::exec::Backend::Gpu => StepMode::Resident,
            crate::exec::Backend::Cpu => StepMode::Host,
        })
    }
}
