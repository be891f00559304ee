#!/usr/bin/env python3
"""Seconds per recurrent search step of the unmodified reference (quark0/darts rnn/) on
PyTorch, on the CPU at one thread: the baseline of benches/rnn_step.rs (same configuration).

One step is what train_search.py's loop body runs: `architect.step` (first order, or second
with --unrolled), then the weight step (forward with return_h, NLL + TAR, backward,
clip_grad_norm 0.25, SGD). The reference's own Architect and RNNModelSearch are imported
unchanged, with only the run-time patches P1-P2 of RNN_REFERENCE_NOTES.md section 9 (see
rnn_reference_gradients.py); the loop body is written here from the notes (train_search.py
itself needs P3 and the loop scripts' 0-d indexing fixes).

    python3 benches/rnn_pytorch_step.py --darts /tmp/darts-ref first 64 32 35 5
    python3 benches/rnn_pytorch_step.py --darts /tmp/darts-ref second 64 32 35 5

Arguments: order, H, batch, seq_len, timed steps (after one warm-up step). V = 10000 (PTB's
vocabulary; the tokens are random ids: the cost does not depend on them). Search dropouts
(0.75, 0.25, 0.75, 0.2, 0) as the reference's defaults.
"""
import argparse
import os
import sys
import time
import types

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rnn_reference_gradients import patch_reference  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--darts", required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("order", choices=["first", "second"])
    p.add_argument("nhid", type=int)
    p.add_argument("batch", type=int)
    p.add_argument("seq_len", type=int)
    p.add_argument("steps", type=int)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model_search, architect_mod = patch_reference(a.darts)
    v, h, b, t = 10000, a.nhid, a.batch, a.seq_len
    model = model_search.RNNModelSearch(v, h, h, h, 0.75, 0.25, 0.75, 0.2, 0.0)
    model.train()
    args = types.SimpleNamespace(wdecay=5e-7, clip=0.25, arch_lr=3e-3, arch_wdecay=1e-3)
    arch = architect_mod.Architect(model, args)
    opt = torch.optim.SGD(model.parameters(), lr=20.0, weight_decay=5e-7)
    rng = np.random.default_rng(0)

    def batch():
        s = torch.from_numpy(rng.integers(0, v, (t + 1, b)))
        return s[:-1], s[1:].reshape(-1)

    hidden = model.init_hidden(b)
    hidden_valid = model.init_hidden(b)

    def step():
        nonlocal hidden, hidden_valid
        x, y = batch()
        xv, yv = batch()
        hidden = [hh.detach() for hh in hidden]
        hidden_valid = [hh.detach() for hh in hidden_valid]
        hidden_valid, _ = arch.step(hidden, x, y, hidden_valid, xv, yv, opt, a.order == "second")
        opt.zero_grad()
        log_prob, hidden, rnn_hs, dropped = model(x, hidden, return_h=True)
        loss = nn.functional.nll_loss(log_prob.view(-1, log_prob.size(2)), y)
        loss = loss + 1e-3 * (rnn_hs[-1][1:] - rnn_hs[-1][:-1]).pow(2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        opt.step()

    step()
    times = []
    for _ in range(a.steps):
        s = time.perf_counter()
        step()
        times.append(time.perf_counter() - s)
    print(f"pytorch {torch.__version__} {a.order} H={h} B={b} T={t} V={v} threads={a.threads}: "
          f"median {np.median(times):.4f} s per step (min {min(times):.4f}, {a.steps} steps)")


if __name__ == "__main__":
    main()
