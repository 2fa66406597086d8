"""Explore the silhouette / reconstruction frontier beyond the search: does any config beat both documents?

    python bench/explore_frontier.py N_CONFIGS WORKERS BUDGET_S [SEED]     (ROUND=2 for the MLP-dropout round)

Runs `tune.trial.run_trial` directly (no Ray, no MLflow) on Fashion-MNIST with the search's split
(val_fraction 1/6, seed 0) for the two documents' configs and N random configs from a space much
wider than default.yaml (MLP widths to 1024, conv channels to 64, up to 50 epochs), WORKERS processes
at once, until BUDGET_S seconds have passed; one JSON line per config in $OUT/explore.jsonl (default
/tmp). Meant for a GPU machine: on the 2-core CPU most of these configs take far longer than a whole
default search. ABO runs a cheap 50 epochs x batch 256 here; the search objective takes the better of
ABO and KMeans, and KMeans (unchanged) decides most of these. Results: bench/results/ and RESULTS.md.
"""

import json
import math
import os
import random
import sys
import time
from multiprocessing import get_context

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# Every explored config clusters the same cheap way: KMeans decides most objectives, and ABO's
# 200 x batch-32 document setting would dominate the run time of the exploration.
CLUSTERING = {
    "finetune": "none",
    "reduction": "none",
    "n_clusters": 10,
    "abo_lr": 0.1,
    "abo_epochs": 50,
    "abo_batch_size": 256,
    "abo_temperature": 1.0,
    "abo_init": "k-means++",
    "kmeans_n_init": 10,
    "seed": 0,
}


def sample(rng):
    """A config from the broad round: MLP (70%) or conv, much wider than default.yaml."""
    c = {}
    if rng.random() < 0.7:
        c["arch"] = "mlp"
        d = rng.choice([1, 2, 2, 3])
        c["mlp_depth"] = d
        widths = sorted([rng.choice([128, 256, 512, 1024]) for _ in range(d)], reverse=True)
        for i, w in enumerate(widths, 1):
            c[f"mlp_width_{i}"] = w
        c["mlp_activation"] = rng.choice(["relu", "leaky_relu", "gelu", "elu", "silu", "tanh"])
        c["mlp_batch_norm"] = rng.random() < 0.3
        c["batch_size"] = rng.choice([32, 64, 128, 256])
        c["epochs"] = rng.choice([20, 30, 50])
    else:
        c["arch"] = "conv"
        c["conv_depth"] = 2
        c["conv_channels_1"] = rng.choice([16, 32, 64])
        c["conv_channels_2"] = rng.choice([8, 16, 32, 64])
        c["batch_size"] = rng.choice([64, 128, 256])
        c["epochs"] = rng.choice([10, 20, 30])
    c["latent_dim"] = rng.choice([8, 10, 12, 16, 20, 24, 32, 48, 64])
    c["dropout"] = rng.choice([0.0, 0.0, 0.1])
    c["lr"] = 10 ** rng.uniform(math.log10(3e-4), math.log10(5e-3))
    c["weight_decay"] = 0.0
    return {**c, **CLUSTERING}


def sample2(rng):
    """A config from the second round: MLPs with dropout 0.1-0.4 and larger latents."""
    c = {"arch": "mlp"}
    d = rng.choice([1, 2, 2])
    widths = sorted([rng.choice([256, 512, 1024]) for _ in range(d)], reverse=True)
    c["mlp_depth"] = d
    for i, w in enumerate(widths, 1):
        c[f"mlp_width_{i}"] = w
    c["mlp_activation"] = rng.choice(["relu", "leaky_relu", "gelu", "silu"])
    c["mlp_batch_norm"] = rng.random() < 0.2
    c["batch_size"] = rng.choice([128, 256])
    c["epochs"] = rng.choice([30, 50])
    c["latent_dim"] = rng.choice([24, 32, 48, 64])
    c["dropout"] = rng.choice([0.1, 0.2, 0.3, 0.4])
    c["lr"] = 10 ** rng.uniform(math.log10(5e-4), math.log10(3e-3))
    c["weight_decay"] = 0.0
    return {**c, **CLUSTERING}


def work(args):
    i, cfg = args
    import torch

    torch.set_num_threads(2)
    from tune import names as N
    from tune.data import load_dataset
    from tune.space import validate_config
    from tune.trial import run_trial

    ds = load_dataset("fashion-mnist", val_fraction=1 / 6, seed=0, download=False)
    cfg = validate_config(cfg)
    t0 = time.perf_counter()
    try:
        r = run_trial(cfg, ds)
    except Exception as e:
        return {"i": i, "config": cfg, "error": repr(e)}
    keep = {
        k: v
        for k, v in r.items()
        if isinstance(v, (int, float, str))
        and (k.startswith("val/") or k in (N.BEST_CLUSTERER, N.STATUS, "n_parameters"))
    }
    return {"i": i, "config": cfg, "seconds": time.perf_counter() - t0, **keep}


def main() -> None:
    import yaml

    n, workers, budget = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    rng = random.Random(int(sys.argv[4]) if len(sys.argv) > 4 else 1)
    round2 = os.environ.get("ROUND") == "2"
    with open("search_spaces/seeds.yaml") as f:
        seeds = yaml.safe_load(f)["points"]
    jobs = [] if round2 else [(p["name"], {**p["config"], "seed": 0}) for p in seeds]
    jobs += [(i, (sample2 if round2 else sample)(rng)) for i in range(n)]
    t0 = time.time()
    out_path = os.path.join(os.environ.get("OUT", "/tmp"), "explore.jsonl")
    with open(out_path, "w") as out, get_context("spawn").Pool(workers) as pool:
        for res in pool.imap_unordered(work, jobs):
            out.write(json.dumps(res, default=str) + "\n")
            out.flush()
            print(res.get("i"), res.get("val/silhouette"), res.get("val/recon_loss"), flush=True)
            if time.time() - t0 > budget:
                pool.terminate()
                break


if __name__ == "__main__":
    main()
