//! One whole recurrent search step (architecture step + weight step with TAR, as the one
//! recurrent step graph runs it: src/search/recurrent_step.rs through
//! src/search/recurrent_run.rs) on the CPU executor in f32 at V = 10000 (PTB), H = 64,
//! batch 32, seq_len 35, the reference's search dropouts, first and second order. Bench IDs:
//! `rnn_search_step_v10000_h64_b32_t35_f32/<order>`. The PyTorch side of the same
//! configuration is benches/rnn_pytorch_step.py (the unmodified reference's Architect and
//! model, one thread); results in benches/results/.

use criterion::{criterion_group, criterion_main, Criterion};
use darts::data::ptb::Corpus;
use darts::exec::cpu::CpuExecutor;
use darts::search::architect::Order;
use darts::search::recurrent_run::{RnnSearch, RnnSearchOptions};
use darts::search::recurrent_step::RnnStepHyper;
use std::time::Instant;

fn setup(order: Order, corpus: &Corpus) -> RnnSearch<f32> {
    let mut o = RnnSearchOptions::paper();
    o.nhid = 64;
    o.batch_size = 32;
    o.order = order;
    o.hyper = RnnStepHyper::reference();
    o.checkpoint_every = 0;
    let dir =
        std::env::temp_dir().join(format!("darts-rnn-bench-{order:?}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    RnnSearch::<f32>::new(o, corpus, &dir, Box::new(CpuExecutor::<f32>::new())).unwrap()
}

fn one(s: &mut RnnSearch<f32>) {
    s.progress.pos = 0;
    s.step_with(35).unwrap();
}

fn bench(c: &mut Criterion) {
    let corpus = Corpus::embedded().unwrap();
    let mut group = c.benchmark_group("rnn_search_step_v10000_h64_b32_t35_f32");
    group.sample_size(10);
    for (name, order) in [
        ("first_order", Order::First),
        ("second_order", Order::Second),
    ] {
        let mut s = setup(order, &corpus);
        one(&mut s);
        let t = Instant::now();
        for _ in 0..3 {
            one(&mut s);
        }
        println!(
            "{name}: {:.4} s per step (plain timing, 3 steps)",
            t.elapsed().as_secs_f64() / 3.0
        );
        group.bench_function(name, |b| b.iter(|| one(&mut s)));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
