//! Oracle (tests only): the optimisers of the bilevel loop on the host in f64, with PyTorch's exact update formulas (the reference runs
//! torch.optim): SGD with momentum and coupled weight decay for the weights w, Adam with
//! coupled weight decay for the alphas, and total-norm gradient clipping.

use ndarray::ArrayD;

/// torch.optim.SGD(lr, momentum, dampening 0, nesterov False, weight_decay):
/// d = g + lambda w; buf = d on the first step, else mu buf + d; w <- w - lr buf.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sgd {
    pub momentum: f64,
    pub weight_decay: f64,
    /// One buffer per parameter once the first step has run.
    pub buf: Option<Vec<ArrayD<f64>>>,
}

impl Sgd {
    pub fn new(momentum: f64, weight_decay: f64) -> Self {
        Sgd {
            momentum,
            weight_decay,
            buf: None,
        }
    }

    pub fn step(&mut self, params: &mut [ArrayD<f64>], grads: &[ArrayD<f64>], lr: f64) {
        let first = self.buf.is_none();
        let bufs = self
            .buf
            .get_or_insert_with(|| params.iter().map(|p| ArrayD::zeros(p.raw_dim())).collect());
        for ((p, g), b) in params.iter_mut().zip(grads).zip(bufs.iter_mut()) {
            let d = g + &(&*p * self.weight_decay);
            if first {
                *b = d;
            } else {
                b.zip_mut_with(&d, |b, &d| *b = self.momentum * *b + d);
            }
            p.zip_mut_with(b, |p, &b| *p -= lr * b);
        }
    }
}

/// torch.optim.Adam(lr, betas, eps, weight_decay) with coupled L2 decay, in PyTorch's order of
/// operations (torch/optim/adam.py, `_single_tensor_adam`, the path taken for CPU tensors):
/// g = g + lambda a; m = lerp(m, g, 1 - b1); v = b2 v + ((1 - b2) g) g;
/// a <- a + (-(lr / (1 - b1^t)) m) / (sqrt(v) / sqrt(1 - b2^t) + eps), with b^t as Python's
/// `**` computes it ([`f64::powf`]) and [`lerp`] as ATen's.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Adam {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub t: u64,
    pub m: Vec<ArrayD<f64>>,
    pub v: Vec<ArrayD<f64>>,
}

/// ATen's `lerp(start, end, weight)`: start + weight (end - start) for |weight| < 0.5, else
/// end - (end - start) (1 - weight) (the form that is exact at weight 1). With the architect's
/// beta1 = 0.5 the weight is 0.5: end - (end - start) 0.5.
pub fn lerp(start: f64, end: f64, weight: f64) -> f64 {
    if weight.abs() < 0.5 {
        start + weight * (end - start)
    } else {
        end - (end - start) * (1.0 - weight)
    }
}

impl Adam {
    /// The reference's architect optimiser: lr 3e-4, betas (0.5, 0.999), eps 1e-8, decay 1e-3.
    pub fn darts_architect() -> Self {
        Adam::new(3e-4, 0.5, 0.999, 1e-8, 1e-3)
    }

    pub fn new(lr: f64, beta1: f64, beta2: f64, eps: f64, weight_decay: f64) -> Self {
        Adam {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            t: 0,
            m: Vec::new(),
            v: Vec::new(),
        }
    }

    /// Bias corrections of step `t`: (1 - b1^t, sqrt(1 - b2^t)).
    pub fn bias_corrections(&self, t: u64) -> (f64, f64) {
        let t = t as f64;
        (1.0 - self.beta1.powf(t), (1.0 - self.beta2.powf(t)).sqrt())
    }

    /// One step of every parameter.
    pub fn step(&mut self, params: &mut [ArrayD<f64>], grads: &[ArrayD<f64>]) {
        let grads: Vec<Option<&ArrayD<f64>>> = grads.iter().map(Some).collect();
        self.step_present(params, &grads);
    }

    /// One step of the parameters whose gradient is present. As torch.optim skips a parameter
    /// whose `.grad` is None (one the loss does not use, as alphas_normal in a network of
    /// reduction cells only), an absent gradient leaves the parameter and its moments as they
    /// are: no decay, no moment update. The step count is shared: a parameter is either
    /// always present or never, so it equals PyTorch's per-parameter count.
    pub fn step_present(&mut self, params: &mut [ArrayD<f64>], grads: &[Option<&ArrayD<f64>>]) {
        if self.m.is_empty() {
            self.m = params.iter().map(|p| ArrayD::zeros(p.raw_dim())).collect();
            self.v = self.m.clone();
        }
        self.t += 1;
        let (bc1, bc2_sqrt) = self.bias_corrections(self.t);
        let neg_step_size = -(self.lr / bc1);
        let (b1, b2, eps) = (self.beta1, self.beta2, self.eps);
        let (w1, c2) = (1.0 - b1, 1.0 - b2);
        for (i, (p, g)) in params.iter_mut().zip(grads).enumerate() {
            let Some(g) = g else { continue };
            let g = *g + &(&*p * self.weight_decay);
            self.m[i].zip_mut_with(&g, |m, &g| *m = lerp(*m, g, w1));
            self.v[i].zip_mut_with(&g, |v, &g| *v = *v * b2 + c2 * g * g);
            ndarray::Zip::from(p)
                .and(&self.m[i])
                .and(&self.v[i])
                .for_each(|p, &m, &v| {
                    let denom = v.sqrt() / bc2_sqrt + eps;
                    *p += neg_step_size * m / denom;
                });
        }
    }
}

/// torch.nn.utils.clip_grad_norm_: total = ||(||g_1||, ..., ||g_n||)||_2; when
/// max_norm / (total + 1e-6) < 1 every gradient is scaled by it. Returns the total norm.
pub fn clip_grad_norm(grads: &mut [ArrayD<f64>], max_norm: f64) -> f64 {
    // Norm of the per-tensor norms, the order in which PyTorch computes it.
    let total = grads
        .iter()
        .map(|g| g.iter().map(|v| v * v).sum::<f64>().sqrt().powi(2))
        .sum::<f64>()
        .sqrt();
    let coef = max_norm / (total + 1e-6);
    if coef < 1.0 {
        for g in grads.iter_mut() {
            g.mapv_inplace(|v| v * coef);
        }
    }
    total
}

/// BN running statistics in train mode (PyTorch, momentum 0.1):
/// running_mean <- 0.9 running_mean + 0.1 mean, running_var <- 0.9 running_var + 0.1 var_unbiased
/// with var_unbiased = var_biased * m / (m - 1); num_batches_tracked += 1.
pub fn update_running_stats(
    running_mean: &mut ArrayD<f64>,
    running_var: &mut ArrayD<f64>,
    num_batches: &mut ArrayD<f64>,
    batch_mean: &ArrayD<f64>,
    batch_var_biased: &ArrayD<f64>,
    count: usize,
) {
    let momentum = 0.1;
    let unbias = count as f64 / (count as f64 - 1.0).max(1.0);
    for (r, &b) in running_mean.iter_mut().zip(batch_mean.iter()) {
        *r = (1.0 - momentum) * *r + momentum * b;
    }
    for (r, &b) in running_var.iter_mut().zip(batch_var_biased.iter()) {
        *r = (1.0 - momentum) * *r + momentum * (b * unbias);
    }
    num_batches.mapv_inplace(|v| v + 1.0);
}
