"""Which training step for the first document's MLP autoencoder: our hand-written one or PyTorch's.

    .venv/bin/python bench/bench_step.py [--n 60000] [--repeats 5] [--threads T] [--no-compile]
        [--wait-quiet SECONDS] [--no-write]

Run on demand, never as a timed test. Times one training epoch of the first document's network
(784-128-64 / 64-128-784-Sigmoid, MSE, Adam lr 1e-3 / weight decay 1e-8, batch 32: doc1 in
search_spaces/seeds.yaml) on the Fashion-MNIST training images (random images of the same size
when the data set is not installed), with each of these steps:

  plain          nn.Module + autograd + torch.optim.Adam(model.parameters()) with its defaults:
                 the reference every ratio is measured against, in the same run.
  adam-foreach   the same with Adam(foreach=True) (one multi-tensor kernel per Adam phase).
  adam-fused     the same with Adam(fused=True) (one fused kernel for the whole update).
  autograd+flat  autograd with tune.training's flat parameter buffer and its `adam_step` (the
                 fused kernel over one tensor): the path train_autoencoder takes for every
                 network the hand-written step does not cover.
  hand-written   tune.mlp_step.MLPStep (closed-form gradients) + flat buffer + `adam_step`: what
                 train_autoencoder runs for this network today.
  compile-step   torch.compile of the whole plain step (forward, loss, backward, Adam default).
                 Compiled, Adam keeps its step count as a float32 tensor (torch.optim's
                 `_get_value` returns it as is when compiling; eagerly it is a Python float), so
                 1 - beta2**t is computed in float32: relative errors of ~1e-5 over the first
                 thousand steps (1.3e-5 at t = 1).
  compile-fused  torch.compile of forward + loss (inductor also compiles their backward), then
                 Adam(fused=True) eagerly.

Only the step differs: every variant trains its own copy of the same initial weights on the same
batches (a seeded permutation per epoch, cut into index slices of a tensor that lives on the
device, as train_autoencoder does; no DataLoader, whose per-batch collation bench_core.py's
references also pay). Same training is checked in two ways:

  - after the WARMUP identical first steps, each variant's largest weight difference from the
    same steps taken in float64 (plain step: exact arithmetic's stand-in) and from `plain`. A step
    that only rounds differently stays about as close to float64 as `plain` does (~4e-7 here). The
    check is early on purpose: Adam divides each gradient by its running RMS, so weights whose
    gradients are tiny (pixels that are nearly always 0) take lr-sized steps whose sign rounding
    can decide, and a ReLU input within rounding of 0 flips one sample's whole contribution;
    either turns a 1e-7 difference into 1e-3 at once, after some tens of steps (plain float32
    and float64 were 3e-4 apart at step 23 in one run here), so later any two float32
    implementations part, by chance, and the weights no longer tell a rounding difference from a
    different update. tests/test_training.py checks the same thing on a case without flips.
  - after all timed epochs, the last epoch's loss against `plain`, and which variants still hold
    bit-identical weights (they perform the very same float operations).

The warm-up steps are not in the timings; for the compiled variants their wall time, less that
many ordinary steps, is the one-off compile time (it depends on inductor's on-disk cache:
TORCHINDUCTOR_FORCE_DISABLE_CACHES=1 measures a cold compile). Then come the timed rounds: a
round is one epoch of every variant, run interleaved, CHUNK steps of one variant, then CHUNK of
the next, the order rotating, so a slow spell of a shared machine hits all variants alike.
Reported: the median seconds per epoch over the rounds, the ratio plain / variant of those
medians with the range of the per-round ratios (how consistent it is), and the same against the
hand-written step.

CPU only: on CUDA train_autoencoder replays each step as a CUDA graph, a different question.
The script prints a table and APPENDS a dated section (machine, versions, git commit, load) to
bench/RESULTS.md unless --no-write.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as dt
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `tune` and `models` importable
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from bench_core import (  # noqa: E402
    QUIET,
    RESULTS,
    OtherLoad,
    ae_images,
    doc_config,
    fmt_load,
    loadavg,
    log,
    machine_lines,
    md_table,
    wait_quiet,
)
from torch import nn  # noqa: E402

from models.build import build_autoencoder  # noqa: E402
from tune.config import TrialConfig  # noqa: E402
from tune.mlp_step import MLPStep  # noqa: E402
from tune.training import adam_step, images_to_tensor, make_optimizer  # noqa: E402

# Identical untimed first steps of every variant: they compile, warm the allocator, create Adam's
# state, and are where "same updates up to rounding" is checked (see the docstring).
WARMUP = 20
CHUNK = 25  # steps a variant runs before the next one's turn (~20-50 ms on a quiet machine)
Step = Callable[[torch.Tensor], torch.Tensor]  # batch indices -> the batch's loss (a tensor)


@dataclasses.dataclass
class Variant:
    """One way to train: its model copy, its step, and what the run measured for it."""

    name: str
    model: nn.Module
    step: Step
    warmup_s: float = math.nan
    dw_f64: float = math.nan  # max |weight - float64 run's| after the warm-up steps
    dw_plain: float = math.nan  # max |weight - plain's| after the warm-up steps
    epoch_s: list[float] = dataclasses.field(default_factory=list)
    loads: list[float] = dataclasses.field(default_factory=list)
    losses: list[float] = dataclasses.field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.epoch_s)

    def weights(self) -> torch.Tensor:
        return torch.cat([p.detach().flatten() for p in self.model.parameters()])


def _mse(model: nn.Module, xb: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(model(xb), xb)


def autograd_step(model: nn.Module, x: torch.Tensor, opt: torch.optim.Optimizer) -> Step:
    """The documents' step: forward, MSE, zero_grad, backward, opt.step()."""

    def step(index: torch.Tensor) -> torch.Tensor:
        xb = x[index]
        loss = _mse(model, xb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    return step


def build_variants(
    init: nn.Module, x: torch.Tensor, lr: float, wd: float, compile_: bool
) -> list[Variant]:
    """Every variant on its own deep copy of `init` (so all start from the same weights)."""

    def adam(model: nn.Module, **kw: bool) -> torch.optim.Adam:
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd, **kw)

    variants = []
    for name, kw in (
        ("plain", {}),
        ("adam-foreach", {"foreach": True}),
        ("adam-fused", {"fused": True}),
    ):
        m = copy.deepcopy(init)
        variants.append(Variant(name, m, autograd_step(m, x, adam(m, **kw))))

    m = copy.deepcopy(init)
    opt, flat = make_optimizer(m, lr, wd)

    def flat_autograd(index: torch.Tensor, m=m, opt=opt, flat=flat) -> torch.Tensor:
        xb = x[index]
        loss = _mse(m, xb)
        flat.grad.zero_()
        loss.backward()
        adam_step(opt, flat)
        return loss

    variants.append(Variant("autograd+flat", m, flat_autograd))

    m = copy.deepcopy(init)
    opt, flat = make_optimizer(m, lr, wd)
    mlp_step = MLPStep.for_model(m)  # after make_optimizer: it holds views of the flat grads
    if mlp_step is None:
        raise RuntimeError("the doc1 network no longer takes the hand-written step")

    def hand_written(index: torch.Tensor, opt=opt, flat=flat) -> torch.Tensor:
        loss = mlp_step(x[index])
        adam_step(opt, flat)
        return loss

    variants.append(Variant("hand-written", m, hand_written))

    if compile_:
        m = copy.deepcopy(init)
        variants.append(Variant("compile-step", m, torch.compile(autograd_step(m, x, adam(m)))))
        m = copy.deepcopy(init)
        opt = adam(m, fused=True)
        loss_fn = torch.compile(_mse)

        def compiled_fused(index: torch.Tensor, m=m, opt=opt) -> torch.Tensor:
            loss = loss_fn(m, x[index])
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss

        variants.append(Variant("compile-fused", m, compiled_fused))
    return variants


def float64_weights(
    init: nn.Module, x: torch.Tensor, batches: list[torch.Tensor], lr: float, wd: float
) -> torch.Tensor:
    """The plain step in float64 over `batches`: what exact arithmetic would give, nearly."""
    m = copy.deepcopy(init).double()
    opt = torch.optim.Adam(m.parameters(), lr=lr, weight_decay=wd)
    for index in batches:
        xb = x[index].double()
        loss = _mse(m, xb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return torch.cat([p.detach().flatten() for p in m.parameters()])


def run_round(variants: list[Variant], n: int, batch_size: int, seed: int) -> None:
    """One epoch of every variant, interleaved CHUNK steps at a time; appends to each's records.

    All variants walk the same seeded permutation (train_autoencoder's loop: index slices, the
    loss summed as a tensor), so all see the same batches; taking turns every
    CHUNK steps, the turn order rotating, puts every variant in the same slow and fast spells of
    a shared machine, which an epoch-by-epoch interleaving does not (spells last seconds).
    """
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    starts = range(0, n, batch_size)
    total = {v.name: torch.zeros(()) for v in variants}
    secs = dict.fromkeys(total, 0.0)
    others = dict.fromkeys(total, 0.0)  # core-seconds other processes used during its turns
    for c, first in enumerate(range(0, len(starts), CHUNK)):
        for k in range(len(variants)):
            v = variants[(c + k) % len(variants)]
            meter = OtherLoad()
            t0 = time.perf_counter()
            for start in starts[first : first + CHUNK]:
                index = order[start : start + batch_size]
                total[v.name].add_(v.step(index).detach(), alpha=len(index))  # no .item(): as ours
            dt_ = time.perf_counter() - t0
            secs[v.name] += dt_
            others[v.name] += meter.stop() * dt_
    for v in variants:
        v.losses.append(total[v.name].item() / n)
        v.epoch_s.append(secs[v.name])
        v.loads.append(others[v.name] / secs[v.name])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=60_000, help="training images (default 60000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per variant (rounds)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's own, one per core; a search's trial uses its CPUs)",
    )
    parser.add_argument(
        "--no-compile", action="store_true", help="leave out the torch.compile variants"
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="before each round wait up to this long for other processes to leave the CPUs "
        "(default 60; 0 = never wait)",
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print only; do not append to bench/RESULTS.md"
    )
    args = parser.parse_args(argv)
    QUIET["max_wait"] = args.wait_quiet
    if args.threads:
        torch.set_num_threads(args.threads)
    started = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    load0, t0 = loadavg(), time.perf_counter()
    print("\n".join(machine_lines()) + f"\n- load average {load0}\n", flush=True)

    cfg = TrialConfig.from_flat(doc_config(0))
    lr, wd, bs = cfg.training.lr, cfg.training.weight_decay, cfg.training.batch_size
    x = images_to_tensor(ae_images(args.n))
    n = len(x)
    torch.manual_seed(0)
    init = build_autoencoder(cfg.autoencoder, (28, 28))
    variants = build_variants(init, x, lr, wd, not args.no_compile)  # variants[0] is plain
    log(f"step: {n:,} images, batch {bs}, lr {lr:g}, weight decay {wd:g}; {len(variants)} variants")

    warm_index = torch.randperm(n, generator=torch.Generator().manual_seed(1))[: WARMUP * bs]
    batches = list(warm_index.split(bs))
    exact = float64_weights(init, x, batches, lr, wd)
    for v in variants:
        w0 = time.perf_counter()
        for index in batches:
            v.step(index)
        v.warmup_s = time.perf_counter() - w0
        v.dw_f64 = float((v.weights().double() - exact).abs().max())
        v.dw_plain = float((v.weights() - variants[0].weights()).abs().max())
        log(
            f"  {v.name}: {WARMUP} warm-up steps {v.warmup_s:.2f} s; max |dW| from float64 "
            f"{v.dw_f64:.1e}, from plain {v.dw_plain:.1e}"
        )

    for r in range(args.repeats):
        if QUIET["max_wait"] > 0:
            wait_quiet()
        run_round(variants, n, bs, seed=r)
        log(f"  round {r + 1}: " + ", ".join(f"{v.name} {v.epoch_s[-1]:.2f}" for v in variants))

    ref = {v.name: v for v in variants}
    plain, hand = ref["plain"], ref["hand-written"]
    rows = []
    for v in variants:
        vs_plain = [p / s for p, s in zip(plain.epoch_s, v.epoch_s, strict=True)]
        vs_hand = [h / s for h, s in zip(hand.epoch_s, v.epoch_s, strict=True)]
        step_s = v.median / math.ceil(n / bs)
        compile_s = v.warmup_s - WARMUP * step_s if v.name.startswith("compile") else math.nan
        dloss = abs(v.losses[-1] - plain.losses[-1]) / plain.losses[-1]
        twins = [u.name for u in variants if u is not v and torch.equal(u.weights(), v.weights())]
        rows.append(
            [
                v.name,
                f"{v.median:.3g}",
                f"{min(v.epoch_s):.3g}-{max(v.epoch_s):.3g}",
                f"{plain.median / v.median:.2f}x ({min(vs_plain):.2f}-{max(vs_plain):.2f})",
                f"{hand.median / v.median:.2f}x ({min(vs_hand):.2f}-{max(vs_hand):.2f})",
                "-" if math.isnan(compile_s) else f"{compile_s:.1f}",
                f"{v.dw_f64:.1e}",
                f"{v.dw_plain:.1e}",
                f"{v.losses[-1]:.6f} ({dloss:.0e})",
                ", ".join(twins) or "-",
                fmt_load(statistics.median(v.loads)),
            ]
        )
    header = [
        "variant",
        "s/epoch (median)",
        "range",
        "plain / variant (rounds)",
        "hand-written / variant (rounds)",
        "compile s",
        f"max abs dW from float64, step {WARMUP}",
        f"from plain, step {WARMUP}",
        f"loss epoch {args.repeats} (rel. diff to plain)",
        "same bits at the end as",
        "others' load",
    ]
    table = md_table(header, rows)
    wall = time.perf_counter() - t0
    peak = max(max(v.loads) for v in variants)
    summary = (
        f"{n:,} images, batch {bs}, {args.repeats} timed epochs per variant after {WARMUP} warm-up "
        f"steps, interleaved {CHUNK} steps at a time; torch {torch.__version__}, {torch.get_num_threads()} threads. "
        f"Every variant saw the same batches. "
        f"Peak others' load (cores) during an epoch: {peak:.2f}."
    )
    print("\n" + table + "\n\n" + summary)
    print(f"load average at end {loadavg()}; whole run {wall / 60:.1f} min")
    if args.no_write:
        return
    lines = [
        "",
        f"## {started} — bench_step.py: the doc1 MLP training step, ours vs PyTorch's",
        "",
        f"Command: `.venv/bin/python bench/bench_step.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        *machine_lines(),
        f"- load average (1/5/15 min) at start {load0}, at end {loadavg()}; whole run {wall / 60:.1f} min",
        "",
        summary,
        "",
        table,
        "",
    ]
    with RESULTS.open("a") as f:
        f.write("\n".join(lines))
    print(f"appended to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
