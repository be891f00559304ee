#!/usr/bin/env python3
"""Another implementation's `darts gradients` dump, for `darts compare`: the DARTS CNN
architecture gradient and every ingredient in PyTorch, float64, with the same npz keys.

The network is benches/pytorch_step.py's (written from shared/reference/REFERENCE_NOTES.md,
not from the reference code); this script loads our state and batch files into it and writes
every key `darts gradients --space cnn` writes:

    python3 benches/conv_gradients_dump.py STATE.npz BATCH.npz OUT.npz [--eta 0.025]
        [--weight-decay 3e-4] [--momentum 0.9]
    cargo run --release -- gradients --state STATE.npz --batch BATCH.npz --out ours.npz
    cargo run --release -- compare ours.npz OUT.npz

STATE.npz: `sd/<state_dict name>` for every weight and BN buffer, `alpha/normal`,
`alpha/reduce`, optionally `momentum_buffer/<weight>` (all or none); BATCH.npz: x_train,
y_train, x_valid, y_valid. The configuration (C, layers) is read from the shapes. BN runs in
training mode everywhere (batch statistics), as in the reference's search.

Keys (REFERENCE_NOTES.md sections 3-4 for the operation order):
  loss_train, grad_w_train/<p>             L_train(w, alpha) and its weight gradient
  loss_valid, grad_alpha_first/<a>         L_val(w, alpha) and its alpha gradient (xi = 0)
  unrolled_w/<p>                           w' = w - eta (mu buf + (g + lambda w))
  loss_valid_unrolled, v/<p>,              L_val(w', alpha), its gradient in w' (v) and in
  grad_alpha_unrolled_partial/<a>          alpha, with w' held
  fd_r, hvp_fd/<a>                         R = 0.01 / ||v|| and (g+ - g-) / 2R at w +- R v
                                           (w- reached from w+ by -2R v, as in place)
  fd_r_at_unrolled, hvp_fd_at_unrolled/<a> the same at w' along v + lambda w'
  hvp_exact/<a>                            d/dalpha <grad_w L_train(w, alpha), v> by autograd
  grad_alpha_second/<a>                    partial - eta hvp_fd
  grad_alpha_unrolled_exact/<a>            d/dalpha L_val(w'(alpha), alpha) by autograd
                                           through the unrolled step
It needs torch and numpy.
"""

import argparse
import os
import re
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pytorch_step import FD_SCALE, Network  # noqa: E402


def load_npz(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def build(state):
    sd = {k[3:]: v for k, v in state.items() if k.startswith("sd/")}
    c = sd["stem.0.weight"].shape[0] // 3
    layers = 1 + max(int(m.group(1)) for k in sd for m in [re.match(r"cells\.(\d+)\.", k)] if m)
    torch.manual_seed(0)
    model = Network(c, 10, layers).double()
    own = model.state_dict()
    missing = set(own) - set(sd)
    extra = set(sd) - set(own)
    if missing or extra:
        sys.exit(f"state names differ from the network's: missing {sorted(missing)[:3]}, "
                 f"unexpected {sorted(extra)[:3]}")
    model.load_state_dict({k: torch.from_numpy(np.asarray(v, dtype=np.float64)).reshape(own[k].shape)
                           .to(own[k].dtype) for k, v in sd.items()})
    alphas = [torch.tensor(state["alpha/normal"], dtype=torch.float64, requires_grad=True),
              torch.tensor(state["alpha/reduce"], dtype=torch.float64, requires_grad=True)]
    model.alphas_normal, model.alphas_reduce = alphas
    model.train()
    return model, alphas


def main(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("state")
    ap.add_argument("batch")
    ap.add_argument("out")
    ap.add_argument("--eta", type=float, default=0.025)
    ap.add_argument("--weight-decay", type=float, default=3e-4)
    ap.add_argument("--momentum", type=float, default=0.9)
    a = ap.parse_args(argv)
    torch.set_default_dtype(torch.float64)
    state, batch = load_npz(a.state), load_npz(a.batch)
    model, alphas = build(state)
    names = [n for n, _ in model.named_parameters()]
    w = [p.detach().clone() for p in model.parameters()]
    buf = [torch.tensor(state[f"momentum_buffer/{n}"], dtype=torch.float64)
           if f"momentum_buffer/{n}" in state else torch.zeros_like(p) for n, p in zip(names, w)]
    xt = torch.tensor(batch["x_train"], dtype=torch.float64)
    yt = torch.tensor(batch["y_train"]).long()
    xv = torch.tensor(batch["x_valid"], dtype=torch.float64)
    yv = torch.tensor(batch["y_valid"]).long()
    buffers = {n: b for n, b in model.named_buffers()}

    def loss_at(weights, x, y):
        """L(weights, alpha) in train mode, running buffers untouched (copies)."""
        params = dict(zip(names, weights))
        params.update({n: b.clone() for n, b in buffers.items()})
        logits = functional_call(model, params, (x,))
        return F.cross_entropy(logits, y)

    out = {}
    cells = ["normal", "reduce"]

    def put_w(key, ts):
        for n, t in zip(names, ts):
            out[f"{key}/{n}"] = t.detach().numpy().copy()

    def put_a(key, ts):
        for c, t in zip(cells, ts):
            out[f"{key}/{c}"] = t.detach().numpy().copy()

    wl = [t.clone().requires_grad_(True) for t in w]
    lt = loss_at(wl, xt, yt)
    g = torch.autograd.grad(lt, wl, create_graph=True)
    out["loss_train"] = np.array(lt.item())
    put_w("grad_w_train", g)
    lv = loss_at(w, xv, yv)
    out["loss_valid"] = np.array(lv.item())
    put_a("grad_alpha_first", torch.autograd.grad(lv, alphas))
    eta, lam, mu = a.eta, a.weight_decay, a.momentum
    # w' = w - eta ((mu buf) + (g + lambda w)), the reference's operation order.
    w_prime = [wi - ((b * mu) + (gi.detach() + wi * lam)) * eta for wi, gi, b in zip(w, g, buf)]
    put_w("unrolled_w", w_prime)
    wp = [t.clone().requires_grad_(True) for t in w_prime]
    lvu = loss_at(wp, xv, yv)
    out["loss_valid_unrolled"] = np.array(lvu.item())
    grads = torch.autograd.grad(lvu, wp + alphas)
    v, partial = grads[: len(wp)], grads[len(wp):]
    put_w("v", v)
    put_a("grad_alpha_unrolled_partial", partial)

    def fd(at, d):
        norm = torch.sqrt(sum((t * t).sum() for t in d))
        r = FD_SCALE / norm
        plus = [p + t * r for p, t in zip(at, d)]
        minus = [p + t * (-2.0 * r) for p, t in zip(plus, d)]
        gp = torch.autograd.grad(loss_at(plus, xt, yt), alphas)
        gm = torch.autograd.grad(loss_at(minus, xt, yt), alphas)
        return r.item(), [(p - m) / (2.0 * r) for p, m in zip(gp, gm)]

    r, hvp_fd = fd(w, v)
    out["fd_r"] = np.array(r)
    put_a("hvp_fd", hvp_fd)
    r_u, hvp_u = fd(w_prime, [vi + wi * lam for vi, wi in zip(v, w_prime)])
    out["fd_r_at_unrolled"] = np.array(r_u)
    put_a("hvp_fd_at_unrolled", hvp_u)
    inner = sum((gi * vi).sum() for gi, vi in zip(g, v))
    put_a("hvp_exact", torch.autograd.grad(inner, alphas, retain_graph=True))
    put_a("grad_alpha_second", [p - eta * h for p, h in zip(partial, hvp_fd)])
    # Exact: w'(alpha) keeps its dependence on alpha through g.
    w_alpha = [wi - ((b * mu) + (gi + wi * lam)) * eta for wi, gi, b in zip(wl, g, buf)]
    put_a("grad_alpha_unrolled_exact", torch.autograd.grad(loss_at(w_alpha, xv, yv), alphas))
    np.savez(a.out, **out)
    print(f"wrote {len(out)} arrays to {a.out}: L_train {out['loss_train']:.10f} "
          f"L_val {out['loss_valid']:.10f} R {r:.6e}")


if __name__ == "__main__":
    main(sys.argv[1:])
