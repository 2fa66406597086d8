"""The concise console (tune/console.py) on hand-made trials."""

import io

from tune import names as N
from tune.console import ProgressPrinter, clock, describe

CONV = {"arch": "conv", "conv_depth": 2, "conv_channels_1": 16, "conv_channels_2": 8,
        "latent_dim": 46, "finetune": "dec", "reduction": "umap", "umap_dim": 10}  # fmt: skip
MLP = {"arch": "mlp", "mlp_depth": 1, "mlp_width_1": 128, "latent_dim": 64, "finetune": "none",
       "reduction": "pca", "pca_dim": 8}  # fmt: skip


def test_describe_names_the_network_and_its_stages():
    assert describe(CONV) == "conv 16/8 z46 dec umap10"
    assert describe(MLP) == "mlp 128 z64 pca8"
    assert describe({**MLP, "reduction": "none", "finetune": "abo"}) == "mlp 128 z64 abo"


def test_clock():
    assert (clock(45), clock(723), clock(3720)) == ("45s", "12m03s", "1h02m")


def test_one_line_per_trial_with_progress_status_and_front():
    out = io.StringIO()
    p = ProgressPrinter(total=4, out=out, start=0.0)
    ok = {N.STATUS: "ok"}
    p.report("a", MLP, {**ok, N.SILHOUETTE: 0.2, N.RECON_LOSS: 0.01})
    p.report("b", CONV, {**ok, N.SILHOUETTE: 0.1, N.RECON_LOSS: 0.02})  # dominated by a
    p.report("c", CONV, {**ok, N.SILHOUETTE: 0.5, N.RECON_LOSS: 0.015})  # a trade-off
    p.report("d", MLP, {N.STATUS: "diverged"})
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("[1/4 ###.........]") and lines[0].endswith("| ok  on the front")
    assert lines[1].endswith("| ok") and "silhouette 0.100  loss 0.02000" in lines[1]
    assert lines[2].endswith("on the front") and "conv 16/8 z46 dec umap10" in lines[2]
    assert lines[3].startswith("[4/4 ############]") and lines[3].endswith("| diverged")
    assert "ETA 0s" in lines[3]
