//! `darts train --space rnn`: train a recurrent genotype's language model from scratch on
//! Penn Treebank, as rnn/train.py does ([`darts::train::recurrent`]).

use super::train::{Args, Preset};
use anyhow::{bail, Context, Result};
use darts::darts::rnn::genotype::{named, RnnGenotype};
use darts::data::ptb::Corpus;
use darts::exec::{Executor, ExecutorUser, Scalar};
use darts::train::recurrent::{RnnEpoch, RnnTrainOptions, RnnTrainReport, RnnTrainer};

/// The flags only the recurrent training has (train.py's names).
#[derive(clap::Args, Debug, Default)]
pub struct RnnTrainFlags {
    /// emsize = nhid = nhidlast [quick 32, paper 850].
    #[arg(long)]
    pub nhid: Option<usize>,
    /// Sequence length [35].
    #[arg(long)]
    pub bptt: Option<usize>,
    /// Validation batch size [10].
    #[arg(long)]
    pub eval_batch_size: Option<usize>,
    /// Test batch size [quick 10, paper 1].
    #[arg(long)]
    pub test_batch_size: Option<usize>,
    #[command(flatten)]
    pub dropouts: super::search_rnn::DropoutFlags,
    /// TAR's beta [1e-3].
    #[arg(long)]
    pub beta: Option<f64>,
    /// AR's alpha [0].
    #[arg(long)]
    pub alpha: Option<f64>,
    /// NT-ASGD's non-monotone interval [5].
    #[arg(long)]
    pub nonmono: Option<usize>,
    /// Use only the first N rows of the batchified train split [quick 4000, paper all].
    #[arg(long)]
    pub max_train_rows: Option<usize>,
    /// Use only the first N rows of the batchified valid and test splits [quick 2000].
    #[arg(long)]
    pub max_eval_rows: Option<usize>,
}

impl RnnTrainFlags {
    pub fn refuse_for_cnn(&self) -> Result<()> {
        let given = [
            ("--nhid", self.nhid.is_some()),
            ("--bptt", self.bptt.is_some()),
            ("--eval-batch-size", self.eval_batch_size.is_some()),
            ("--test-batch-size", self.test_batch_size.is_some()),
            ("--beta", self.beta.is_some()),
            ("--alpha", self.alpha.is_some()),
            ("--nonmono", self.nonmono.is_some()),
            ("--max-train-rows", self.max_train_rows.is_some()),
            ("--max-eval-rows", self.max_eval_rows.is_some()),
        ];
        if let Some((flag, _)) = given.iter().find(|g| g.1) {
            bail!("{flag} applies to --space rnn only");
        }
        self.dropouts.refuse_for_cnn()
    }
}

fn options(a: &Args) -> Result<RnnTrainOptions> {
    for (flag, given) in [
        ("--init-channels", a.init_channels.is_some()),
        ("--layers", a.layers.is_some()),
        ("--momentum", a.momentum.is_some()),
        ("--auxiliary", a.auxiliary.is_some()),
        ("--auxiliary-weight", a.auxiliary_weight.is_some()),
        ("--cutout", a.cutout.is_some()),
        ("--cutout-length", a.cutout_length.is_some()),
        ("--drop-path-prob", a.drop_path_prob.is_some()),
        ("--train-limit", a.train_limit.is_some()),
        ("--test-limit", a.test_limit.is_some()),
    ] {
        if given {
            bail!(
                "{flag} applies to --space cnn only (the recurrent training has no such setting)"
            );
        }
    }
    let mut o = match a.preset {
        Preset::Quick => RnnTrainOptions::quick(),
        Preset::Paper => RnnTrainOptions::paper(),
    };
    let r = &a.rnn;
    macro_rules! set {
        ($($src:expr => $dst:expr),* $(,)?) => { $( if let Some(v) = $src { $dst = v; } )* };
    }
    set!(
        a.dtype => o.dtype, a.backend => o.backend, a.seed => o.seed, a.epochs => o.epochs,
        a.batch_size => o.batch_size, a.learning_rate => o.lr, a.weight_decay => o.weight_decay,
        a.grad_clip => o.clip, r.nhid => o.nhid, r.bptt => o.bptt,
        r.eval_batch_size => o.eval_batch_size, r.test_batch_size => o.test_batch_size,
        r.beta => o.tar_beta, r.alpha => o.ar_alpha, r.nonmono => o.nonmono,
    );
    if r.max_train_rows.is_some() {
        o.max_train_rows = r.max_train_rows;
    }
    if r.max_eval_rows.is_some() {
        o.max_eval_rows = r.max_eval_rows;
    }
    use super::Sign::{NonNegative, Positive};
    super::check_flags(
        &[
            ("--learning-rate", o.lr, Positive),
            ("--weight-decay", o.weight_decay, NonNegative),
            ("--grad-clip", o.clip, Positive),
            ("--beta", o.tar_beta, NonNegative),
            ("--alpha", o.ar_alpha, NonNegative),
        ],
        0.0,
    )?;
    r.dropouts.apply(&mut o.dropouts)?;
    for (flag, v, min) in [
        ("--nhid", o.nhid, 1),
        ("--epochs", o.epochs, 1),
        ("--batch-size", o.batch_size, 1),
        ("--eval-batch-size", o.eval_batch_size, 1),
        ("--test-batch-size", o.test_batch_size, 1),
        ("--bptt", o.bptt, 2),
        ("--max-train-rows", o.max_train_rows.unwrap_or(3), 3),
        ("--max-eval-rows", o.max_eval_rows.unwrap_or(2), 2),
    ] {
        if v < min {
            bail!("{flag} {v}: must be at least {min}");
        }
    }
    if o.nhid > 100_000 || o.batch_size > 1_000_000 || o.bptt > 100_000 {
        bail!(
            "--nhid {} --batch-size {} --bptt {}: absurdly large",
            o.nhid,
            o.batch_size,
            o.bptt
        );
    }
    Ok(o)
}

fn genotype(a: &Args) -> Result<RnnGenotype> {
    let (text, source) = match (&a.genotype, &a.genotype_file) {
        (Some(t), _) => (t.clone(), "--genotype".to_string()),
        (None, Some(f)) => (
            std::fs::read_to_string(f)
                .with_context(|| format!("reading --genotype-file {}", f.display()))?,
            f.display().to_string(),
        ),
        (None, None) => bail!("give --genotype or --genotype-file"),
    };
    let t = text.trim();
    if let Some(g) = named(t) {
        return Ok(g);
    }
    if !t.starts_with("Genotype(") {
        bail!("{source}: unknown recurrent genotype name '{t}' (known: DARTS_V1, DARTS_V2, DARTS, or the text form Genotype(recurrent=[...], concat=...))");
    }
    t.parse::<RnnGenotype>()
        .with_context(|| format!("{source}: cannot read the recurrent genotype"))
}

pub fn run(a: &Args) -> Result<()> {
    let o = options(a)?;
    let g = genotype(a)?;
    let corpus = match &a.data_dir {
        Some(d) => Corpus::from_dir(d)?,
        None => Corpus::embedded()?,
    };
    println!("genotype: {g}");
    println!(
        "recurrent training: V={} H={} epochs={} batch={} bptt={} lr={} dropouts {:?} {:?} on {:?}",
        corpus.vocab(),
        o.nhid,
        o.epochs,
        o.batch_size,
        o.bptt,
        o.lr,
        o.dropouts,
        o.dtype,
        o.backend
    );
    let user = Start {
        opts: o.clone(),
        genotype: g,
        corpus,
    };
    let report = darts::exec::open(o.backend, o.dtype, user)??;
    println!(
        "best valid perplexity {:.2}, test perplexity {:.2} (add-one unigram on test: {:.2})",
        report.best_valid_ppl, report.test_ppl, report.unigram
    );
    println!(
        "{} parameters ({:.2} M; sum of model.parameters(), the tied embedding once)",
        report.report.parameters,
        report.report.parameters as f64 / 1e6
    );
    Ok(())
}

struct Start {
    opts: RnnTrainOptions,
    genotype: RnnGenotype,
    corpus: Corpus,
}

/// The report with the unigram baseline.
struct Done {
    report: RnnTrainReport,
    best_valid_ppl: f64,
    test_ppl: f64,
    unigram: f64,
}

impl ExecutorUser for Start {
    type Output = Result<Done>;
    fn with<T: Scalar>(self, exec: Box<dyn Executor<T>>) -> Result<Done> {
        let mut t = RnnTrainer::<T>::new(self.opts, self.corpus.vocab(), &self.genotype, exec)?;
        let mut on_epoch = |r: &RnnEpoch| {
            println!(
                "epoch {:>4}  train ppl {:9.2}  valid ppl {:9.2}  {}  {:.1} s",
                r.epoch + 1,
                r.train_ppl,
                r.valid_ppl,
                if r.asgd { "ASGD" } else { "SGD " },
                r.seconds
            );
        };
        let report = t.run(&self.corpus, &mut on_epoch)?;
        Ok(Done {
            best_valid_ppl: report.best_valid_ppl,
            test_ppl: report.test_ppl,
            unigram: self.corpus.unigram_perplexity(&self.corpus.test),
            report,
        })
    }
}
