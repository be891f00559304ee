#!/usr/bin/env python3
"""Seconds per DARTS CNN search step in PyTorch: the baseline for the README's GPU speed target.

The GPU issue asks that our wgpu search step at the paper configuration (second order, C=16,
8 layers, batch 64, f32) be within 2x of PyTorch on the same GPU. This script is that PyTorch
side. On the GPU machine (Python 3.12 + PyTorch with CUDA, no network) run

    python3 benches/pytorch_step.py second 16 8 64 3 --device cuda

next to `cargo run --release --example resident_step -- gpu second 16 8 64 3` on the same card,
and compare the two "median ... s per step" lines (add `--unrolled-model fresh` for a second
PyTorch number that also pays the reference's per-step Network construction; see below). It
needs nothing beyond torch.

What it implements, from shared/reference/REFERENCE_NOTES.md (sections 1-4), written from those
notes and not from the reference code:

* the search space: PRIMITIVES in the order none, max_pool_3x3, avg_pool_3x3, skip_connect,
  sep_conv_3x3, sep_conv_5x5, dil_conv_3x3, dil_conv_5x5; every conv without bias; every BN
  inside a cell affine=False; the pool ops followed by BN(C, affine=False); skip_connect on a
  stride-2 edge is FactorizedReduce; avg pool with count_include_pad=False;
* the search network: stem conv 3 -> 3C plus BN(3C, affine=True) and no ReLU; reduction cells at
  layers//3 and 2*layers//3 with C doubled before them; preprocess0 FactorizedReduce after a
  reduction cell, else ReLUConvBN 1x1; the cell DAG with edge rows node by node, j ascending;
  MixedOp = sum_k softmax(alpha row)_k op_k(x); output = concat of the last 4 states; global
  average pool and Linear(C_prev, 10); cross-entropy mean; alphas 1e-3*randn, plain tensors
  (not in parameters() nor in the state_dict);
* ONE search step, as train_search.py runs it: the architect step (first order:
  grad_alpha L_val(w, alpha); second order: w' = w - xi (mu buf + grad_w L_train + lambda w) with
  xi the current lr, dalpha and v = grad_w' L_val(w', alpha) on an unrolled copy of the network,
  R = 0.01 / ||v||_2, the central finite-difference mixed product (g+ - g-) / 2R taken with
  grad_alpha L_train at w +- R v, alpha.grad = dalpha - xi * hvp), Adam on the alphas (lr 3e-4,
  betas (0.5, 0.999), coupled weight decay 1e-3), then the weight step at the new alphas:
  cross-entropy backward, clip_grad_norm_(5), SGD(lr 0.025, momentum 0.9, weight decay 3e-4).
  The lr is held at 0.025, as examples/resident_step.rs feeds it.

Timing mirrors examples/resident_step.rs: one untimed warm-up step (cudnn.benchmark autotuning,
allocator warm-up), then `steps` timed steps on the same fixed random train and valid batches
(3x32x32 standard normal inputs, uniform labels in 0..9), torch.cuda.synchronize() before and
after each; it prints each step, the median and the peak memory.

Usage: python3 benches/pytorch_step.py <first|second> [C=16] [layers=8] [batch=64] [steps=3]
       [--device cuda|cpu] [--unrolled-model reuse|fresh] [--tf32] [--check-layout FILE]

--unrolled-model reuse (default) builds the unrolled network once and copies alpha, w' and the BN
  buffers into it each step: the same numbers as the reference (whose construction also draws
  from the global RNG; the batches here are fixed, so that changes nothing), without its cost of
  constructing a Network (about 0.3-0.5 s of CPU time at C=16, 8 layers, on the machine this was
  written on), so the faster PyTorch and the stricter baseline. `fresh` builds a new Network and
  loads the state_dict into it every step, as the reference architect does; run it too to see
  what the reference itself pays.
--tf32 lets cuDNN/cuBLAS use TF32 for float32 convolutions and matmuls. Off by default, so that
  PyTorch computes in IEEE float32 like the reference's PyTorch 0.3.1 and like our f32 kernels.
--check-layout FILE builds the network at the configuration named in FILE's header (C=..
  layers=..), compares its state_dict names and shapes (in order) and its parameter count with
  FILE (shared/reference/state_dict_layout_C4_L3.txt), prints the differences and exits 1 on any
  mismatch; on a match it goes on with the timed run.
"""

import argparse
import re
import resource
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PRIMITIVES = [
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
]

# Hyperparameters of the reference search (REFERENCE_NOTES.md section 4 and section 3).
LR = 0.025
MOMENTUM = 0.9
WEIGHT_DECAY = 3e-4
GRAD_CLIP = 5.0
ARCH_LR = 3e-4
ARCH_BETAS = (0.5, 0.999)
ARCH_WEIGHT_DECAY = 1e-3
FD_SCALE = 0.01  # R = FD_SCALE / ||v||_2
NUM_CLASSES = 10
SEED = 2

# Paper configuration size, from REFERENCE_NOTES.md section 2.
PAPER_WEIGHTS = 1_930_618
PAPER_STATE_ENTRIES = 4_186


# ---------------------------------------------------------------------------------------------
# Operations (REFERENCE_NOTES.md section 1). Module attribute names and Sequential indices are
# chosen so that the state_dict names are the reference's.


class Zero(nn.Module):
    """`none`: x * 0, subsampled by [::2, ::2] on a stride-2 edge."""

    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class Identity(nn.Module):
    def forward(self, x):
        return x


class ReLUConvBN(nn.Module):
    """ReLU, k x k conv without bias, BN: names op.1 (conv) and op.2 (BN)."""

    def __init__(self, c_in, c_out, kernel, stride, padding, affine):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )

    def forward(self, x):
        return self.op(x)


class DilConv(nn.Module):
    """ReLU, dilated depthwise conv (stride s), 1x1 conv, BN: op.1, op.2, op.3."""

    def __init__(self, c_in, c_out, kernel, stride, padding, dilation, affine):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(
                c_in,
                c_in,
                kernel,
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=c_in,
                bias=False,
            ),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )

    def forward(self, x):
        return self.op(x)


class SepConv(nn.Module):
    """Two blocks (ReLU, depthwise KxK, 1x1, BN); only the first depthwise conv is strided.

    Names op.1, op.2, op.3 (block 1) and op.5, op.6, op.7 (block 2).
    """

    def __init__(self, c_in, c_out, kernel, stride, padding, affine):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(
                c_in, c_in, kernel, stride=stride, padding=padding, groups=c_in, bias=False
            ),
            nn.Conv2d(c_in, c_in, 1, bias=False),
            nn.BatchNorm2d(c_in, affine=affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel, stride=1, padding=padding, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )

    def forward(self, x):
        return self.op(x)


class FactorizedReduce(nn.Module):
    """ReLU; concat(conv_1(x), conv_2(x[:, :, 1:, 1:])) of two 1x1 stride-2 convs; BN."""

    def __init__(self, c_in, c_out, affine):
        super().__init__()
        if c_out % 2 != 0:
            raise ValueError(f"FactorizedReduce: C_out {c_out} must be even")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x):
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


def make_op(name, c, stride, affine):
    if name == "none":
        return Zero(stride)
    if name == "max_pool_3x3":
        return nn.MaxPool2d(3, stride=stride, padding=1)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
    if name == "skip_connect":
        return Identity() if stride == 1 else FactorizedReduce(c, c, affine)
    if name == "sep_conv_3x3":
        return SepConv(c, c, 3, stride, 1, affine)
    if name == "sep_conv_5x5":
        return SepConv(c, c, 5, stride, 2, affine)
    if name == "dil_conv_3x3":
        return DilConv(c, c, 3, stride, 2, 2, affine)
    if name == "dil_conv_5x5":
        return DilConv(c, c, 5, stride, 4, 2, affine)
    raise ValueError(f"unknown primitive {name!r}")


class MixedOp(nn.Module):
    """sum_k w_k op_k(x) over PRIMITIVES; pool ops get BN(C, affine=False) (search model only)."""

    def __init__(self, c, stride):
        super().__init__()
        self._ops = nn.ModuleList()
        for name in PRIMITIVES:
            op = make_op(name, c, stride, affine=False)
            if "pool" in name:
                op = nn.Sequential(op, nn.BatchNorm2d(c, affine=False))
            self._ops.append(op)

    def forward(self, x, weights):
        # Python sum from 0, ops in PRIMITIVES order (the reference's summation order).
        return sum(w * op(x) for w, op in zip(weights, self._ops))


class Cell(nn.Module):
    def __init__(self, steps, multiplier, c_pp, c_p, c, reduction, reduction_prev):
        super().__init__()
        self.reduction = reduction
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(c_pp, c, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(c_pp, c, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(c_p, c, 1, 1, 0, affine=False)
        self._steps = steps
        self._multiplier = multiplier
        self._ops = nn.ModuleList()
        # Edge rows node by node; within node i, predecessor j = 0 .. 2+i-1 ascending.
        for i in range(steps):
            for j in range(2 + i):
                stride = 2 if reduction and j < 2 else 1
                self._ops.append(MixedOp(c, stride))

    def forward(self, s0, s1, weights):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self._steps):
            node = sum(
                self._ops[offset + j](h, weights[offset + j]) for j, h in enumerate(states)
            )
            offset += len(states)
            states.append(node)
        return torch.cat(states[-self._multiplier :], dim=1)


class Network(nn.Module):
    """The DARTS CNN search network (REFERENCE_NOTES.md section 2)."""

    def __init__(self, c, num_classes, layers, steps=4, multiplier=4, stem_multiplier=3):
        super().__init__()
        self._c, self._num_classes, self._layers = c, num_classes, layers
        self._steps, self._multiplier, self._stem_multiplier = steps, multiplier, stem_multiplier
        c_curr = stem_multiplier * c
        self.stem = nn.Sequential(
            nn.Conv2d(3, c_curr, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_curr),  # affine=True: the only learnable BN of the search net
        )
        c_pp, c_p, c_curr = c_curr, c_curr, c
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                c_curr *= 2
            self.cells.append(
                Cell(steps, multiplier, c_pp, c_p, c_curr, reduction, reduction_prev)
            )
            reduction_prev = reduction
            c_pp, c_p = c_p, multiplier * c_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes)
        # Alphas last, normal first; plain tensors, not Parameters.
        k = sum(2 + i for i in range(steps))
        self.alphas_normal = (1e-3 * torch.randn(k, len(PRIMITIVES))).requires_grad_(True)
        self.alphas_reduce = (1e-3 * torch.randn(k, len(PRIMITIVES))).requires_grad_(True)

    def to_device(self, device):
        self.to(device)
        self.alphas_normal = self.alphas_normal.detach().to(device).requires_grad_(True)
        self.alphas_reduce = self.alphas_reduce.detach().to(device).requires_grad_(True)
        return self

    def arch_parameters(self):
        return [self.alphas_normal, self.alphas_reduce]

    def new(self):
        """A fresh network of the same configuration with this one's alpha values."""
        other = Network(
            self._c,
            self._num_classes,
            self._layers,
            self._steps,
            self._multiplier,
            self._stem_multiplier,
        ).to_device(self.alphas_normal.device)
        with torch.no_grad():
            for mine, theirs in zip(other.arch_parameters(), self.arch_parameters()):
                mine.copy_(theirs)
        return other

    def forward(self, x):
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            alphas = self.alphas_reduce if cell.reduction else self.alphas_normal
            weights = F.softmax(alphas, dim=-1)  # recomputed for every cell
            s0, s1 = s1, cell(s0, s1, weights)
        out = self.global_pooling(s1)
        return self.classifier(out.view(out.size(0), -1))

    def loss(self, x, target):
        return F.cross_entropy(self(x), target)


# ---------------------------------------------------------------------------------------------
# One search step (REFERENCE_NOTES.md sections 3 and 4).


class SearchStep:
    def __init__(self, model, order, unrolled_mode):
        self.model = model
        self.order = order
        self.unrolled_mode = unrolled_mode
        self.params = list(model.parameters())
        self.w_opt = torch.optim.SGD(
            self.params, LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
        )
        self.a_opt = torch.optim.Adam(
            model.arch_parameters(),
            lr=ARCH_LR,
            betas=ARCH_BETAS,
            weight_decay=ARCH_WEIGHT_DECAY,
        )
        self._unrolled = model.new() if unrolled_mode == "reuse" else None

    def _unrolled_model(self, new_weights):
        """The unrolled network: the current state_dict with the weights replaced by w'."""
        if self._unrolled is None:
            # The reference's way: a new Network, then load_state_dict of the current
            # state_dict (BN running buffers included) with the weights replaced by w'.
            unrolled = self.model.new()
            state = self.model.state_dict()
            for (name, _), w in zip(self.model.named_parameters(), new_weights):
                state[name] = w
            unrolled.load_state_dict(state)
            return unrolled
        # The same values copied into the one network built at the start.
        unrolled = self._unrolled
        with torch.no_grad():
            mine = unrolled.arch_parameters() + list(unrolled.parameters())
            theirs = self.model.arch_parameters() + list(new_weights)
            mine += list(unrolled.buffers())
            theirs += list(self.model.buffers())
            torch._foreach_copy_(mine, theirs)
        return unrolled

    def _arch_grad_second_order(self, xt, yt, xv, yv, eta):
        model, params = self.model, self.params
        alphas = model.arch_parameters()
        # 1. w' = w - eta (mu buf + grad_w L_train(w, alpha) + lambda w); no clipping here.
        loss_train = model.loss(xt, yt)
        g = torch.autograd.grad(loss_train, params)
        with torch.no_grad():
            bufs = [self.w_opt.state.get(p, {}).get("momentum_buffer") for p in params]
            direction = torch._foreach_add(g, params, alpha=WEIGHT_DECAY)
            if all(b is not None for b in bufs):
                torch._foreach_add_(direction, bufs, alpha=MOMENTUM)
            new_weights = torch._foreach_add(params, direction, alpha=-eta)
        # 2-3. dalpha and v from L_val(w', alpha) on the unrolled copy (train-mode BN).
        unrolled = self._unrolled_model(new_weights)
        u_params = list(unrolled.parameters())
        loss_val = unrolled.loss(xv, yv)
        grads = torch.autograd.grad(loss_val, unrolled.arch_parameters() + u_params)
        dalpha, v = grads[:2], grads[2:]
        # 4. Central FD of grad_alpha L_train at w +- R v, R = 0.01 / ||v||_2.
        with torch.no_grad():
            r = FD_SCALE / torch.linalg.vector_norm(torch.cat([t.reshape(-1) for t in v]))
            rv = torch._foreach_mul(v, r)
            torch._foreach_add_(params, rv)
        g_plus = torch.autograd.grad(model.loss(xt, yt), alphas)
        with torch.no_grad():
            torch._foreach_add_(params, rv, alpha=-2.0)
        g_minus = torch.autograd.grad(model.loss(xt, yt), alphas)
        with torch.no_grad():
            torch._foreach_add_(params, rv)
            # 5. alpha.grad = dalpha - eta (g+ - g-) / 2R.
            for a, da, gp, gm in zip(alphas, dalpha, g_plus, g_minus):
                a.grad = da - eta * (gp - gm) / (2.0 * r)
        return loss_val

    def __call__(self, xt, yt, xv, yv, eta=LR):
        # Architect step.
        self.a_opt.zero_grad()
        if self.order == "second":
            loss_val = self._arch_grad_second_order(xt, yt, xv, yv, eta)
        else:
            loss_val = self.model.loss(xv, yv)
            loss_val.backward()  # also fills w.grad; the weight step zeroes it
        self.a_opt.step()
        # Weight step at the new alphas.
        self.w_opt.zero_grad()
        loss = self.model.loss(xt, yt)
        loss.backward()
        nn.utils.clip_grad_norm_(self.params, GRAD_CLIP)
        self.w_opt.step()
        return loss.detach(), loss_val.detach()


# ---------------------------------------------------------------------------------------------
# Layout check and main.


def read_layout(path):
    """(header config dict, [(name, shape tuple)]) from a `name<TAB>[d0, d1, ...]` file."""
    config, entries = {}, []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if line.startswith("#"):
                for key, val in re.findall(r"(\w+)=(\d+)", line):
                    config.setdefault(key, int(val))
                continue
            parts = line.split("\t")
            if len(parts) != 2 or not re.fullmatch(r"\[[\d, ]*\]", parts[1].strip()):
                raise ValueError(f"{path}:{lineno}: expected 'name<TAB>[shape]', got {line!r}")
            dims = parts[1].strip()[1:-1]
            shape = tuple(int(d) for d in dims.split(",") if d.strip())
            entries.append((parts[0], shape))
    return config, entries


def check_layout(path, default_c, default_layers):
    """Compare a freshly built network's state_dict with `path`; True when they agree."""
    config, expected = read_layout(path)
    c = config.get("C", default_c)
    layers = config.get("layers", default_layers)
    net = Network(
        c,
        config.get("num_classes", NUM_CLASSES),
        layers,
        config.get("steps", 4),
        config.get("multiplier", 4),
        config.get("stem_multiplier", 3),
    )
    actual = [(k, tuple(v.shape)) for k, v in net.state_dict().items()]
    buffer_suffixes = ("running_mean", "running_var", "num_batches_tracked")
    expected_weights = sum(
        _numel(s) for n, s in expected if not n.endswith(buffer_suffixes)
    )
    actual_weights = sum(p.numel() for p in net.parameters())
    exp_map, act_map = dict(expected), dict(actual)
    missing = [n for n, _ in expected if n not in act_map]
    extra = [n for n, _ in actual if n not in exp_map]
    shape_diff = [
        (n, exp_map[n], act_map[n])
        for n, _ in expected
        if n in act_map and exp_map[n] != act_map[n]
    ]
    order_ok = [n for n, _ in expected] == [n for n, _ in actual]
    print(f"layout check against {path} (C={c}, layers={layers}):")
    print(
        f"  state_dict entries: expected {len(expected)}, actual {len(actual)}; "
        f"weights: expected {expected_weights}, actual {actual_weights}"
    )
    for n in missing:
        print(f"  - missing  {n} {list(exp_map[n])}")
    for n in extra:
        print(f"  + extra    {n} {list(act_map[n])}")
    for n, e, a in shape_diff:
        print(f"  ! shape    {n}: expected {list(e)}, actual {list(a)}")
    if not missing and not extra and not order_ok:
        print("  ! the names agree but their order differs")
    ok = (
        not missing
        and not extra
        and not shape_diff
        and order_ok
        and expected_weights == actual_weights
        and len(expected) == len(actual)
    )
    print(f"  {'MATCH' if ok else 'MISMATCH'}")
    return ok


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def set_tf32(allow):
    """Allow or forbid TF32 for float32 convs and matmuls (new API where present)."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    matmul = torch.backends.cuda.matmul
    if conv is not None and hasattr(conv, "fp32_precision"):
        conv.fp32_precision = "tf32" if allow else "ieee"
        matmul.fp32_precision = "tf32" if allow else "ieee"
    else:
        torch.backends.cudnn.allow_tf32 = allow
        matmul.allow_tf32 = allow


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Seconds per DARTS CNN search step in PyTorch (baseline for the GPU target)."
    )
    p.add_argument("order", choices=["first", "second"])
    p.add_argument("C", type=int, nargs="?", default=16)
    p.add_argument("layers", type=int, nargs="?", default=8)
    p.add_argument("batch", type=int, nargs="?", default=64)
    p.add_argument("steps", type=int, nargs="?", default=3)
    p.add_argument("--device", choices=["cuda", "cpu"], default=None)
    p.add_argument("--unrolled-model", choices=["reuse", "fresh"], default="reuse")
    p.add_argument("--tf32", action="store_true")
    p.add_argument("--check-layout", metavar="FILE")
    args = p.parse_args(argv)
    for name in ("C", "layers", "batch", "steps"):
        if getattr(args, name) < 1:
            p.error(f"{name} must be at least 1, got {getattr(args, name)}")
    if args.C % 2 != 0:
        p.error(f"C must be even (FactorizedReduce halves it), got {args.C}")
    if args.order == "second" and args.layers <= 2:
        p.error("second order needs layers >= 3 (with fewer, alphas_normal is unused)")
    return args


def main(argv):
    args = parse_args(argv)
    if args.check_layout and not check_layout(args.check_layout, args.C, args.layers):
        return 1
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    torch.manual_seed(SEED)
    on_cuda = device == "cuda"
    if on_cuda:
        torch.cuda.manual_seed(SEED)
        torch.backends.cudnn.enabled = True
        torch.backends.cudnn.benchmark = True  # as train_search.py sets it
        set_tf32(args.tf32)
        name = torch.cuda.get_device_name()
        print(
            f"device: {name} (torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN "
            f"{torch.backends.cudnn.version()}, cudnn.benchmark on, TF32 "
            f"{'on' if args.tf32 else 'off'})"
        )
    else:
        print(f"device: cpu (torch {torch.__version__}, {torch.get_num_threads()} threads)")
    sync = torch.cuda.synchronize if on_cuda else (lambda: None)

    t = time.perf_counter()
    model = Network(args.C, NUM_CLASSES, args.layers).to_device(device)
    model.train()
    step = SearchStep(model, args.order, args.unrolled_model)
    sync()
    n_weights = sum(p.numel() for p in model.parameters())
    n_entries = len(model.state_dict())
    print(
        f"pytorch {args.order} step, C={args.C}, layers={args.layers}, batch {args.batch}, "
        f"f32, unrolled model {args.unrolled_model}: {n_weights} weights, {n_entries} "
        f"state_dict entries, built in {time.perf_counter() - t:.2f} s"
    )
    if (args.C, args.layers) == (16, 8):
        agree = (n_weights, n_entries) == (PAPER_WEIGHTS, PAPER_STATE_ENTRIES)
        print(
            f"  paper configuration size {'matches' if agree else 'DIFFERS FROM'} the "
            f"reference notes ({PAPER_WEIGHTS} weights, {PAPER_STATE_ENTRIES} entries)"
        )

    gen = torch.Generator().manual_seed(SEED)
    shape = (args.batch, 3, 32, 32)
    xt = torch.randn(shape, generator=gen).to(device)
    yt = torch.randint(0, NUM_CLASSES, (args.batch,), generator=gen).to(device)
    xv = torch.randn(shape, generator=gen).to(device)
    yv = torch.randint(0, NUM_CLASSES, (args.batch,), generator=gen).to(device)

    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for k in range(args.steps + 1):
        sync()
        t = time.perf_counter()
        loss, loss_val = step(xt, yt, xv, yv)
        sync()
        s = time.perf_counter() - t
        warm = " (untimed warm-up)" if k == 0 else ""
        print(
            f"step {k}{warm}: {s:.3f} s, loss {loss.item():.4f} "
            f"(architect valid loss {loss_val.item():.4f})"
        )
        if k > 0:
            times.append(s)

    if on_cuda:
        peak = (
            f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.1f} MiB allocated, "
            f"{torch.cuda.max_memory_reserved() / 2**20:.1f} MiB reserved"
        )
    else:
        peak = f"peak resident memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss} kB"
    print(
        f"median {sorted(times)[len(times) // 2]:.3f} s per step over {len(times)} steps; {peak}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
