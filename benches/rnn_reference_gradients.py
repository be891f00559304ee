#!/usr/bin/env python3
"""Dump the recurrent architecture gradient of the unmodified reference (quark0/darts rnn/) in
the key format of `darts gradients --space rnn`, for `darts compare` and for the fixtures of
tests/rnn_reference.rs.

The reference no longer runs on current PyTorch as it is. This script imports its files
unchanged and applies, at run time, only the patches listed in
shared/reference/RNN_REFERENCE_NOTES.md section 9 (P1: .cuda() is the identity; P2:
nn.Embedding._backend.Embedding.apply calls F.embedding, with 0.3's "no padding" sentinel -1
mapped to None). It runs in float64.

    git clone https://github.com/quark0/darts /tmp/darts-ref   # or: the fetch tool's mirror
    python3 benches/rnn_reference_gradients.py --darts /tmp/darts-ref \
        --state S.npz --batch B.npz --out REF.npz [--eta 20 --clip 0.25 --wdecay 5e-7]

Keys written (float64): every key that `darts gradients --space rnn` writes. The reference's
own code computes loss_train, loss_valid, grad_w_train/*, grad_alpha_train (grad_alpha
L_train(w, alpha), the scale of the finite difference's round-off), grad_alpha_first, clip_coef_train,
unrolled_w/*, loss_valid_unrolled, v/*, grad_alpha_unrolled_partial, hvp_fd,
grad_alpha_second (its `_backward_step_unrolled`, run as it is) and the hidden states. It has
no exact gradient: hvp_exact, grad_alpha_unrolled_exact and grad_alpha_unrolled_intended are
computed here with torch.autograd through the reference's own unrolled step (double
backward), an implementation independent of ours.

`--make-inputs V H T_TRAIN T_VALID B SEED` writes a random state and batch instead (weights
U(-s, s) with s = --init-scale, alpha N(0, --alpha-scale), hidden N(0, 0.5), random tokens).
"""
import argparse
import os
import sys
import types

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def patch_reference(darts_dir):
    """P1 and P2 of the notes; then import the reference's rnn/ modules unchanged."""
    torch.Tensor.cuda = lambda self, *a, **k: self
    nn.Module.cuda = lambda self, *a, **k: self

    class _Emb:
        @staticmethod
        def apply(words, weight, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse):
            pad = None if padding_idx == -1 else padding_idx
            return F.embedding(words, weight, pad, max_norm, norm_type, scale_grad_by_freq, sparse)

    nn.Embedding._backend = types.SimpleNamespace(Embedding=_Emb)
    sys.path.insert(0, os.path.join(darts_dir, "rnn"))
    import model_search  # noqa: E402
    import architect  # noqa: E402
    return model_search, architect


def make_inputs(a):
    v, h, tt, tv, b, seed = a.make_inputs
    rng = np.random.default_rng(seed)
    s = a.init_scale
    sd = {"encoder.weight": rng.uniform(-s, s, (v, h)), "rnns.0._W0": rng.uniform(-s, s, (2 * h, 2 * h))}
    for i in range(8):
        sd[f"rnns.0._Ws.{i}"] = rng.uniform(-s, s, (h, 2 * h))
    sd["rnns.0.bn.running_mean"] = np.zeros(h)
    sd["rnns.0.bn.running_var"] = np.ones(h)
    sd["rnns.0.bn.num_batches_tracked"] = np.array(0, dtype=np.int64)
    sd["decoder.weight"] = sd["encoder.weight"].copy()
    sd["decoder.bias"] = rng.uniform(-s, s, (v,))
    state = {f"sd/{k}": x for k, x in sd.items()}
    state["alpha/recurrent"] = a.alpha_scale * rng.standard_normal((36, 5))
    np.savez(a.state, **state)
    batch = {}
    for which, t in (("train", tt), ("valid", tv)):
        stream = rng.integers(0, v, (t + 1, b))
        batch[f"x_{which}"] = stream[:-1].astype(np.int64)
        batch[f"y_{which}"] = stream[1:].astype(np.int64)
        batch[f"hidden_{which}"] = 0.5 * rng.standard_normal((1, b, h))
    np.savez(a.batch, **batch)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--darts", required=True, help="checkout of quark0/darts")
    p.add_argument("--state", required=True)
    p.add_argument("--batch", required=True)
    p.add_argument("--out")
    p.add_argument("--eta", type=float, default=20.0)
    p.add_argument("--clip", type=float, default=0.25)
    p.add_argument("--wdecay", type=float, default=5e-7)
    p.add_argument("--make-inputs", type=int, nargs=6, metavar=("V", "H", "T_TRAIN", "T_VALID", "B", "SEED"))
    p.add_argument("--init-scale", type=float, default=0.04)
    p.add_argument("--alpha-scale", type=float, default=1e-3)
    a = p.parse_args()
    if a.make_inputs:
        make_inputs(a)
        return
    torch.set_default_dtype(torch.float64)
    model_search, architect_mod = patch_reference(a.darts)
    st = np.load(a.state)
    bt = np.load(a.batch)
    v, h = st["sd/encoder.weight"].shape
    model = model_search.RNNModelSearch(v, h, h, h, 0.0, 0.0, 0.0, 0.0, 0.0)
    sd = {k[3:]: torch.from_numpy(np.asarray(st[k])) for k in st.files if k.startswith("sd/")}
    model.load_state_dict(sd)
    model.weights.data.copy_(torch.from_numpy(st["alpha/recurrent"]))
    model.train()
    args = types.SimpleNamespace(wdecay=a.wdecay, clip=a.clip, arch_lr=3e-3, arch_wdecay=1e-3)
    arch = architect_mod.Architect(model, args)
    ids = lambda k: torch.from_numpy(bt[k].astype(np.int64))
    xt, yt, xv, yv = ids("x_train"), ids("y_train").reshape(-1), ids("x_valid"), ids("y_valid").reshape(-1)
    ht = [torch.from_numpy(bt["hidden_train"])]
    hv = [torch.from_numpy(bt["hidden_valid"])]
    names = [n for n, _ in model.named_parameters()]
    params = list(model.parameters())
    alpha = model.weights
    out = {}

    loss, hidden_next = model._loss(ht, xt, yt)
    out["loss_train"] = loss.item()
    out["hidden_train_next"] = hidden_next[0].detach()
    grads = torch.autograd.grad(loss, params + [alpha])
    for n, g in zip(names, grads):
        out[f"grad_w_train/{n}"] = g
    out["grad_alpha_train/recurrent"] = grads[-1]
    loss, hidden_next = model._loss(hv, xv, yv)
    out["loss_valid"] = loss.item()
    out["hidden_valid_next_first"] = hidden_next[0].detach()
    out["grad_alpha_first/recurrent"] = torch.autograd.grad(loss, [alpha])[0]

    # The reference's second order, piece by piece through its own methods.
    unrolled, clip_coef = arch._compute_unrolled_model(ht, xt, yt, a.eta)
    out["clip_coef_train"] = float(clip_coef)
    for n, w in unrolled.named_parameters():
        out[f"unrolled_w/{n}"] = w.detach()
    uloss, hidden_next = unrolled._loss(hv, xv, yv)
    out["loss_valid_unrolled"] = uloss.item()
    out["hidden_valid_next_second"] = hidden_next[0].detach()
    uloss.backward()
    dalpha = unrolled.arch_parameters()[0].grad.clone()
    dtheta = [w.grad for w in unrolled.parameters()]
    architect_mod._clip(dtheta, a.clip)
    vector = [d.data.clone() for d in dtheta]
    for n, d in zip(names, vector):
        out[f"v/{n}"] = d
    out["grad_alpha_unrolled_partial/recurrent"] = dalpha
    hvp = arch._hessian_vector_product(vector, ht, xt, yt, r=1e-2)[0]
    out["hvp_fd/recurrent"] = hvp

    # The exact mixed H v at w along v (double backward).
    loss, _ = model._loss(ht, xt, yt)
    g = torch.autograd.grad(loss, params, create_graph=True)
    s = sum((gi * vi).sum() for gi, vi in zip(g, vector))
    out["hvp_exact/recurrent"] = torch.autograd.grad(s, [alpha])[0]

    # Exact and intended: autodiff through the reference's unrolled step.
    def unrolled_grad(move_embedding):
        loss, _ = model._loss(ht, xt, yt)
        g = torch.autograd.grad(loss, params, create_graph=True)
        norm = sum(gi.norm(2) ** 2 for gi in g) ** 0.5
        c = a.clip / (norm + 1e-6)
        factor = torch.minimum(c, torch.ones_like(c))
        new = {}
        for i, (n, w, gi) in enumerate(zip(names, params, g)):
            if i == 0 and not move_embedding:
                new[n] = w
            else:
                new[n] = w - a.eta * (gi * factor + a.wdecay * w)
        lp, _ = torch.func.functional_call(model, new, (xv, hv), tie_weights=True)
        vloss = F.nll_loss(lp.view(-1, lp.size(2)), yv)
        return torch.autograd.grad(vloss, [alpha])[0]

    out["grad_alpha_unrolled_exact/recurrent"] = unrolled_grad(False)
    out["grad_alpha_unrolled_intended/recurrent"] = unrolled_grad(True)

    # The reference's own second-order step on a fresh copy of the model (it restores the
    # weights in place, which would otherwise shift them by an ulp).
    fresh = model_search.RNNModelSearch(v, h, h, h, 0.0, 0.0, 0.0, 0.0, 0.0)
    fresh.load_state_dict(sd)
    fresh.weights.data.copy_(torch.from_numpy(st["alpha/recurrent"]))
    fresh.train()
    farch = architect_mod.Architect(fresh, args)
    fresh.weights.grad = None
    farch._backward_step_unrolled(ht, xt, yt, hv, xv, yv, a.eta)
    out["grad_alpha_second/recurrent"] = fresh.weights.grad.clone()
    piecewise = dalpha - a.eta * float(clip_coef) * hvp
    gap = (piecewise - out["grad_alpha_second/recurrent"]).abs().max().item()
    print(f"reference second order: piecewise vs _backward_step_unrolled max gap {gap:.3e}")

    arrays = {k: np.asarray(x.detach().numpy() if torch.is_tensor(x) else x, dtype=np.float64) for k, x in out.items()}
    np.savez(a.out, **arrays)
    print(f"wrote {len(arrays)} arrays to {a.out}; clip coefficient {float(clip_coef):.6g}")


if __name__ == "__main__":
    main()
